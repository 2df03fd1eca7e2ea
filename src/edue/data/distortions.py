"""Image distortions for the out-of-distribution study, 2D or 3D ``[C, *spatial]``.

* Seeded distortions: Gaussian noise (:func:`gaussian_noise`), strong Gaussian blur
  (:func:`gaussian_blur`) and a hue shift (:func:`hue_shift`, for 3-channel images;
  other images fall back to an intensity inversion); :func:`distort` applies one by name.
* :func:`distort_dataset` distorts exactly ``round(fraction · N)`` images of a set.

The metrics that use them (member agreement, separation AUROC) are in
:mod:`edue.metrics.ood`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

DISTORTIONS: tuple[str, ...] = ("noise", "blur", "hue")

_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def gaussian_noise(
    image: np.ndarray, std: float = 0.5, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Add zero-mean Gaussian noise of ``std`` times the image's standard deviation.

    The relative scale makes the strength independent of intensity units (a constant
    image uses an absolute ``std``). ``rng`` is a generator or a seed.
    """
    image = np.asarray(image, dtype=np.float32)
    scale = float(image.std()) or 1.0
    noise = np.random.default_rng(rng).normal(0.0, std * scale, size=image.shape)
    return (image + noise).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Blur each channel of ``[C, *spatial]`` with a Gaussian of ``sigma`` pixels."""
    image = np.asarray(image, dtype=np.float32)
    return gaussian_filter(image, sigma=(0.0,) + (float(sigma),) * (image.ndim - 1))


def hue_shift(image: np.ndarray, degrees: float = 90.0) -> np.ndarray:
    """Rotate the hue of a 3-channel image; invert the intensities of other images.

    For ``C == 3`` the channels are read as RGB, converted to YIQ, the chroma plane
    (I, Q) is rotated by ``degrees`` and converted back: luminance is kept, colours
    change. Grey-scale or multi-modal images (e.g. PET/CT) have no hue, so the fallback
    is an intensity inversion per channel, ``min + max − x`` (``degrees`` is ignored).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] != 3:
        axes = tuple(range(1, image.ndim))
        lo, hi = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
        return (lo + hi - image).astype(np.float32)
    theta = np.deg2rad(degrees)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    matrix = np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
    return np.einsum("ij,j...->i...", matrix, image).astype(np.float32)


def distort(
    image: np.ndarray, kind: str, rng: np.random.Generator | int | None = None, **params: float
) -> np.ndarray:
    """Apply one named distortion (``"noise"``, ``"blur"`` or ``"hue"``) to ``[C, *sp]``.

    ``params`` go to the distortion (``std``, ``sigma`` or ``degrees``).
    """
    if kind == "noise":
        return gaussian_noise(image, rng=rng, **params)
    if kind == "blur":
        return gaussian_blur(image, **params)
    if kind == "hue":
        return hue_shift(image, **params)
    raise ValueError(f"unknown distortion {kind!r}; expected one of {DISTORTIONS}")


def distort_dataset(
    images: np.ndarray | torch.Tensor | Sequence[np.ndarray],
    fraction: float,
    kind: str = "noise",
    seed: int = 0,
    **params: float,
) -> tuple[object, np.ndarray]:
    """Distort a seeded random subset of exactly ``round(fraction · N)`` images.

    The subset is drawn with ``numpy.random.default_rng(seed)``; image ``i`` is distorted
    with its own generator ``default_rng([seed, i])``, so its distorted version does not
    depend on which other images were chosen. ``kind="mixed"`` draws one of
    :data:`DISTORTIONS` per distorted image.

    Args:
        images: ``[N, C, *spatial]`` array or tensor, or a sequence of ``[C, *spatial]``.
        fraction: share of images to distort, in [0, 1] (the protocol uses 0, 0.5, 1).
        kind: ``"noise"``, ``"blur"``, ``"hue"`` or ``"mixed"``.
        seed: seed of the subset and of the distortions.
        **params: passed to the distortion.

    Returns:
        The images in the input's container type (array, tensor or list; the input is
        not modified) and ``is_distorted``, a bool array ``[N]``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if kind != "mixed" and kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; expected one of {DISTORTIONS} or 'mixed'")
    n = len(images)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(n)[: int(np.floor(fraction * n + 0.5))]
    is_distorted = np.zeros(n, dtype=bool)
    is_distorted[chosen] = True
    out = []
    for i in range(n):
        image = images[i]
        image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        if is_distorted[i]:
            image_rng = np.random.default_rng([seed, i])
            name = DISTORTIONS[image_rng.integers(len(DISTORTIONS))] if kind == "mixed" else kind
            image = distort(image, name, rng=image_rng, **params)
        out.append(np.array(image, dtype=np.float32, copy=True))
    if isinstance(images, torch.Tensor):
        return torch.from_numpy(np.stack(out)).to(images.dtype), is_distorted
    if isinstance(images, np.ndarray):
        return np.stack(out), is_distorted
    return out, is_distorted
