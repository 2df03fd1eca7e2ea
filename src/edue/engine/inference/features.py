"""Feature taps: per-image channel means of chosen modules' outputs, read during the
forward pass (no second pass), and how to find a U-Net's encoder blocks.

The :class:`~edue.engine.inference.predictor.Predictor` keeps one tap per set of
modules; the distribution-shift gate (:mod:`edue.engine.referral.gate`) scores what it
reads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from edue.errors import CheckpointError

_CPU = torch.device("cpu")
#: The spatial dimensions of a ``[b, C, *spatial]`` output, by its number of dimensions.
_SPATIAL = {n: tuple(range(2, n)) for n in range(3, 8)}

#: A U-Net encoder block: ``…encoder.<level>`` (see :mod:`edue.nets.unet`).
_ENCODER_BLOCK = re.compile(r"^(?P<prefix>(?:.*\.)?)encoder\.(?P<level>\d+)$")


def encoder_block_names(model: nn.Module) -> list[str]:
    """Names (in ``model.named_modules()``) of the encoder blocks of the first network
    inside ``model``, fine to coarse (the last is the bottleneck).

    A backbone that lists its blocks (``encoder_names`` and ``tap_modules()``, see
    :mod:`edue.nets.unet`) is read through them. Otherwise blocks are found by the
    U-Net's naming (``encoder.0 … encoder.{L-1}``). A method holding several networks
    (an ensemble) is read through its first. Empty when the model has no such block.
    """
    paths: dict[int, str] = {}
    for name, module in model.named_modules():
        paths.setdefault(id(module), name)
    found: dict[str, list[tuple[int, str]]] = {}
    for name, module in model.named_modules():
        taps = getattr(module, "tap_modules", None)
        if callable(taps):
            try:
                blocks = taps()
                listed = [blocks[n] for n in module.encoder_names]
            except (AttributeError, NotImplementedError, KeyError, TypeError):
                listed = []
            if listed and all(id(b) in paths for b in listed):
                return [paths[id(b)] for b in listed]
        match = _ENCODER_BLOCK.match(name)
        if match and not isinstance(module, nn.ModuleList):
            found.setdefault(match["prefix"], []).append((int(match["level"]), name))
    if not found:
        return []
    return [name for _, name in sorted(next(iter(found.values())))]


class FeatureTap:
    """Per-image channel means of some modules' outputs, captured while the model runs.

    Use as a context manager around the forward pass: inside it, each call of a module
    contributes its output ``[b, C, *spatial]`` averaged over space, ``[b, C]``, reduced
    in the hook while the output is fresh, so no output is held beyond the module's call.
    Outside it the hooks do nothing.

    By default the hooks are registered on entry and removed on exit. A ``persistent``
    tap registers them on its first entry and keeps them until :meth:`close` (what a
    :class:`~edue.engine.inference.predictor.Predictor` does: on a 64² prediction, registering and
    removing two hooks per call costs more than their work).

    Args:
        modules: the modules to read (e.g. the encoder blocks), in feature order.
        persistent: keep the hooks registered between passes.
    """

    def __init__(self, modules: Sequence[nn.Module], persistent: bool = False) -> None:
        self.modules = list(modules)
        self.persistent = persistent
        self._calls: list[list[tuple[torch.Tensor, int]]] = [[] for _ in self.modules]
        self._armed = False
        self._handles: list[Any] = []
        self._scales: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}

    def __enter__(self) -> FeatureTap:
        self._calls = [[] for _ in self.modules]
        if not self._handles:
            self._handles = [
                module.register_forward_hook(self._keeper(k))
                for k, module in enumerate(self.modules)
            ]
        self._armed = True
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._armed = False
        if not self.persistent:
            self.close()

    def close(self) -> None:
        """Remove the hooks (a later entry registers them again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _keeper(self, k: int):  # type: ignore[no-untyped-def]
        def keep(_module: nn.Module, _inputs: object, output: object) -> None:
            if self._armed:
                self.keep(k, output)

        return keep

    def keep(self, k: int, output: object) -> None:
        """What the hook of module ``k`` does with its output ``[b, C, *spatial]``: its
        sum over space ``[b, C]`` (float32, detached) and the number of positions summed.

        A sum, not a mean: one reduction instead of a reduction and a division; the
        division is done once for all modules (:meth:`features`).
        """
        if isinstance(output, torch.Tensor) and output.ndim >= 3:
            if output.requires_grad:
                output = output.detach()
            if output.dtype != torch.float32:
                output = output.float()
            dims = _SPATIAL.get(output.ndim) or tuple(range(2, output.ndim))
            count = output[0, 0].numel()
            self._calls[k].append((output.sum(dims), count))

    def features(self, batch: int) -> torch.Tensor | None:
        """The pooled features of the ``batch`` images of the pass ``[batch, ΣC]``: per
        module, each channel's mean over space.

        Per module: calls with one row per image (several samples or members of one
        network) are averaged; a single image predicted window by window gets the mean
        over its windows; anything else (windows of several images mixed) gives ``None``.
        What was kept is released.
        """
        calls, self._calls = self._calls, [[] for _ in self.modules]
        if calls and all(len(kept) == 1 and kept[0][0].shape[0] == batch for kept in calls):
            # the usual case, one call of each module with a row per image: one
            # concatenation of the sums, one division by the positions summed
            sums = [kept[0][0] for kept in calls]
            key = tuple((int(t.shape[1]), count) for ((t, count),) in calls)
            scale = self._scales.get(key)
            if scale is None or scale.device != sums[0].device:
                scale = torch.cat([torch.full((c,), 1.0 / n) for c, n in key]).to(sums[0].device)
                self._scales[key] = scale
            pooled = torch.cat(sums, 1).mul_(scale)
            return pooled if pooled.device == _CPU else pooled.cpu()
        parts = []
        for kept in calls:
            means = [total / count for total, count in kept]
            if not means:
                return None
            if all(m.shape[0] == batch for m in means):
                parts.append(torch.stack(means).mean(0))
            elif batch == 1:
                parts.append(torch.cat(means).mean(0, keepdim=True))
            else:
                return None
        if not parts:
            return None
        pooled = torch.cat(parts, 1)
        return pooled if pooled.device == _CPU else pooled.cpu()


def tapped_modules(method: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules ``names`` of ``method``.

    Raises:
        CheckpointError: the method has no such module (a gate fitted on another model).
    """
    modules = dict(method.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise CheckpointError(
            f"the calibration's gate reads module '{missing[0]}', which this model does not have"
        )
    return [modules[n] for n in names]
