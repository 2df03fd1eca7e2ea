"""The receptive field of a network, bounded analytically, and its memory per pixel:
what :func:`profile_network` measures in one probe pass (see
:mod:`edue.engine.inference.tiling` for how tiles use it).

A probe pass records, through forward hooks, every convolution and pooling module with
the scale it runs at, and, from the dispatched operators, every resampling; the halo is
the sum of their reach in input pixels, rounded up to a multiple of the network's
downsampling factor. Image-wide modules are recognised by the hooks, and a perturbation
check (:func:`_changes_beyond`) catches those the hooks cannot name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edue.engine.inference.memory import LiveTensorBytes, round_up

#: absolute change in a probability that counts as "the output changed" (verification)
LOCALITY_TOLERANCE = 1e-5


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
