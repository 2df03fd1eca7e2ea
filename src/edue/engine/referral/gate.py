"""The distribution-shift gate: is an image unlike the training images?

The gate reads the network's own forward pass: forward hooks on the deepest encoder
blocks (by default the U-Net's bottleneck and the block before it, see
:func:`~edue.engine.inference.features.encoder_block_names`) keep the global average of
each of their channels per image, concatenated into one feature vector
(:class:`~edue.engine.inference.features.FeatureTap`), so the score costs no second
pass. A Gaussian with Ledoit–Wolf shrinkage covariance (:class:`ShrunkGaussian`) is
fitted to the training images' pooled features when the run is calibrated; a new
image's score is its Mahalanobis distance to that Gaussian, and it is flagged when the
score exceeds a threshold set on the calibration images for a stated false-alarm rate
(:func:`conformal_upper_threshold`).

Two blocks, not the bottleneck alone: on the embedded 2D data the plain U-Net's
bottleneck features alone separate noisy images less well; each further block read
costs about 1.5 % of a 64² prediction (docs/referral.md).

The fitted arrays are kept beside ``calibration.json`` in ``calibration_gate.npz``
(:meth:`OODGate.save`, :meth:`OODGate.load`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edue.errors import EdueError
from edue.io import write_npz
from edue.metrics._utils import as_array_1d

_CPU = torch.device("cpu")


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
        from edue.metrics.risk_control import encode_float

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


# --------------------------------------------------------------------------- the fit
@dataclass(frozen=True)
class ShrunkGaussian:
    """A Gaussian fitted to feature vectors, for Mahalanobis distances.

    Features are standardised per dimension (training mean and standard deviation),
    then their covariance is shrunk towards a multiple of the identity with the
    Ledoit–Wolf (2004) weight, so it is well conditioned even with more dimensions
    than images.

    Attributes:
        mean: feature means ``[F]``.
        scale: feature standard deviations ``[F]`` (a constant feature gets 1).
        precision: inverse of the shrunk covariance of the standardised features ``[F, F]``.
        shrinkage: the Ledoit–Wolf weight in [0, 1].
        n: images fitted.
    """

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    shrinkage: float
    n: int

    @classmethod
    def fit(cls, features: object) -> ShrunkGaussian:
        """Fit on ``features`` ``[N, F]`` (rows with a non-finite value are dropped).

        Raises:
            ValueError: not a 2-D array, or fewer than two usable rows.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, F], got shape {x.shape}")
        x = x[np.isfinite(x).all(1)]
        n, f = x.shape
        if n < 2:
            raise ValueError(f"a Gaussian needs at least two feature vectors, got {n}")
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale <= 1e-12] = 1.0
        z = (x - mean) / scale
        cov = z.T @ z / n
        mu = float(np.trace(cov)) / f
        target_gap = float(((cov - mu * np.eye(f)) ** 2).sum()) / f
        spread = (float(((z**2).sum(1) ** 2).sum()) - n * float((cov**2).sum())) / (n**2 * f)
        shrinkage = min(max(spread, 0.0), target_gap) / target_gap if target_gap > 0 else 1.0
        shrunk = (1 - shrinkage) * cov + shrinkage * mu * np.eye(f)
        precision = np.linalg.pinv(shrunk, hermitian=True)
        return cls(mean, scale, precision, float(shrinkage), int(n))

    @property
    def dims(self) -> int:
        """Feature dimensions ``F``."""
        return int(self.mean.size)

    def whitening(self) -> np.ndarray:
        """The matrix ``W`` ``[F, F]`` with ``distance(x) = ‖(x − mean) · W‖``.

        ``W = diag(1 / scale) · V · diag(√λ)`` for the eigendecomposition ``V diag(λ) Vᵀ``
        of the precision (positive semi-definite; negative rounding clipped to 0).
        """
        values, vectors = np.linalg.eigh(self.precision)
        return vectors * np.sqrt(np.clip(values, 0.0, None)) / self.scale[:, None]

    def distance(self, features: object) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` ``[M, F]`` to the fit ``[M]``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.shape[-1] != self.dims:
            raise ValueError(f"features have {x.shape[-1]} dimensions, the fit {self.dims}")
        z = (x - self.mean) / self.scale
        return np.sqrt(np.maximum(((z @ self.precision) * z).sum(1), 0.0))


def conformal_upper_threshold(scores: object, false_alarm: float) -> float:
    """A threshold flagging (``score > threshold``) at most ``false_alarm`` of new images
    drawn like the calibration ones, in expectation over the calibration draw.

    The ``ceil((N + 1)(1 − false_alarm))``-th smallest of the ``N`` finite calibration
    scores (split-conformal quantile); ``inf`` (flag nothing) when that rank exceeds ``N``.

    Raises:
        ValueError: ``false_alarm`` outside (0, 1).
    """
    if not 0 < false_alarm < 1:
        raise ValueError(f"the false-alarm rate must lie in (0, 1), got {false_alarm}")
    s = np.sort(as_array_1d(scores))
    s = s[np.isfinite(s)]
    rank = int(math.ceil((s.size + 1) * (1 - false_alarm)))
    return float(s[rank - 1]) if 1 <= rank <= s.size else math.inf
