"""Out-of-distribution check: distorted inputs, member agreement and its separation power.

* Seeded distortions of images ``[C, *spatial]`` (2D or 3D): Gaussian noise, strong
  Gaussian blur, and a hue shift (for 3-channel images; other images fall back to an
  intensity inversion, see :func:`hue_shift`).
* :func:`distort_dataset` distorts exactly ``round(fraction · N)`` images.
* :func:`pairwise_dice_variance`: Dice between every pair of members (heads: "layer
  agreement"; ensemble members: "model agreement"), then the variance of those values.
* :func:`separation_auroc`: how well a per-image score separates distorted from clean
  images (rank-based AUROC, ties counted one half).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata

from edue.metrics._utils import as_array_1d, as_binary, overlap_counts
from edue.metrics.segmentation import dice_from_counts
from edue.prediction import Prediction

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


def pairwise_dice_variance(
    pred: Prediction | torch.Tensor, threshold: float = 0.5, ddof: int = 0
) -> torch.Tensor:
    """Variance of the Dice between every pair of members, per structure.

    Members are binarised (``> threshold``), the Dice of each of the ``S (S − 1) / 2``
    unordered pairs is computed (1 for two empty masks) and the variance of these values
    is returned (population variance by default, ``ddof=0``). Identical members give 0.

    Args:
        pred: a :class:`~edue.prediction.Prediction` or members ``[S, K, *spatial]``.
        threshold: binarisation threshold of probabilities.
        ddof: delta degrees of freedom of the variance.

    Returns:
        ``[K]`` float32; nan when there are fewer than 2 pairs beyond ``ddof``
        (e.g. a single member).
    """
    members = pred.members if isinstance(pred, Prediction) else pred
    masks = as_binary(members, threshold).flatten(2).transpose(0, 1)  # [K, S, N]
    return pairwise_dice_variance_from_counts(overlap_counts(masks, masks), ddof)


def pairwise_dice_variance_from_counts(intersection: torch.Tensor, ddof: int = 0) -> torch.Tensor:
    """:func:`pairwise_dice_variance` from member overlaps ``[K, S, S]`` (sizes on the diagonal).

    Returns:
        ``[K]`` float32 (nan when there are not more than ``ddof`` pairs).
    """
    n_members = intersection.shape[1]
    rows, cols = torch.triu_indices(n_members, n_members, offset=1)
    if rows.numel() <= ddof:
        return torch.full((intersection.shape[0],), float("nan"))
    sizes = torch.diagonal(intersection, dim1=1, dim2=2)  # [K, S]
    dice = dice_from_counts(intersection[:, rows, cols], sizes[:, rows], sizes[:, cols])
    return dice.double().var(1, correction=ddof).float()


def separation_auroc(scores: object, is_distorted: object) -> float:
    """AUROC of ``scores`` for telling distorted (positive) from clean images.

    Rank-based (Mann–Whitney): the probability that a random distorted image scores
    higher than a random clean one, ties counting one half. Images with a non-finite
    score are dropped; nan when either class is absent.

    Args:
        scores: per-image score ``[N]`` (higher = more likely distorted).
        is_distorted: bool ``[N]``.
    """
    s = as_array_1d(scores)
    positive = as_array_1d(is_distorted) != 0
    if s.shape != positive.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {positive.size}")
    keep = np.isfinite(s)
    s, positive = s[keep], positive[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
