"""Sample transforms used by training and prediction (MONAI where it has them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edue.data.case import MultiRaterCase


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``[C, *sp]`` (bilinear/trilinear, antialiased when shrinking 2D)."""
    size = tuple(int(s) for s in size)
    if tuple(image.shape[1:]) == size:
        return image
    mode = "bilinear" if image.ndim == 3 else "trilinear"
    shrink = any(s < h for s, h in zip(size, image.shape[1:], strict=True))
    return F.interpolate(
        image[None].float(),
        size=size,
        mode=mode,
        align_corners=False,
        antialias=shrink and image.ndim == 3,
    )[0]


def resize_case(case: MultiRaterCase, size: int | Sequence[int] | None) -> MultiRaterCase:
    """Resize a case to ``size`` (an ``int`` for every spatial axis, or one per axis).

    The image ``[C, *sp]`` and ``rater_probability`` ``[K, *sp]`` are resampled with
    :func:`resize_image`, the rater masks ``[R, K, *sp]`` with nearest neighbour
    (pixel centres aligned with the image's). The original spatial shape goes to
    ``meta['original_shape']``; ``spacing`` no longer applies and is dropped.

    Args:
        case: the case to resize.
        size: target spatial shape; ``None`` or the current shape keeps the case.

    Returns:
        The resized case (``case`` itself when nothing changes).
    """
    if size is None:
        return case
    spatial = (size,) * case.spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if case.spatial_shape == spatial:
        return case
    image = resize_image(torch.from_numpy(case.image), spatial).numpy()
    r, k = case.masks.shape[:2]
    masks = torch.from_numpy(case.masks.reshape(r * k, *case.spatial_shape)).float()
    masks = F.interpolate(masks[None], size=spatial, mode="nearest-exact")[0]
    prob = None
    if case.rater_probability is not None:
        prob = resize_image(torch.from_numpy(case.rater_probability), spatial).numpy()
    return MultiRaterCase(
        image=image.astype(np.float32),
        masks=masks.reshape(r, k, *spatial).to(torch.uint8).numpy(),
        case_id=case.case_id,
        structures=case.structures,
        patient_id=case.patient_id,
        spacing=None,
        affine=case.affine,
        rater_probability=prob,
        meta={**case.meta, "original_shape": case.spatial_shape},
    )


class RandomFlip:
    """Flip every spatial tensor of a sample along each spatial axis with probability 0.5.

    The draw happens here and the flip is deterministic given it, so a seeded
    generator makes augmentation reproducible.
    """

    keys = ("image", "masks", "soft_vote", "expert_variance", "rater_probability")

    def __init__(self, spatial_dims: int, seed: int = 0) -> None:
        self.spatial_dims = spatial_dims
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, sample: dict[str, object]) -> dict[str, object]:
        axes = [
            a for a in range(self.spatial_dims) if torch.rand((), generator=self.generator) < 0.5
        ]
        if not axes:
            return sample
        out = dict(sample)
        for key in self.keys:
            if key in out:
                t: torch.Tensor = out[key]  # type: ignore[assignment]
                out[key] = torch.flip(t, [t.ndim - self.spatial_dims + a for a in axes])
        return out
