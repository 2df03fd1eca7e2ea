"""The 3D demo configuration: EDUE and its baselines on seeded PET/CT-like volumes.

``DEMO_3D`` and ``QUICK_3D`` have the structure of :data:`edue.demo.DEMO_2D` and
:data:`edue.demo.QUICK_OVERRIDES`; :func:`edue.demo.demo_config` merges them (``dims=3``).

Sizing: ``DEMO_3D`` trains eight networks (EDUE, Layer Ensembles, MC dropout, the plain
U-Net and four more Deep Ensemble members; member 0 is the plain U-Net) and evaluates
five methods. Measured in single-threaded CPU time (robust to a busy machine): one
epoch of EDUE on 24³ patches ≈ 5.5 s (plain ≈ 5 s, MC dropout ≈ 8 s with its 10-sample
validation; whole 32³ volumes ≈ 8.7 s), data generation ≈ 3 s, the evaluation of a
one-pass method on the 20 test volumes with OOD ≈ 18 s. With 24 epochs that is about
22 CPU-minutes in all, roughly 13–16 minutes on two idle cores. Under a load of 4–5 on
two cores one EDUE training (19 epochs) took about 12 minutes of wall time and reached
val soft Dice ≈ 0.65 (GTVp) / 0.33 (GTVn); test: Dice 0.60 / 0.41, image Spearman
0.60 / 0.71, pixel NCC 0.77 / 0.48. ``QUICK_3D`` runs the same path in a minute or two.
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
    # small batches and a high rate: the tumour is ~1 % of a volume and needs many steps
    "train": {"epochs": 24, "batch_size": 2, "lr": 1e-2, "seed": 0, "device": "cpu"},
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
