"""The multi-rater data contract: one case, its derived targets, and batching.

A case is an image ``[C, *spatial]`` plus the binary masks of ``R`` raters
``[R, K, *spatial]`` for ``K`` structures (multi-label). ``R`` may differ between cases;
targets that depend on the set of raters (soft vote, expert variance) are computed per
case *before* batching, and batches carry a rater-validity mask instead of duplicated
raters (a duplicated rater would shrink the expert variance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edue.errors import DataError
from edue.variance import leading_variance


@dataclass
class MultiRaterCase:
    """One image with the masks of several raters.

    Attributes:
        image: float32 ``[C, *spatial]``.
        masks: uint8 binary ``[R, K, *spatial]``.
        case_id: unique identifier.
        structures: names of the ``K`` structures (e.g. ``("disc", "cup")``).
        patient_id: grouping key for patient-level splits (defaults to ``case_id``).
        spacing: voxel/pixel spacing in mm, one value per spatial axis, when known.
        affine: 4×4 voxel-to-world matrix for volumes read from NIfTI, when known.
        rater_probability: analytic per-pixel probability that a rater marks each
            structure ``[K, *spatial]`` (synthetic data only).
        meta: free-form extra information (source files, generator parameters).
    """

    image: np.ndarray
    masks: np.ndarray
    case_id: str
    structures: tuple[str, ...]
    patient_id: str | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    rater_probability: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.patient_id is None:
            self.patient_id = self.case_id
        self.structures = tuple(self.structures)

    @property
    def n_raters(self) -> int:
        """Number of raters ``R``."""
        return int(self.masks.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape shared by image and masks."""
        return tuple(int(s) for s in self.image.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.image.ndim - 1

    def validate(self, source: str | None = None) -> MultiRaterCase:
        """Check the contract; raise :class:`DataError` naming ``source`` on failure."""
        where = source or self.case_id
        validate_arrays(self.image, self.masks, len(self.structures), where)
        if (
            self.rater_probability is not None
            and self.rater_probability.shape != self.masks.shape[1:]
        ):
            raise DataError(
                f"rater_probability shape {self.rater_probability.shape} differs from "
                f"masks {self.masks.shape[1:]}",
                where,
            )
        return self


def validate_arrays(image: np.ndarray, masks: np.ndarray, n_structures: int, where: str) -> None:
    """Check shapes, dtypes and values of an image and its rater masks.

    Args:
        image: ``[C, *spatial]``.
        masks: ``[R, K, *spatial]``.
        n_structures: expected ``K``.
        where: file or case named in the error message.

    Raises:
        DataError: with one line explaining the first problem found.
    """
    if image.ndim not in (3, 4):
        raise DataError(f"image must be [C, H, W] or [C, D, H, W], got shape {image.shape}", where)
    if not np.issubdtype(image.dtype, np.floating):
        raise DataError(f"image must be floating point, got {image.dtype}", where)
    if not np.isfinite(image).all():
        raise DataError("image contains NaN or Inf values", where)
    if masks.ndim != image.ndim + 1:
        raise DataError(
            f"masks must be [R, K, *spatial] with spatial {image.shape[1:]}, "
            f"got shape {masks.shape}",
            where,
        )
    if masks.shape[0] < 1:
        raise DataError("case has no rater masks (at least one rater is required)", where)
    if masks.shape[1] != n_structures:
        raise DataError(f"expected {n_structures} structures, masks have {masks.shape[1]}", where)
    if masks.shape[2:] != image.shape[1:]:
        raise DataError(
            f"mask size {masks.shape[2:]} differs from image size {image.shape[1:]}", where
        )
    values = distinct_values(masks)
    if not set(values.tolist()) <= {0, 1}:
        raise DataError(f"masks must be binary 0/1, found values {values[:10].tolist()}", where)


def binary_rater_masks(masks: np.ndarray, where: str) -> tuple[np.ndarray, list[int]]:
    """Turn raw rater masks ``[R, *sp]`` holding {0, 1} or {0, 255} into uint8 0/1.

    Args:
        masks: integer or boolean masks ``[R, *sp]`` as stored on disk.
        where: file or case named in the error message.

    Returns:
        The binary masks ``[R, *sp]`` and the raw values seen.

    Raises:
        DataError: other values (naming ``where``).
    """
    values = sorted(int(v) for v in np.unique(masks))
    if set(values) <= {0, 1}:
        return masks.astype(np.uint8), values
    if set(values) <= {0, 255}:
        return (masks > 0).astype(np.uint8), values
    raise DataError(f"rater masks must hold 0/1 (or 0/255), found values {values[:10]}", where)


def distinct_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an array (``np.unique``, by counting for small integers).

    Masks and label maps are checked on every load; counting 8-bit values is several
    times faster than ``np.unique``'s hashing, and the result is the same.
    """
    a = np.asarray(array)
    if a.dtype == np.bool_ or (a.dtype.kind == "u" and a.dtype.itemsize == 1):
        counts = np.bincount(a.reshape(-1).view(np.uint8), minlength=2)
        return np.flatnonzero(counts).astype(a.dtype)
    return np.unique(a)


# --------------------------------------------------------------------------- targets
def soft_vote(masks: torch.Tensor) -> torch.Tensor:
    """Soft majority vote: mean over raters. ``[R, K, *sp] -> [K, *sp]`` in [0, 1]."""
    return masks.float().mean(0)


def expert_variance(masks: torch.Tensor) -> torch.Tensor:
    """Unbiased (N − 1) variance over raters. ``[R, K, *sp] -> [K, *sp]``.

    With a single rater the variance is undefined; zeros are returned (no observed
    disagreement), so such cases carry no guidance signal.
    """
    if masks.shape[0] < 2:
        return torch.zeros(masks.shape[1:], dtype=torch.float32)
    return leading_variance(masks.float())


def expert_sv(masks: torch.Tensor) -> torch.Tensor:
    """Image-level expert disagreement: sum of the variance map per structure ``[K]``."""
    return expert_variance(masks).flatten(1).sum(1)


def random_rater(
    masks: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one valid rater per sample.

    Args:
        masks: ``[B, R, K, *sp]`` padded rater masks.
        valid: ``[B, R]`` bool, which raters exist for each sample.
        generator: random source (for reproducibility).

    Returns:
        ``[B, K, *sp]`` the drawn rater's mask for each sample.
    """
    index = torch.multinomial(valid.float(), 1, generator=generator).squeeze(1)
    return masks[torch.arange(masks.shape[0]), index]


# --------------------------------------------------------------------------- batching
def case_to_sample(case: MultiRaterCase, targets: bool = True) -> dict[str, Any]:
    """Tensors of one case with its targets computed before any padding.

    Args:
        case: the case.
        targets: compute ``soft_vote`` and ``expert_variance`` (float masks). With
            ``False`` the masks stay uint8 and the targets are left out, for a transform
            that crops first (:func:`add_targets` completes the sample afterwards, so a
            patch's targets are computed on the patch only, not on the whole volume).
    """
    masks = torch.from_numpy(np.ascontiguousarray(case.masks))
    sample: dict[str, Any] = {
        "image": torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32)),
        "masks": masks,
        "case_id": case.case_id,
    }
    if case.rater_probability is not None:
        sample["rater_probability"] = torch.from_numpy(
            np.ascontiguousarray(case.rater_probability, dtype=np.float32)
        )
    return add_targets(sample) if targets else sample


