"""The 3D demo configuration: EDUE and its baselines on seeded PET/CT-like volumes.

``DEMO_3D`` and ``QUICK_3D`` have the structure of :data:`edue.demo.DEMO_2D` and
:data:`edue.demo.QUICK_OVERRIDES`; :func:`edue.demo.demo_config` merges them (``dims=3``).

Sizing (see the numbers below): ``DEMO_3D`` trains eight networks (EDUE, Layer
Ensembles, MC dropout, the plain U-Net and four more Deep Ensemble members; member 0
is the plain U-Net) on 2 CPU cores in roughly 15–20 minutes. One EDUE training of
``DEMO_3D`` on whole 32³ volumes took about 1.6 CPU-minutes per epoch on 2 cores
(about 50 s of wall time per epoch on an idle 2-core machine). Training on
``data.patch_size`` patches (24³ of the 32³ volumes) costs less.
``QUICK_3D`` is a smoke test of the same path in a few seconds.
"""

from __future__ import annotations

from typing import Any

#: The 3D demo: 32³ two-channel volumes with 4 raters, 48/10/20 cases, a 4-level
#: 3D U-Net of widths 8–64 (3 EDUE heads, 7 Layer Ensembles heads).
DEMO_3D: dict[str, Any] = {
    "data": {
        "format": "synthetic3d",
        "options": {"size": 32, "n_raters": 4},
        "split": {"train": 48, "val": 10, "test": 20},
        "split_seed": 0,
        "patch_size": [24, 24, 24],
    },
    "model": {"channels": [8, 16, 32, 64], "norm": "batch"},
    "method": {"name": "edue", "ensemble_size": 5, "mc_samples": 10, "skip_first": 3},
    "train": {"epochs": 12, "batch_size": 4, "lr": 2e-3, "seed": 0, "device": "cpu"},
}

#: Overrides of ``DEMO_3D`` for a smoke test: tiny volumes, 1 epoch.
QUICK_3D: dict[str, Any] = {
    "data": {
        "options": {"size": 16, "n_raters": 3},
        "split": {"train": 4, "val": 2, "test": 2},
        "patch_size": [16, 16, 16],
    },
    "model": {"channels": [4, 8, 16]},  # 2 EDUE heads (one head has no spread)
    "method": {"ensemble_size": 2, "mc_samples": 3, "skip_first": 1},
    "train": {"epochs": 1, "batch_size": 2},
}
