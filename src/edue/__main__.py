"""``python -m edue`` (also what ``torchrun -m edue`` runs)."""

import sys

from edue.cli import main

sys.exit(main())
