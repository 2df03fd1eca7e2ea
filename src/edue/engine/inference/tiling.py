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
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edue.errors import DataError

MB = 1024**2
#: share of the machine's memory (or the GPU's) a prediction may use by default
DEFAULT_FRACTION = 0.5
#: the least default budget, however small the machine (MB)
FLOOR_MB = 512
#: the default budget when the machine's memory cannot be read (MB)
UNKNOWN_MACHINE_MB = 2048
#: margin on the tracked tensor bytes: allocator slack and backend scratch (oneDNN
#: reorders) made the resident memory of whole-image passes 1.13–1.35× the tracked peak
SAFETY = 1.35
#: fixed allowance of a prediction beyond its tensors (allocator arenas and
#: fragmentation, backend buffers): the resident memory of tiled predictions varied by
#: ±30 MB from run to run on the same image
OVERHEAD_BYTES = 64 * MB
#: absolute change in a probability that counts as "the output changed" (verification)
LOCALITY_TOLERANCE = 1e-5
_FLOAT = 4  # bytes of a float32


# --------------------------------------------------------------------------- budget
def machine_memory_bytes() -> int | None:
    """The memory this process can use: the physical memory (``/proc/meminfo``'s
    ``MemTotal``, else ``os.sysconf``), or the cgroup's limit when it is lower
    (containers). ``None`` when neither can be read."""
    total: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        total = None
    if total is None:
        try:
            total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            total = None
    for limit_file in (
        "/sys/fs/cgroup/memory.max",  # cgroup v2 ("max": unlimited)
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1 (huge: unlimited)
    ):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0 and (total is None or int(text) < total):
            total = int(text)
    return total


def default_memory_budget_mb(device: torch.device | str | None = None) -> int:
    """The prediction memory budget when ``infer.max_memory_mb`` is ``null``.

    :data:`DEFAULT_FRACTION` (half) of the machine's memory (:func:`machine_memory_bytes`;
    on a CUDA device, of the GPU's memory), at least :data:`FLOOR_MB`;
    :data:`UNKNOWN_MACHINE_MB` when the memory cannot be read.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    total: int | None
    if dev.type == "cuda" and torch.cuda.is_available():
        total = int(torch.cuda.get_device_properties(dev).total_memory)
    else:
        total = machine_memory_bytes()
    if not total:
        return UNKNOWN_MACHINE_MB
    return max(FLOOR_MB, int(total * DEFAULT_FRACTION / MB))


# --------------------------------------------------------------------------- tensor bytes
class LiveTensorBytes(TorchDispatchMode):
    """The peak bytes of live tensors created while it is active, and the resampling
    operators run.

    Every tensor an operator returns is tracked (by a weak reference) until it is freed;
    storages shared by views count once. Tensors made before (the input, the weights)
    are not counted. Resampling operators (``upsample_*``, ``pixel_shuffle``), whether
    called by a module or functionally (``F.interpolate`` in the heads), are listed with
    their input and output shapes in :attr:`resampling`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tracked: list[tuple[weakref.ref[torch.Tensor], int, int]] = []
        self.peak = 0
        #: ``(operator name, input shape, output shape)`` of each resampling operator
        self.resampling: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(  # type: ignore[no-untyped-def,override]
        self, func, types, args=(), kwargs=None
    ):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if ("upsample" in name or "pixel_shuffle" in name) and isinstance(out, torch.Tensor):
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is not None:
                self.resampling.append((name, tuple(first.shape), tuple(out.shape)))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                try:
                    storage = t.untyped_storage()
                    self._tracked.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
                except (RuntimeError, NotImplementedError, TypeError):
                    continue
        alive = [entry for entry in self._tracked if entry[0]() is not None]
        self._tracked = alive
        live = {ptr: size for _, ptr, size in alive}
        self.peak = max(self.peak, sum(live.values()))
        return out


