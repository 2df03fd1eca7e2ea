"""Prediction under a memory ceiling: an image too large for one pass, predicted tile by tile.

A whole-image pass of a U-Net holds activations of several hundred bytes per input
pixel (a 4000×4000 RGB image: about 9 GB). :class:`~edue.engine.inference.predictor.Predictor` keeps
every prediction within a budget (``infer.max_memory_mb``; ``null``: half the
machine's memory, :func:`default_memory_budget_mb`) by predicting larger images tile by
tile, with a result equal to the whole-image pass by construction, not by blending:

* **Alignment.** Tiles start at multiples of the network's total downsampling factor
  ``d`` (``Predictor.size_divisor``) of the image zero-padded to a multiple of ``d``
  (exactly the padding of the whole-image pass), so every pooling and up-sampling grid
  of a tile coincides with the whole image's.
* **Halo.** Each tile is predicted with a margin of context (its *halo*) on every side
  that does not touch the image border, and only its centre is kept. The halo is at
  least the network's receptive field, bounded analytically (:func:`profile_network`):
  a probe pass records, through forward hooks, every convolution and pooling module
  with the scale it runs at, and, from the dispatched operators, every resampling
  (``F.interpolate`` in the heads included); the halo is the sum of their reach in
  input pixels (over all modules, so it bounds every path through the network; the
  resampling at least two pixels of the coarsest scale), rounded up to a multiple of
  ``d``. Inside that margin a centre pixel's dependency cone lies wholly inside the
  tile, so the tile computes it as the whole image does; BatchNorm in eval mode is a
  per-channel affine map, translation equivariant. (The default U-Net
  ``[16, 32, 64, 128]``: 72 px; compared in float64, tiles are exact from 48 px.)
* **Verification.** Image-wide modules (instance, group or layer norm, adaptive
  pooling, attention, element-wise dropout sampled at prediction…) are recognised by
  the hooks, and a check made once per predictor perturbs a slab of a probe input
  along each axis and requires the outputs farther than the halo unchanged (it catches
  image-wide operations the hooks cannot name; effects at the edge of a receptive
  field are too weak for it to tighten the bound). Such a network is never tiled
  (:attr:`NetworkProfile.local` is ``False``).
* **Memory.** The same probe pass measures the peak bytes of live tensors per input
  pixel (every tensor an operator returns, tracked until freed:
  :class:`LiveTensorBytes`); with a margin (:data:`SAFETY`, measured against the
  process's resident memory) it gives the memory of a pass over any size. The whole
  image's member stack ``[S', B, K, *sp]`` float32, the image and a fixed allowance
  (:data:`OVERHEAD_BYTES`) are reserved first; the tile is the largest that fits in
  the rest, its centre at least as wide as the halo (:func:`plan_memory`). When even
  the member stack cannot fit, or nor can the smallest tile, a one-line
  :class:`~edue.errors.DataError` names the image size, the budget and the value of
  ``infer.max_memory_mb`` that would do.

The distribution-shift gate's pooled features are pooled over the tiles' centres
(:class:`TiledPooling`), so they too equal the whole-image pass's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from edue.engine.inference.memory import (
    _FLOAT,
    OVERHEAD_BYTES,
    SAFETY,
    memory_message,
    release_freed_memory,
    round_up,
)
from edue.engine.inference.receptive_field import NetworkProfile
from edue.errors import DataError


# --------------------------------------------------------------------------- tiles
@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`, per axis ``(start, stop)`` in the coordinates of
    the image zero-padded to a multiple of the divisor.

    Attributes:
        window: the region predicted: the centre and its halo (clipped to the image).
        keep: the centre, whose prediction is kept.
    """

    window: tuple[tuple[int, int], ...]
    keep: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TilePlan:
    """How an image is predicted tile by tile.

    Attributes:
        shape: the image's spatial shape.
        padded: the shape zero-padded to a multiple of the divisor.
        tile: the centres' size per axis (multiples of the divisor; the last ones on an
            axis may be shorter).
        halo: the context margin per axis.
        tiles: every tile; their centres cover the padded image exactly once.
        estimate_bytes: the estimated peak memory of the tiled prediction.
        budget_bytes: the budget it fits.
    """

    shape: tuple[int, ...]
    padded: tuple[int, ...]
    tile: tuple[int, ...]
    halo: tuple[int, ...]
    tiles: tuple[Tile, ...]
    estimate_bytes: int
    budget_bytes: int

    def __len__(self) -> int:
        return len(self.tiles)


def padded_shape(shape: Sequence[int], divisor: int) -> tuple[int, ...]:
    """``shape`` rounded up to multiples of ``divisor`` (the whole-image pass's padding)."""
    return tuple(round_up(int(s), divisor) for s in shape)


