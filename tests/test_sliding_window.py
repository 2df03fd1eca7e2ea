"""Sliding-window prediction of the member stack (volumes)."""

from __future__ import annotations

import numpy as np
import torch

from edue.config import load_config
from edue.engine.inference.predictor import Predictor
from edue.methods import build_method


def _predictor(overrides: list[str]) -> Predictor:
    config = load_config(None, ["model.channels=[4, 8]", "model.norm=instance", *overrides])
    torch.manual_seed(0)
    method = build_method(config, 2, 2, 3, for_training=False)
    info = {
        "in_channels": 2,
        "structures": ["GTVp", "GTVn"],
        "spatial_dims": 3,
        "image_size": [16, 16, 16],
    }
    return Predictor(method, config, info, torch.device("cpu"))


def test_single_window_matches_whole_volume_pass():
    predictor = _predictor(["method.name=edue"])
    volume = torch.rand(1, 2, 12, 16, 20, generator=torch.Generator().manual_seed(0))
    whole = predictor.method.predict_members(volume)
    windowed = predictor.sliding_members(volume, (12, 16, 20))
    size = predictor.method.stack_size  # one head, and the separate segmentation head
    assert windowed.shape == whole.shape == (size, 1, 2, 12, 16, 20) and size == 2
    assert torch.allclose(windowed, whole, atol=1e-5)


def test_windows_cover_a_larger_volume_and_keep_every_member():
    predictor = _predictor(
        [
            "method.name=deep_ensemble",
            "method.ensemble_size=3",
            "infer.roi_size=[16, 16, 16]",
            "infer.overlap=0.5",
        ]
    )
    volume = np.random.default_rng(0).random((2, 24, 28, 20)).astype(np.float32)
    pred = predictor.predict(volume)
    assert pred.members.shape == (3, 2, 24, 28, 20)
    whole = predictor.method.predict_members(torch.from_numpy(volume)[None])[:, 0]
    # border effects of windows only: the blended stack stays close to the whole pass
    assert float((pred.members - whole).abs().mean()) < 0.02
    assert pred.variance.shape == (2, 24, 28, 20) and pred.variance.max() > 0
