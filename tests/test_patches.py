"""Tests of the patch sampler used to train on volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edue.data.case import CaseDataset, case_to_sample, collate_cases, expert_variance, soft_vote
from edue.data.patches import PatchDraw, PatchSampler, make_patch_transform
from edue.data.synthetic3d import Volume3DConfig, generate_volume
from edue.errors import ConfigError


@pytest.fixture(scope="module")
def sample() -> dict:
    return case_to_sample(generate_volume(1, seed=0, config=Volume3DConfig(size=32)))


def _blob_sample(shape: tuple[int, ...], corner: int = 3) -> dict:
    """A sample with a small foreground cube near the origin of a larger volume."""
    masks = torch.zeros((3, 2, *shape))
    masks[:2, 0, :corner, :corner, :corner] = 1
    image = torch.arange(float(np.prod(shape))).reshape(1, *shape)
    return {
        "image": image,
        "masks": masks,
        "soft_vote": soft_vote(masks),
        "expert_variance": expert_variance(masks),
        "case_id": "blob",
    }


def test_all_keys_cropped_identically(sample: dict) -> None:
    sampler = PatchSampler([16, 20, 12], pos_ratio=0.5, seed=1)
    for _ in range(10):
        patch = sampler(sample)
        assert patch["image"].shape == (2, 16, 20, 12)
        assert patch["masks"].shape == (4, 2, 16, 20, 12)
        for key in ("soft_vote", "expert_variance", "rater_probability"):
            assert patch[key].shape == (2, 16, 20, 12)
        # crop of the targets == targets of the cropped masks (the variance stays aligned)
        torch.testing.assert_close(patch["soft_vote"], soft_vote(patch["masks"]))
        torch.testing.assert_close(patch["expert_variance"], expert_variance(patch["masks"]))
        z, y, x = sampler.last_draw.start
        window = (slice(z, z + 16), slice(y, y + 20), slice(x, x + 12))
        torch.testing.assert_close(patch["image"], sample["image"][(slice(None), *window)])
        torch.testing.assert_close(
            patch["rater_probability"], sample["rater_probability"][(slice(None), *window)]
        )
        assert patch["case_id"] == sample["case_id"]


def test_positive_ratio_is_respected() -> None:
    blob = _blob_sample((40, 40, 40))
    for ratio in (0.0, 0.67, 1.0):
        sampler = make_patch_transform(8, pos_ratio=ratio, seed=3)
        hits, positives = 0, 0
        for _ in range(400):
            patch = sampler(blob)
            hits += bool(patch["soft_vote"].any())
            positives += sampler.last_draw.positive
        assert abs(positives / 400 - ratio) < 0.06
        # random patches rarely meet the corner cube; positive ones always do
        assert ratio <= hits / 400 < ratio + 0.06


def test_positive_patches_contain_foreground_near_their_centre(sample: dict) -> None:
    sampler = PatchSampler(16, pos_ratio=1.0, seed=0)
    for _ in range(20):
        patch = sampler(sample)
        assert sampler.last_draw.positive and patch["soft_vote"].any()


def test_no_foreground_falls_back_to_random() -> None:
    blob = _blob_sample((20, 20, 20), corner=0)
    sampler = PatchSampler(8, pos_ratio=1.0, seed=0)
    patch = sampler(blob)
    assert not sampler.last_draw.positive and patch["image"].shape == (1, 8, 8, 8)


def test_reproducible_by_seed(sample: dict) -> None:
    def starts(seed: int) -> list:
        sampler = make_patch_transform([16, 16, 16], seed=seed)
        out = []
        for _ in range(15):
            sampler(sample)
            out.append(sampler.last_draw.start)
        return out

    assert starts(4) == starts(4)
    assert starts(4) != starts(5)
    sampler = make_patch_transform(16, seed=4)
    state = sampler.get_state()
    first = sampler(sample)
    sampler.set_state(state)
    torch.testing.assert_close(sampler(sample)["masks"], first["masks"])


def test_small_volumes_are_padded() -> None:
    blob = _blob_sample((6, 10, 12))
    sampler = PatchSampler([8, 8, 16], pos_ratio=0.5, seed=0)
    for _ in range(10):
        patch = sampler(blob)
        assert patch["image"].shape == (1, 8, 8, 16)
        assert patch["masks"].shape == (3, 2, 8, 8, 16)
        # padding adds no foreground and no disagreement
        assert patch["masks"].sum() <= blob["masks"].sum()
        torch.testing.assert_close(patch["expert_variance"], expert_variance(patch["masks"]))
    # D (6 -> 8) and W (12 -> 16) are padded symmetrically, H (10) is cropped
    patch = sampler.apply(blob, PatchDraw(start=(0, 1, 0), positive=False))
    torch.testing.assert_close(patch["image"][0, 1:7, :, 2:14], blob["image"][0, :, 1:9, :])
    assert not patch["image"][0, [0, 7]].any() and not patch["image"][0, :, :, [0, 1, 14, 15]].any()
    torch.testing.assert_close(patch["masks"][:, :, 1:7, :, 2:14], blob["masks"][:, :, :, 1:9])


def test_two_dimensional_samples_and_dataset(sample: dict) -> None:
    masks = torch.zeros((2, 1, 30, 30))
    masks[0, 0, 10:20, 10:20] = 1
    flat = {
        "image": torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(0)),
        "masks": masks,
        "soft_vote": soft_vote(masks),
        "expert_variance": expert_variance(masks),
        "case_id": "2d",
    }
    assert PatchSampler(12, seed=0)(flat)["masks"].shape == (2, 1, 12, 12)
    case = generate_volume(0, config=Volume3DConfig(size=24))
    dataset = CaseDataset([case, case], transform=make_patch_transform([16, 16, 16]))
    batch = collate_cases([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 2, 16, 16, 16)
    assert batch["masks"].shape == (2, 4, 2, 16, 16, 16)


def test_invalid_arguments(sample: dict) -> None:
    with pytest.raises(ConfigError):
        PatchSampler(0)
    with pytest.raises(ConfigError):
        PatchSampler(8, pos_ratio=1.5)
    with pytest.raises(ConfigError):
        PatchSampler([8, 8])(sample)
