"""Patch sampling for training on volumes (or large images).

A :class:`PatchSampler` crops one patch of ``patch_size`` from a sample dict (see
:func:`~edue.data.case.case_to_sample`). With probability ``pos_ratio`` the patch is
centred on a voxel drawn uniformly from the foreground (``soft_vote > 0`` for any
structure: at least one rater marked it), shifted to lie inside the volume, as MONAI's
``RandCropByPosNegLabel`` does; otherwise its position is uniform over the volume.
Volumes smaller than the patch are padded symmetrically first (zeros: no rater marks
padding, so soft vote and expert variance are zero there).

Every spatial key (``image``, ``masks``, ``soft_vote``, ``expert_variance``,
``rater_probability``) is cropped by the same window, so the expert variance stays
aligned with the masks it was computed from. A sample may also come without its
targets (uint8 masks, as :class:`~edue.data.case.CaseDataset` passes it to a transform
that ``defers_targets``): the foreground is then read from the masks, and the targets
are computed on the patch afterwards — the same values, without computing soft vote
and variance over a whole volume for every patch. The foreground of the last volume is
kept, so several patches drawn from one loaded volume find it once.

The draw (:meth:`PatchSampler.draw`) is separate from the deterministic crop
(:meth:`PatchSampler.apply`), as in TorchIO, and uses its own ``torch.Generator``: a
seed reproduces the sequence of patches. The
transform is written with torch ops rather than MONAI's dictionary transforms because
those expect channel-first arrays (the masks are ``[R, K, *sp]``), return MetaTensors
and draw from a NumPy ``RandomState``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edue.errors import ConfigError

SPATIAL_KEYS = ("image", "masks", "soft_vote", "expert_variance", "rater_probability")


@dataclass(frozen=True)
class PatchDraw:
    """The random part of one crop.

    Attributes:
        start: first voxel of the patch per spatial axis, in the padded volume.
        positive: whether the patch was centred on a foreground voxel.
    """

    start: tuple[int, ...]
    positive: bool


def pad_amounts(shape: Sequence[int], size: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric ``(before, after)`` padding per axis that brings ``shape`` to ``>= size``."""
    out = []
    for have, want in zip(shape, size, strict=True):
        extra = max(0, int(want) - int(have))
        out.append((extra // 2, extra - extra // 2))
    return out


def pad_spatial(
    tensor: torch.Tensor, pads: Sequence[tuple[int, int]], value: float = 0.0
) -> torch.Tensor:
    """Pad the trailing ``len(pads)`` axes of ``tensor`` by ``pads`` with ``value``."""
    if not any(a or b for a, b in pads):
        return tensor
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants last axis first
    return F.pad(tensor, flat, mode="constant", value=value)


def crop_spatial(tensor: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The window ``start … start + size`` of the trailing ``len(size)`` axes (a copy)."""
    lead = tensor.ndim - len(size)
    window = tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, size, strict=True))
    return tensor[(slice(None),) * lead + window].contiguous()


class PatchSampler:
    """Crop one patch per sample, foreground-centred with probability ``pos_ratio``.

    Args:
        patch_size: patch size per spatial axis (one int for a cube/square).
        pos_ratio: probability of a foreground-centred patch (random otherwise; a
            sample without foreground always gets a random patch).
        seed: seed of the sampler's own generator.
        image_pad_value: value used to pad the image (the targets are padded with 0).

    Raises:
        ConfigError: on a non-positive patch size or a ratio outside [0, 1].
    """

    def __init__(
        self,
        patch_size: int | Sequence[int],
        pos_ratio: float = 0.67,
        seed: int = 0,
        image_pad_value: float = 0.0,
    ) -> None:
        size = [patch_size] if isinstance(patch_size, int) else list(patch_size)
        if not size or any(int(s) < 1 for s in size):
            raise ConfigError(f"patch_size must be positive, got {patch_size}")
        if not 0.0 <= float(pos_ratio) <= 1.0:
            raise ConfigError(f"pos_ratio must lie in [0, 1], got {pos_ratio}")
        self.patch_size = tuple(int(s) for s in size)
        self.pos_ratio, self.seed = float(pos_ratio), int(seed)
        self.image_pad_value = float(image_pad_value)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._worker_seed: int | None = None
        self.last_draw: PatchDraw | None = None
        # (the tensor the foreground was found in, its version, its foreground voxels)
        self._foreground: tuple[torch.Tensor, int, torch.Tensor] | None = None

    #: It crops: :class:`~edue.data.case.CaseDataset` hands it samples without targets.
    crops = True

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_foreground"] = None  # no volume travels to DataLoader workers
        return state

    def size_for(self, spatial_dims: int) -> tuple[int, ...]:
        """The patch size for ``spatial_dims`` axes (an int size is repeated)."""
        if len(self.patch_size) == 1:
            return self.patch_size * spatial_dims
        if len(self.patch_size) != spatial_dims:
            raise ConfigError(
                f"patch_size {list(self.patch_size)} does not match {spatial_dims} spatial axes"
            )
        return self.patch_size

    def _maybe_reseed(self) -> None:
        """In a DataLoader worker, derive the stream from the worker's own seed (it differs
        per worker and per epoch and follows the loader's generator)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self.generator.manual_seed((self.seed * 1_000_003 + info.seed) % 2**63)

    def draw(self, sample: dict[str, object]) -> PatchDraw:
        """Draw a patch position for ``sample`` (uses the generator)."""
        image: torch.Tensor = sample["image"]  # type: ignore[assignment]
        dims = image.ndim - 1
        size = self.size_for(dims)
        pads = pad_amounts(image.shape[1:], size)
        shape = [int(n) + a + b for n, (a, b) in zip(image.shape[1:], pads, strict=True)]
        room = [n - s for n, s in zip(shape, size, strict=True)]
        coin = float(torch.rand((), generator=self.generator))
        if coin < self.pos_ratio:
            points = self.foreground(sample)
            if len(points):
                pick = int(torch.randint(len(points), (), generator=self.generator))
                centre = [int(c) + a for c, (a, _) in zip(points[pick], pads, strict=True)]
                start = tuple(
                    min(max(c - s // 2, 0), r) for c, s, r in zip(centre, size, room, strict=True)
                )
                return PatchDraw(start, True)
        start = tuple(int(torch.randint(r + 1, (), generator=self.generator)) for r in room)
        return PatchDraw(start, False)

    def foreground(self, sample: dict[str, object]) -> torch.Tensor:
        """Voxels ``[N, dims]`` that at least one rater marked (``soft_vote > 0`` for any
        structure, or any mask when the sample has no targets yet), in row-major order;
        found once per volume: the last one is kept while its tensor is not modified."""
        image: torch.Tensor = sample["image"]  # type: ignore[assignment]
        dims = image.ndim - 1
        source: torch.Tensor = sample.get("soft_vote", sample["masks"])  # type: ignore[assignment]
        kept = self._foreground
        if kept is not None and kept[0] is source and kept[1] == source._version:
            return kept[2]
        marked = source > 0 if source.dtype.is_floating_point else source  # masks: 0/1
        points = torch.nonzero(marked.flatten(0, source.ndim - dims - 1).any(0))
        self._foreground = (source, source._version, points)
        return points

    def apply(self, sample: dict[str, object], draw: PatchDraw) -> dict[str, object]:
        """Pad and crop every spatial key of ``sample`` by ``draw`` (deterministic)."""
        image: torch.Tensor = sample["image"]  # type: ignore[assignment]
        size = self.size_for(image.ndim - 1)
        pads = pad_amounts(image.shape[1:], size)
        out = dict(sample)
        for key in SPATIAL_KEYS:
            if key not in out:
                continue
            value = self.image_pad_value if key == "image" else 0.0
            tensor = pad_spatial(out[key], pads, value)  # type: ignore[arg-type]
            out[key] = crop_spatial(tensor, draw.start, size)
        return out

    def __call__(self, sample: dict[str, object]) -> dict[str, object]:
        """Draw a patch and crop ``sample`` to it."""
        self._maybe_reseed()
        self.last_draw = self.draw(sample)
        return self.apply(sample, self.last_draw)

    def get_state(self) -> torch.Tensor:
        """The generator state (to save with a checkpoint)."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore a state from :meth:`get_state`."""
        self.generator.set_state(state)


def make_patch_transform(
    patch_size: int | Sequence[int], pos_ratio: float = 0.67, seed: int = 0
) -> PatchSampler:
    """A seeded patch-cropping transform for ``CaseDataset(..., transform=...)``.

    Args:
        patch_size: patch size per spatial axis, e.g. ``[32, 32, 32]`` (or one int).
        pos_ratio: share of foreground-centred patches.
        seed: seed of the patch positions.

    Returns:
        A :class:`PatchSampler` mapping a sample with ``image [C, *sp]``,
        ``masks [R, K, *sp]`` and ``soft_vote``, ``expert_variance``,
        ``rater_probability`` ``[K, *sp]`` to the same keys cropped to ``patch_size``.
    """
    return PatchSampler(patch_size, pos_ratio=pos_ratio, seed=seed)