def add_targets(sample: dict[str, Any]) -> dict[str, Any]:
    """Float masks and the targets that depend on them (``soft_vote``,
    ``expert_variance``), computed from ``sample["masks"]`` as they are now.

    The targets are elementwise over the rater axis, so computing them on a crop (or a
    flip) of the masks gives exactly the crop (or flip) of the whole case's targets.
    """
    masks = sample["masks"].float()
    return {
        **sample,
        "masks": masks,
        "soft_vote": soft_vote(masks),
        "expert_variance": expert_variance(masks),
    }


def collate_cases(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch, padding raters with a validity mask.

    Returns a dict with ``image [B, C, *sp]``, ``masks [B, Rmax, K, *sp]`` (padding is
    zeros), ``rater_valid [B, Rmax]`` bool, ``soft_vote`` and ``expert_variance``
    ``[B, K, *sp]``, ``case_id`` (list) and, when every sample has it,
    ``rater_probability``.
    """
    r_max = max(int(s["masks"].shape[0]) for s in samples)  # type: ignore[attr-defined]
    padded, valid = [], []
    for s in samples:
        m: torch.Tensor = s["masks"]  # type: ignore[assignment]
        pad = r_max - m.shape[0]
        if pad:
            m = torch.cat([m, m.new_zeros((pad, *m.shape[1:]))])
        padded.append(m)
        valid.append(torch.arange(r_max) < r_max - pad)
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),  # type: ignore[misc]
        "masks": torch.stack(padded),
        "rater_valid": torch.stack(valid),
        "soft_vote": torch.stack([s["soft_vote"] for s in samples]),  # type: ignore[misc]
        "expert_variance": torch.stack([s["expert_variance"] for s in samples]),  # type: ignore[misc]
        "case_id": [s["case_id"] for s in samples],
    }
    if all("rater_probability" in s for s in samples):
        batch["rater_probability"] = torch.stack([s["rater_probability"] for s in samples])  # type: ignore[misc]
    return batch


class CaseDataset(torch.utils.data.Dataset):
    """A map-style dataset of cases, yielding samples for :func:`collate_cases`.

    Args:
        cases: a sequence of cases, or of zero-argument callables that load one
            (lazy reading of large datasets).
        transform: optional callable applied to each sample dict. One with a true
            ``defers_targets`` attribute (a patch sampler first) gets the sample without
            targets (uint8 masks, :func:`case_to_sample` with ``targets=False``) and may
            return one sample or a list; the targets are added to what it returns.
    """

    def __init__(self, cases: Sequence[object], transform: object | None = None) -> None:
        self.cases = cases
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cases)

    def get_case(self, index: int) -> MultiRaterCase:
        """The case at ``index`` (loading it if stored lazily)."""
        item = self.cases[index]
        return item if isinstance(item, MultiRaterCase) else item()  # type: ignore[operator]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.get_case(index)
        transform: Any = self.transform
        if getattr(transform, "defers_targets", False):
            # the transform crops first: the targets of the patch(es) only
            out: Any = transform(case_to_sample(case, targets=False))
            if isinstance(out, list):  # several patches of one case
                return [add_targets(s) for s in out]  # type: ignore[return-value]
            return add_targets(out)
        sample = case_to_sample(case)
        if self.transform is not None:
            sample = self.transform(sample)  # type: ignore[operator]
        return sample