def _resampling_reach(
    ops: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]], probe: Sequence[int]
) -> tuple[float, ...]:
    """Reach per axis (input pixels) of the resampling operators of a probe pass: a
    fine pixel reads its coarse pixel (nearest: ``s_in − s_out`` beyond its own block),
    and one (linear) or two (cubic) more coarse pixels each side. Operators with the
    same name and shapes count once (repeated samples, ensemble members)."""
    n = len(probe)
    total = [0.0] * n
    for name, shape_in, shape_out in sorted(set(ops)):
        if len(shape_in) != n + 2 or len(shape_out) != n + 2:
            continue
        for i in range(n):
            s_in, s_out = probe[i] / shape_in[2 + i], probe[i] / shape_out[2 + i]
            if s_out > s_in:  # down-sampling: at most a neighbour of the input scale
                total[i] += 2 * s_in
            elif "nearest" in name or "pixel_shuffle" in name:
                total[i] += s_in - s_out
            elif "cubic" in name:
                total[i] += 3 * s_in - s_out
            else:  # linear, bilinear, trilinear, anti-aliased: conservative
                total[i] += 2 * s_in - s_out if "linear" in name else 3 * s_in
    return tuple(total)


# --------------------------------------------------------------------------- receptive field
@dataclass(frozen=True)
class NetworkProfile:
    """What tiling needs to know about a network, measured once per predictor.

    Attributes:
        halo: context margin per spatial axis in input pixels, a multiple of the
            divisor: at least the network's receptive field (analytic bound, checked).
        bytes_per_pixel: peak bytes of live tensors of a pass per input pixel of one
            image (the pass's own member stack included), before :data:`SAFETY`.
        local: whether tiles give the whole-image result (no image-wide operation).
        reason: why not, when ``local`` is ``False``.
        probe: the spatial shape of the probe pass.
        unchecked: module types the analytic bound knows nothing of (assumed
            pointwise; the empirical check covers them).
    """

    halo: tuple[int, ...]
    bytes_per_pixel: float
    local: bool
    reason: str = ""
    probe: tuple[int, ...] = ()
    unchecked: tuple[str, ...] = ()


class _NonLocal(Exception):
    """A module whose output at a pixel depends on the whole image."""


def _per_axis(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, tuple | list):
        return tuple(int(v) for v in value) if len(value) == n else (int(value[0]),) * n
    return (int(value),) * n


_POINTWISE_ACTIVATIONS_EXCEPT = (
    nn.MultiheadAttention,
    nn.Softmax,
    nn.Softmin,
    nn.LogSoftmax,
)
_IMAGE_WIDE = (
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.MultiheadAttention,
    nn.Linear,
    nn.Flatten,
    nn.Unflatten,
)


