"""The ``edue`` command line: :func:`main`, the parser (:mod:`edue.cli.parser`) and the
thin subcommands (:mod:`edue.cli.commands`).

Errors the user can cause end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from edue.cli.commands import cmd_cache
from edue.cli.parser import build_parser

__all__ = ["build_parser", "cmd_cache", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors become one line and exit status 2."""
    from edue.errors import EdueError

    parser = build_parser()
    # Overrides (key=value) may come before or after the options: argparse gives the
    # positional list only its first run, so the later ones arrive as extras.
    args, extras = parser.parse_known_args(argv)
    stray = [e for e in extras if e.startswith("-") or "=" not in e]
    if stray or (extras and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extras)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    _log_to_stdout()
    warnings.showwarning = _showwarning
    try:
        return int(args.func(args) or 0)
    except EdueError as exc:
        print(f"edue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edue: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 130


def _log_to_stdout() -> None:
    """Progress lines of the library (``edue.*`` loggers, e.g. one per epoch) on stdout."""
    import logging

    class StdoutLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(record.getMessage(), file=sys.stdout, flush=True)  # the current stdout

    logger = logging.getLogger("edue")
    if not any(type(h).__name__ == "StdoutLines" for h in logger.handlers):
        logger.addHandler(StdoutLines())
    logger.setLevel(logging.INFO)


def _showwarning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    print(f"edue: warning: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
