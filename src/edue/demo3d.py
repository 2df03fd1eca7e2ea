"""The 3D demo configuration: EDUE and its baselines on seeded PET/CT-like volumes.

``DEMO_3D`` and ``QUICK_3D`` have the structure of :data:`edue.demo.DEMO_2D` and
:data:`edue.demo.QUICK_OVERRIDES`; :func:`edue.demo.demo_config` merges them (``dims=3``).

Sizing: ``DEMO_3D`` trains eight networks (EDUE, Layer Ensembles, MC dropout, the plain
U-Net and four more Deep Ensemble members; member 0 is the plain U-Net) for 36 epochs
each on 24³ patches and evaluates five methods on 20 whole 32³ volumes (sliding
window). Measured on two idle cores: EDUE 72 s, Layer Ensembles 77 s, MC dropout 118 s,
plain U-Net 64 s, four more members 262 s, evaluation and report ≈ 2.5 min — 12.4
minutes in all. ``QUICK_3D`` runs the same path in a minute or two.

Guidance weight: the loss's guidance term is an RMSE over every voxel, and its gradient
scales with ``1 / RMSE``. The structures fill ~0.6 % of a 3D default volume (16 % of a
2D default image): the root mean square of the expert variance is 0.017 here against
0.053 in 2D, so the same ``lambda`` pulls about three times harder. ``lambda = 2``
(≈ 5 / 3.1) keeps the 2D balance. Measured on this split (single runs, seed 0):

============  ======  ==================  ==================  ==================
lambda        epochs  soft Dice GTVp/n    Spearman GTVp/n     pixel NCC GTVp/n
============  ======  ==================  ==================  ==================
0 (no guid.)  24      0.85 / 0.44         −0.32 / 0.66        0.50 / 0.26
1             24      0.80 / 0.42         0.55 / 0.68         0.71 / 0.30
2             24      0.77 / 0.41         0.52 / 0.73         0.76 / 0.45
5             24      0.65 / 0.41         0.58 / 0.70         0.77 / 0.49
2             48      0.81 / 0.46         0.69 / 0.76         0.77 / 0.47
5             48      0.74 / 0.45         0.77 / 0.81         0.79 / 0.50
============  ======  ==================  ==================  ==================

Guidance trades Dice for disagreement-shaped uncertainty, and both improve with more
epochs; 36 epochs with ``lambda = 2`` is the demo's compromise with its run time.
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
    "method": {
        "guidance_weight": 2.0,  # see the module docstring
        "ensemble_size": 5,
        "mc_samples": 10,
        "skip_first": 3,
    },
    # small batches and a high rate: the tumour is ~1 % of a volume and needs many steps
    "train": {"epochs": 36, "batch_size": 2, "lr": 1e-2, "seed": 0, "device": "cpu"},
}

#: Overrides of ``DEMO_3D`` for a smoke test: tiny volumes, 1 epoch.
QUICK_3D: dict[str, Any] = {
    "data": {
        "options": {"size": 16, "n_raters": 3},
        "split": {"train": 4, "val": 2, "test": 2},
        "patch_size": [12, 12, 12],
    },
    "model": {"channels": [4, 8, 16]},  # 2 EDUE heads (one head has no spread)
    "method": {"ensemble_size": 2, "mc_samples": 3, "skip_first": 1},
    "train": {"epochs": 1, "batch_size": 2},
}
