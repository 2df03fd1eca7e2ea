"""The distribution-shift gate: is an image unlike the training images?

The gate reads the network's own forward pass: forward hooks on the deepest encoder
blocks (by default the U-Net's bottleneck and the block before it, see
:func:`encoder_block_names`) keep the global average of each of their channels per
image, concatenated into one feature vector (:class:`FeatureTap`), so the score costs no
second pass. A Gaussian with Ledoit–Wolf shrinkage covariance
(:class:`~edue.metrics.referral.ShrunkGaussian`) is fitted to the training images'
pooled features when the run is calibrated; a new image's score is its Mahalanobis
distance to that Gaussian, and it is flagged when the score exceeds a threshold set on
the calibration images for a stated false-alarm rate
(:func:`~edue.metrics.referral.conformal_upper_threshold`).

Two blocks, not the bottleneck alone: on the embedded 2D data the plain U-Net's
bottleneck features alone separate noisy images less well; each further block read
costs about 1.5 % of a 64² prediction (docs/referral.md).

The fitted arrays are kept beside ``calibration.json`` in ``calibration_gate.npz``
(:meth:`OODGate.save`, :meth:`OODGate.load`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edue.errors import CheckpointError, EdueError
from edue.io import write_npz

if TYPE_CHECKING:  # the fit's math is imported where a gate is fitted or read
    from edue.metrics.referral import ShrunkGaussian

_CPU = torch.device("cpu")

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
    :class:`~edue.engine.infer.Predictor` does: on a 64² prediction, registering and
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


#: The spatial dimensions of a ``[b, C, *spatial]`` output, by its number of dimensions.
_SPATIAL = {n: tuple(range(2, n)) for n in range(3, 8)}


@dataclass(frozen=True)
class OODGate:
    """A fitted gate.

    Attributes:
        modules: names of the tapped modules in the method (``Predictor.method``).
        gaussian: the fit of the training images' pooled features.
        threshold: flag an image whose distance exceeds this.
        false_alarm: the false-alarm rate the threshold was set for.
        n_calibration: calibration images the threshold was set on.
    """

    modules: tuple[str, ...]
    gaussian: ShrunkGaussian
    threshold: float
    false_alarm: float
    n_calibration: int

    @classmethod
    def fit(
        cls,
        modules: Sequence[str],
        train_features: np.ndarray,
        calibration_features: np.ndarray,
        false_alarm: float,
    ) -> OODGate:
        """Fit on training features ``[N, C]``, set the threshold on calibration features
        ``[M, C]``."""
        from edue.metrics.referral import ShrunkGaussian, conformal_upper_threshold

        gaussian = ShrunkGaussian.fit(train_features)
        # the threshold is set on the very scores predict will compute (:meth:`score`)
        unset = cls(tuple(modules), gaussian, math.inf, float(false_alarm), 0)
        scores = unset.score(calibration_features)
        threshold = conformal_upper_threshold(scores, false_alarm)
        return cls(tuple(modules), gaussian, threshold, float(false_alarm), int(scores.size))

    @cached_property
    def _projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fit as ``(bias [F], weights [F, F])`` in float32, with distance
        ``‖x · weights + bias‖``: ``weights`` from :meth:`ShrunkGaussian.whitening`,
        ``bias = −mean · weights`` (in float64, then rounded)."""
        weights = self.gaussian.whitening()
        return (
            torch.as_tensor(-(self.gaussian.mean @ weights), dtype=torch.float32),
            torch.as_tensor(weights, dtype=torch.float32),
        )

    def score(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Distance of each row of ``features`` ``[M, F]`` (or one ``[F]``) to the
        training images ``[M]``.

        The number of :meth:`ShrunkGaussian.distance` up to float32 rounding, in two
        torch operations (one matrix product with its bias, one norm) on the
        prediction's own threads: right after a 64² pass, each extra operation, and
        NumPy's more so, costs more than its arithmetic.

        Raises:
            ValueError: the rows do not have the gate's ``F`` features.
        """
        x = features if isinstance(features, torch.Tensor) else torch.as_tensor(features)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.gaussian.dims:
            raise ValueError(
                f"features have shape {tuple(x.shape)}, the gate {self.gaussian.dims} per row"
            )
        if x.dtype != torch.float32 or x.requires_grad or x.device != _CPU:
            x = x.detach().to(_CPU, torch.float32)
        bias, weights = self._projection
        distance = torch.linalg.vector_norm(torch.addmm(bias, x, weights), dim=1)
        return distance.numpy().astype(np.float64)

    def flags(self, scores: object) -> np.ndarray:
        """Whether each score is above the threshold (nan is never flagged) ``[M]``."""
        s = np.asarray(scores, dtype=np.float64)
        return np.isfinite(s) & (s > self.threshold)

    def summary(self) -> dict[str, Any]:
        """What ``calibration.json`` records about the gate (arrays excluded)."""
        from edue.metrics.referral import encode_float

        return {
            "modules": list(self.modules),
            "features": self.gaussian.dims,
            "n_train": self.gaussian.n,
            "shrinkage": self.gaussian.shrinkage,
            "threshold": encode_float(self.threshold),
            "false_alarm": self.false_alarm,
            "n_calibration": self.n_calibration,
        }

    def save(self, path: Path) -> None:
        """Write the fitted arrays (``mean``, ``scale``, ``precision``) as NPZ."""
        write_npz(
            path,
            mean=self.gaussian.mean,
            scale=self.gaussian.scale,
            precision=self.gaussian.precision,
        )

    @classmethod
    def load(cls, path: Path, summary: dict[str, Any]) -> OODGate:
        """Read a gate from its NPZ and its ``calibration.json`` summary.

        Raises:
            EdueError: the file is missing, unreadable or inconsistent with the summary.
        """
        from edue.metrics.referral import ShrunkGaussian

        if not path.is_file():
            raise EdueError("the distribution-shift gate's arrays are missing", path)
        try:
            with np.load(path, allow_pickle=False) as data:
                mean = np.asarray(data["mean"], dtype=np.float64)
                scale = np.asarray(data["scale"], dtype=np.float64)
                precision = np.asarray(data["precision"], dtype=np.float64)
            gaussian = ShrunkGaussian(
                mean, scale, precision, float(summary["shrinkage"]), int(summary["n_train"])
            )
            gate = cls(
                tuple(str(m) for m in summary["modules"]),
                gaussian,
                float(summary["threshold"]),
                float(summary["false_alarm"]),
                int(summary["n_calibration"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdueError(
                f"not a readable gate file ({type(exc).__name__}: {exc})", path
            ) from None
        f = gaussian.dims
        if scale.shape != (f,) or precision.shape != (f, f) or int(summary["features"]) != f:
            raise EdueError("the gate's arrays do not match their description", path)
        return gate


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