def _axis_tiles(
    padded: int, centre: int, halo: int, divisor: int
) -> list[tuple[int, int, int, int]]:
    """``(window start, window stop, keep start, keep stop)`` along one axis: as few
    tiles as ``centre`` allows, of equal sizes (multiples of ``divisor``)."""
    count = -(-padded // centre)
    size = round_up(padded / count, divisor)
    out = []
    for start in range(0, padded, size):
        stop = min(start + size, padded)
        out.append((max(0, start - halo), min(padded, stop + halo), start, stop))
    return out


def plan_tiles(
    shape: Sequence[int], centre: int, halo: Sequence[int], divisor: int
) -> tuple[tuple[int, ...], list[Tile]]:
    """The tiles of an image of spatial ``shape`` with centres of at most ``centre``
    pixels a side (a multiple of ``divisor``) and margins ``halo``.

    Returns:
        The padded shape and the tiles, in raster order.
    """
    padded = padded_shape(shape, divisor)
    axes = [_axis_tiles(p, centre, h, divisor) for p, h in zip(padded, halo, strict=True)]
    tiles = [
        Tile(tuple((w0, w1) for w0, w1, _, _ in combo), tuple((k0, k1) for _, _, k0, k1 in combo))
        for combo in itertools.product(*axes)
    ]
    return padded, tiles


def _largest_window(padded: Sequence[int], centre: int, halo: Sequence[int], divisor: int) -> int:
    """Pixels of the largest window of :func:`plan_tiles` (an inner tile's)."""
    sizes = []
    for p, h in zip(padded, halo, strict=True):
        sizes.append(max(w1 - w0 for w0, w1, _, _ in _axis_tiles(p, centre, h, divisor)))
    return math.prod(sizes)


def whole_pass_bytes(
    shape: Sequence[int], batch: int, in_channels: int, divisor: int, profile: NetworkProfile
) -> float:
    """Estimated peak memory of one whole-image pass over a batch of ``batch`` images of
    spatial ``shape``: ``SAFETY · bytes_per_pixel`` over the padded image, the image
    and its padded copy, and :data:`OVERHEAD_BYTES`."""
    image_bytes = batch * in_channels * math.prod(shape) * _FLOAT
    padded = math.prod(padded_shape(shape, divisor))
    return SAFETY * profile.bytes_per_pixel * batch * padded + 2 * image_bytes + OVERHEAD_BYTES


def plan_memory(
    shape: Sequence[int],
    batch: int,
    in_channels: int,
    stack_size: int,
    structures: int,
    divisor: int,
    profile: NetworkProfile,
    budget_bytes: int,
) -> TilePlan | None:
    """One pass or tiles for a batch of ``batch`` images of spatial ``shape``.

    Memory of a pass over ``n`` pixels: ``SAFETY · bytes_per_pixel · batch · n``. One
    pass needs that over the padded image, plus the image twice (it and its padded
    copy) and :data:`OVERHEAD_BYTES` (:func:`whole_pass_bytes`). Tiles need the whole
    member stack ``[S', B, K, *shape]`` float32, the image and the allowance, plus a
    pass and the input crop over the largest window; the centre is the largest
    multiple of the divisor that fits.

    Returns:
        ``None`` when one pass fits the budget (or the network cannot be tiled,
        :attr:`NetworkProfile.local`), else the :class:`TilePlan`.

    Raises:
        DataError: the member stack and the image alone exceed the budget, or so does
            the smallest tile (a centre as wide as the halo, at most the image: smaller
            centres would spend most of the time on halos); the message names the least
            budget that would do.
    """
    pixels = math.prod(shape)
    padded = padded_shape(shape, divisor)
    image_bytes = batch * in_channels * pixels * _FLOAT
    stack_bytes = stack_size * batch * structures * pixels * _FLOAT
    per_pixel = SAFETY * profile.bytes_per_pixel * batch
    whole = whole_pass_bytes(shape, batch, in_channels, divisor, profile)
    fixed = stack_bytes + image_bytes + OVERHEAD_BYTES

    def need(centre: int) -> float:
        window = _largest_window(padded, centre, profile.halo, divisor)
        return fixed + per_pixel * window + batch * in_channels * window * _FLOAT

    units = -(-max(padded) // divisor)  # the most divisors a centre can span
    smallest = max(1, min(-(-max(profile.halo) // divisor), units))
    least = min(whole, need(smallest * divisor)) if profile.local else whole
    alone = stack_bytes + image_bytes
    if alone > budget_bytes:
        what = "its member stack and the image alone"
        raise DataError(
            memory_message(shape, batch, stack_size, structures, alone, budget_bytes, what, least)
        )
    if not profile.local or whole <= budget_bytes:
        return None
    if need(smallest * divisor) > budget_bytes:
        raise DataError(memory_message(shape, batch, stack_size, structures, least, budget_bytes))
    lo, hi = smallest, units  # the most divisors per centre that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid * divisor) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    centre = lo * divisor
    padded, tiles = plan_tiles(shape, centre, profile.halo, divisor)
    sizes = tuple(max(k1 - k0 for k0, k1 in (t.keep[i] for t in tiles)) for i in range(len(shape)))
    return TilePlan(
        tuple(int(s) for s in shape),
        padded,
        sizes,
        tuple(profile.halo),
        tuple(tiles),
        int(need(centre)),
        int(budget_bytes),
    )


def crop_window(batch: torch.Tensor, window: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The region ``window`` (padded coordinates) of ``batch`` ``[B, C, *sp]``, zeros
    beyond the image (the whole-image pass's padding): ``[B, C, *window sizes]``."""
    shape = batch.shape[2:]
    inside = tuple(slice(w0, min(w1, s)) for (w0, w1), s in zip(window, shape, strict=True))
    region = batch[(slice(None), slice(None), *inside)]
    pads: list[int] = []
    for (w0, w1), s in zip(reversed(window), reversed(shape), strict=True):
        pads += [0, (w1 - w0) - (min(w1, s) - w0)]
    if any(pads):
        return torch.nn.functional.pad(region, pads)
    return region.contiguous()


@torch.no_grad()
def predict_tiled(
    predict: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    plan: TilePlan,
    stack_size: int,
    structures: int,
    pooling: TiledPooling | None = None,
) -> torch.Tensor:
    """The predicted stack ``[S', B, K, *sp]`` of ``batch`` ``[B, C, *sp]``, tile by tile.

    Each tile's window ``[B, C, *window]`` is predicted by ``predict`` (a stack
    ``[S', B, K, *window]``) and its centre, cropped to the image, written into the
    whole image's stack.
    """
    shape = tuple(int(s) for s in batch.shape[2:])
    out = torch.empty(
        (stack_size, batch.shape[0], structures, *shape), dtype=torch.float32, device=batch.device
    )
    for tile in plan.tiles:
        x = crop_window(batch, tile.window)
        if pooling is not None:
            pooling.region(tile)
        stack = predict(x)
        del x
        src: list[slice] = []
        dst: list[slice] = []
        for (w0, _), (k0, k1), s in zip(tile.window, tile.keep, shape, strict=True):
            stop = min(k1, s)
            src.append(slice(k0 - w0, stop - w0))
            dst.append(slice(k0, stop))
        into: tuple[Any, ...] = (..., *dst)
        part: tuple[Any, ...] = (..., *src)
        out[into] = stack[part].float()
        del stack
        if batch.device.type == "cpu":
            release_freed_memory()
    return out


class TiledPooling:
    """The gate's pooled features (per image, each module's channel means over space)
    of a prediction made tile by tile: each module output's part over the tile's centre
    is summed, and the sums over all tiles divided by the positions summed.

    The centres cover the padded image once, as the whole-image pass's outputs do, so
    the features equal that pass's (to float rounding). Several calls of a module in a
    tile (MC dropout's samples) are averaged, as :class:`~edue.engine.inference.features.FeatureTap`
    does.

    Args:
        modules: the modules to read, in feature order.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self._sums: list[torch.Tensor | None] = [None] * len(self.modules)
        self._counts = [0] * len(self.modules)
        self._tile: Tile | None = None
        self._valid = True
        self._handles: list[Any] = []

    def __enter__(self) -> TiledPooling:
        self._handles = [
            m.register_forward_hook(self._keeper(k)) for k, m in enumerate(self.modules)
        ]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def region(self, tile: Tile) -> None:
        """The tile whose outputs come next."""
        self._tile = tile

    def _keeper(self, k: int):  # type: ignore[no-untyped-def]
        def keep(_module: nn.Module, _inputs: object, output: object) -> None:
            self.keep(k, output)

        return keep

    def keep(self, k: int, output: object) -> None:
        """Add the centre of module ``k``'s output ``[b, C, *spatial]`` to its sums."""
        tile = self._tile
        if tile is None or not isinstance(output, torch.Tensor) or output.ndim < 3:
            self._valid = False
            return
        index: list[slice] = [slice(None), slice(None)]
        positions = 1
        for (w0, w1), (k0, k1), size in zip(tile.window, tile.keep, output.shape[2:], strict=False):
            scale, rest = divmod(w1 - w0, int(size))
            if rest or (k0 - w0) % scale or (k1 - w0) % scale:
                self._valid = False  # a grid not aligned to the tile: cannot crop exactly
                return
            index.append(slice((k0 - w0) // scale, (k1 - w0) // scale))
            positions *= (k1 - k0) // scale
        part = output.detach()[tuple(index)].float().sum(tuple(range(2, output.ndim)))
        total = self._sums[k]
        self._sums[k] = part if total is None else total + part
        self._counts[k] += positions

    def features(self) -> torch.Tensor | None:
        """The pooled features ``[B, ΣC]`` on the CPU (``None``: a module was not read,
        or its outputs did not align with the tiles)."""
        if not self._valid or any(s is None for s in self._sums):
            return None
        parts = [s / c for s, c in zip(self._sums, self._counts, strict=True) if s is not None]
        return torch.cat(parts, 1).cpu()
