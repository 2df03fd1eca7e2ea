"""The 3D demo configuration: EDUE and its baselines on seeded PET/CT-like volumes.

``DEMO_3D`` and ``QUICK_3D`` have the structure of :data:`edue.demo.DEMO_2D` and
:data:`edue.demo.QUICK_OVERRIDES`; :func:`edue.demo.demo_config` merges them (``dims=3``).

Sizing: ``DEMO_3D`` trains nine networks (EDUE, Layer Ensembles, MC dropout, the plain
U-Net, the deep-supervised U-Net and four more Deep Ensemble members; member 0 is the
plain U-Net) for 36 epochs
each on 24³ patches and evaluates every method on 20 whole 32³ volumes (sliding
window). Measured on two idle cores: EDUE 72 s, Layer Ensembles 77 s, MC dropout 118 s,
plain U-Net 64 s, four more members 262 s, evaluation and report ≈ 2.5 min — 12.4
minutes in all before the deep-supervised baseline was added. ``QUICK_3D`` runs the
same path in a minute or two.

Guidance: the default guidance term (``method.guidance_norm: mse``, λ = 50) serves this
dataset and the 2D one alike. The published RMSE term (``none``) needed λ = 5 in 2D but
λ = 2 here: its gradient scales with ``1 / RMSE``, and the structures fill ~0.6 % of a
volume (16 % of a 2D image), so the same λ pulls about three times harder. The whole
sweep, chosen on the validation split, is in ``docs/studies.md``.
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
    "method": {"ensemble_size": 2, "mc_samples": 3, "samples": 3, "skip_first": 1},
    "train": {"epochs": 1, "batch_size": 2},
}