def _reach(
    module: nn.Module, scale_in: Sequence[float], scale_out: Sequence[float]
) -> tuple[float, ...] | None:
    """How far beyond its own pixel block (in input pixels, per axis) one output pixel of
    ``module`` reads; ``None`` for a module type this knows nothing of.

    A pixel at scale ``s`` (one pixel per ``s`` input pixels) stands for the input block
    ``[j s, (j + 1) s)``; with tiles aligned to the divisor, a 2×2 max-pool or a stride-2
    transposed convolution reaches nothing beyond it, a 3×3 convolution one pixel of its
    scale on each side.

    Raises:
        _NonLocal: an image-wide operation.
    """
    n = len(scale_in)
    if isinstance(module, _IMAGE_WIDE):
        raise _NonLocal(f"{type(module).__name__} is image-wide")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training:
            raise _NonLocal(f"{type(module).__name__} in training mode uses batch statistics")
        return (0.0,) * n
    if isinstance(module, nn.modules.dropout._DropoutNd):
        feature = isinstance(
            module, nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.FeatureAlphaDropout
        )
        if module.training and not feature:
            raise _NonLocal(f"{type(module).__name__} samples each pixel at prediction")
        return (0.0,) * n  # channel masks: the same for a tile as for the whole image
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        k, st = _per_axis(module.kernel_size, n), _per_axis(module.stride, n)
        dl, pad = _per_axis(module.dilation, n), _per_axis(module.padding, n)
        exact = type(module).__module__.startswith("torch.nn")
        return tuple(
            (max((k[i] - 1) * dl[i] - pad[i], pad[i] + st[i] - 1, 0) if exact else k[i] * dl[i])
            * scale_out[i]
            for i in range(n)
        )
    if isinstance(module, nn.modules.conv._ConvNd | nn.modules.pooling._MaxPoolNd):
        if getattr(module, "padding_mode", "zeros") == "circular":
            raise _NonLocal(f"{type(module).__name__} pads circularly")
        k, st = _per_axis(module.kernel_size, n), _per_axis(module.stride or 1, n)
        dl = _per_axis(getattr(module, "dilation", 1), n)
        padding = module.padding
        if isinstance(padding, str):
            same = tuple(d * (s - 1) // 2 for d, s in zip(dl, k, strict=True))
            pad = (0,) * n if padding == "valid" else same
        else:
            pad = _per_axis(padding, n)
        # plain torch classes pad as declared; a subclass may pad in its forward
        exact = type(module).__module__.startswith("torch.nn")
        return tuple(
            (
                max(pad[i], (k[i] - 1) * dl[i] - pad[i] + 1 - st[i], 0)
                if exact
                else (k[i] - 1) * dl[i]
            )
            * scale_in[i]
            for i in range(n)
        )
    if isinstance(module, nn.modules.pooling._AvgPoolNd | nn.modules.pooling._LPPoolNd):
        k = _per_axis(module.kernel_size, n)
        st = _per_axis(getattr(module, "stride", None) or module.kernel_size, n)
        pad = _per_axis(getattr(module, "padding", 0), n)
        return tuple(max(pad[i], k[i] - pad[i] - st[i], 0) * scale_in[i] for i in range(n))
    if isinstance(module, nn.Upsample | nn.PixelShuffle):
        return (0.0,) * n  # counted from the resampling operators (_resampling_reach)
    if isinstance(module, nn.Identity | nn.PixelUnshuffle | nn.ChannelShuffle):
        return (0.0,) * n
    if isinstance(module, nn.Softmax | nn.Softmin | nn.LogSoftmax):
        if module.dim in (1, -1 - n):  # over the channels
            return (0.0,) * n
        raise _NonLocal(f"{type(module).__name__} over a spatial axis")
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(
        module, _POINTWISE_ACTIVATIONS_EXCEPT
    ):
        return (0.0,) * n
    if isinstance(module, nn.Softmax2d | nn.LocalResponseNorm):
        return (0.0,) * n
    return None


@dataclass
class _Call:
    module: nn.Module
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    out_bytes: int


def _leaf_calls(model: nn.Module, spatial_dims: int) -> tuple[list[_Call], list[Any]]:
    """Forward hooks recording every leaf module's call on ``[b, C, *spatial]`` tensors."""
    calls: list[_Call] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
        out = output if isinstance(output, torch.Tensor) else None
        if out is None and isinstance(output, tuple | list):
            out = next((t for t in output if isinstance(t, torch.Tensor)), None)
        if first is None or first.ndim != spatial_dims + 2:
            return  # not a feature map (e.g. vectors after a pooling the hooks saw)
        shape_out = tuple(out.shape[2:]) if out is not None and out.ndim == first.ndim else ()
        nbytes = out.numel() * out.element_size() if out is not None else 0
        calls.append(_Call(module, tuple(first.shape[2:]), shape_out, nbytes))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(m.children())]
    return calls, handles


def _analytic_halo(
    calls: Sequence[_Call],
    probe: Sequence[int],
    divisor: int,
    resampling: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The sum over the modules called of each one's reach per axis (input pixels; a
    module called several times, e.g. per MC-dropout sample, counts once with its
    largest reach), plus the reach of the resampling operators (``resampling``, at
    least two pixels of the coarsest scale seen: a bilinear up-sampling from it); and
    the module types of unknown reach.

    Raises:
        _NonLocal: an image-wide module, or features coarser than the divisor (a global
            pooling done functionally).
    """
    n = len(probe)
    reaches: dict[int, tuple[float, ...]] = {}
    coarsest = [1.0] * n
    unknown: list[str] = []
    for call in calls:
        scale_in = [probe[i] / max(call.shape_in[i], 1) for i in range(n)]
        scale_out = (
            [probe[i] / max(call.shape_out[i], 1) for i in range(n)]
            if len(call.shape_out) == n
            else scale_in
        )
        if max(max(scale_in), max(scale_out)) > divisor * 1.001:
            raise _NonLocal(
                f"{type(call.module).__name__} reads features pooled beyond the network's "
                f"downsampling ({divisor})"
            )
        reach = _reach(call.module, scale_in, scale_out)
        if reach is None:
            unknown.append(type(call.module).__name__)
            continue
        before = reaches.get(id(call.module), (0.0,) * n)
        reaches[id(call.module)] = tuple(max(a, b) for a, b in zip(before, reach, strict=True))
        for i in range(n):
            coarsest[i] = max(coarsest[i], scale_in[i], scale_out[i])
    resampled = resampling or (0.0,) * n
    total = [
        sum(r[i] for r in reaches.values()) + max(resampled[i], 2 * coarsest[i]) for i in range(n)
    ]
    return tuple(total), tuple(sorted(set(unknown)))


def round_up(value: float, multiple: int) -> int:
    """The least multiple of ``multiple`` at or above ``value``."""
    return int(math.ceil(value / multiple - 1e-9)) * multiple


def probe_side(divisor: int, spatial_dims: int) -> int:
    """Side of the memory probe: 64 px in 2D, 32 voxels in 3D, at least 4 divisors."""
    return round_up(max(4 * divisor, 64 if spatial_dims == 2 else 32), divisor)


@torch.no_grad()
def profile_network(
    predict: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    in_channels: int,
    spatial_dims: int,
    divisor: int,
    device: torch.device,
) -> NetworkProfile:
    """Measure a network's halo, locality and activation bytes per pixel (probe passes).

    Args:
        predict: the prediction of a batch ``[B, C, *sp]`` (sizes multiples of
            ``divisor``) as a stack ``[S', B, K, *sp]``, e.g. ``method.predict_members``.
        model: the module ``predict`` runs (its leaf modules are hooked).
        in_channels: image channels ``C``.
        spatial_dims: 2 or 3.
        divisor: the network's total downsampling factor.
        device: where the probes run.

    Returns:
        The :class:`NetworkProfile`. One pass of ``q^spatial_dims`` pixels
        (:func:`probe_side`) for the memory and the analytic bound, then two passes per
        axis of ``(2 halo + 3 d) × d^(dims−1)`` pixels for the check.
    """
    gen = torch.Generator().manual_seed(0)
    side = probe_side(divisor, spatial_dims)
    probe = (side,) * spatial_dims
    x = torch.randn(1, in_channels, *probe, generator=gen).to(device)
    calls, handles = _leaf_calls(model, spatial_dims)
    try:
        tracker = LiveTensorBytes()
        try:
            with tracker:
                stack = predict(x)
            peak = float(tracker.peak)
            resampling: tuple[float, ...] | None = _resampling_reach(tracker.resampling, probe)
        except Exception:  # noqa: BLE001 - a backend the tracker cannot follow
            calls.clear()
            stack = predict(x)
            peak = float(sum(c.out_bytes for c in calls) + stack.numel() * stack.element_size())
            resampling = None
    finally:
        for handle in handles:
            handle.remove()
    bytes_per_pixel = max(peak, float(stack.numel() * stack.element_size())) / math.prod(probe)
    del stack
    try:
        reach, unknown = _analytic_halo(calls, probe, divisor, resampling)
    except _NonLocal as exc:
        return NetworkProfile((0,) * spatial_dims, bytes_per_pixel, False, str(exc), probe)
    halo = tuple(round_up(max(r, divisor), divisor) for r in reach)
    changed = _changes_beyond(predict, in_channels, halo, divisor, device, gen)
    if changed is not None:
        axis, delta = changed
        reason = (
            f"a change of the input moved outputs {delta:.2g} beyond the receptive field's "
            f"bound ({halo[axis]} px on axis {axis})"
        )
        return NetworkProfile(halo, bytes_per_pixel, False, reason, probe, unknown)
    return NetworkProfile(halo, bytes_per_pixel, True, "", probe, unknown)


def _changes_beyond(
    predict: Callable[[torch.Tensor], torch.Tensor],
    in_channels: int,
    halo: Sequence[int],
    divisor: int,
    device: torch.device,
    gen: torch.Generator,
) -> tuple[int, float] | None:
    """Perturb a ``d``-wide slab of a probe along each axis; ``(axis, change)`` of the
    first axis whose outputs farther than the halo from the slab changed, else ``None``."""
    n = len(halo)
    for axis in range(n):
        length = 2 * halo[axis] + 3 * divisor
        shape = [divisor] * n
        shape[axis] = length
        base = torch.randn(1, in_channels, *shape, generator=gen)
        moved = base.clone()
        start = halo[axis] + divisor
        slab: list[slice] = [slice(None)] * (n + 2)
        slab[axis + 2] = slice(start, start + divisor)
        moved[tuple(slab)] = 3.0 * torch.randn(moved[tuple(slab)].shape, generator=gen) + 1.0
        a, b = predict(base.to(device)).float(), predict(moved.to(device)).float()
        diff = (a - b).abs()
        axis_at = axis + 3  # [S', B, K, *sp]
        far = torch.cat(
            [
                diff.narrow(axis_at, 0, divisor),
                diff.narrow(axis_at, length - divisor, divisor),
            ],
            axis_at,
        )
        delta = float(far.max())
        if delta > LOCALITY_TOLERANCE:
            return axis, delta
    return None


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


def _mb(nbytes: float) -> str:
    return f"{math.ceil(nbytes / MB):,} MB"


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


def memory_message(
    shape: Sequence[int],
    batch: int,
    stack_size: int,
    structures: int,
    need_bytes: float,
    budget_bytes: float,
    what: str = "the member stack, the image and the smallest tile",
    least_bytes: float | None = None,
) -> str:
    """The one line of the :class:`~edue.errors.DataError` of a prediction over budget.

    Args:
        shape: the image's spatial shape.
        batch: images in the batch.
        stack_size: maps in the member stack ``S'``.
        structures: structures ``K``.
        need_bytes: what ``what`` needs.
        budget_bytes: the budget.
        what: what needs ``need_bytes``.
        least_bytes: the least budget the prediction needs (default ``need_bytes``);
            the value suggested is 5 % above it, rounded up to 100 MB.
    """
    size = "×".join(str(int(s)) for s in shape)
    images = f"{batch} images" if batch > 1 else "an image"
    stack = f"[{stack_size}, {structures}, {', '.join(str(int(s)) for s in shape)}]"
    least = need_bytes if least_bytes is None else max(least_bytes, need_bytes)
    wanted = round_up(least / MB * 1.05, 100)
    return (
        f"{images} of {size} px needs at least {_mb(need_bytes)} for {what} "
        f"(member stack {stack} float32 per image), over the prediction memory budget of "
        f"{_mb(budget_bytes)}; raise it, e.g. infer.max_memory_mb={wanted}, or predict "
        f"smaller images"
    )


def check_stack_fits(
    shape: Sequence[int],
    batch: int,
    in_channels: int,
    stack_size: int,
    structures: int,
    budget_bytes: int,
) -> None:
    """Raise a one-line :class:`~edue.errors.DataError` when the whole image's member
    stack ``[S', B, K, *shape]`` float32 and the image alone exceed the budget (for
    images predicted in one pass without a plan: those under the probe's size)."""
    pixels = math.prod(shape)
    need = (stack_size * structures + in_channels) * batch * pixels * _FLOAT
    if need > budget_bytes:
        what = "its member stack and the image alone"
        raise DataError(
            memory_message(shape, batch, stack_size, structures, need, budget_bytes, what)
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


_LIBC: Any = None


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc ``malloc_trim``; nothing
    elsewhere): between tiles, so that one tile's freed activations do not stay
    resident, fragmented, under the next one's."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


class TiledPooling:
    """The gate's pooled features (per image, each module's channel means over space)
    of a prediction made tile by tile: each module output's part over the tile's centre
    is summed, and the sums over all tiles divided by the positions summed.

    The centres cover the padded image once, as the whole-image pass's outputs do, so
    the features equal that pass's (to float rounding). Several calls of a module in a
    tile (MC dropout's samples) are averaged, as :class:`~edue.engine.referral.gate.FeatureTap`
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
