"""The one type every method returns at inference.

A method produces a stack of *members* — the heads of EDUE or Layer Ensembles, the
members of a Deep Ensemble, the samples of MC dropout, or the single output of a plain
U-Net. Everything derived from it (mean probability, variance map, entropy, image-level
score) is computed here and nowhere else, so metrics and reports never need to know
which method produced a prediction.

A method may also give its segmentation separately from the members (EDUE's
``method.segmentation: final`` or its separate uncertainty heads): the segmentation
probability is then that map, and the uncertainty is still the spread of the members.

Conventions: docs/method.md, section "Inference".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from edue.variance import leading_variance

_EPS = 1e-7
#: the uncertainty maps a prediction can score with (``Prediction.score``)
SCORES = ("variance", "bernoulli", "combined")


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in nats, elementwise. Shape is preserved."""
    p = p.clamp(_EPS, 1 - _EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def structure_names(n_structures: int, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The given names, or ``("s0", "s1", ...)`` when none are known (the names results
    and output files use for a prediction without names).

    Raises:
        ValueError: ``names`` does not have ``n_structures`` entries.
    """
    if not names:
        return tuple(f"s{k}" for k in range(n_structures))
    names = tuple(names)
    if len(names) != n_structures:
        raise ValueError(f"expected {n_structures} structure names, got {len(names)}: {names}")
    return names


@dataclass
class Prediction:
    """Member probabilities of one case and everything derived from them.

    Attributes:
        members: sigmoid probabilities ``[S, K, *spatial]``; ``S`` heads, ensemble members
            or MC samples; ``K`` structures.
        case_id: identifier of the case, when known.
        method: name of the method that produced it (informational only).
        structures: names of the ``K`` structures, when known.
        segmentation: the segmentation probability ``[K, *spatial]`` when the method
            gives it apart from the members (``None``: the members' mean).
        score: the uncertainty map behind :attr:`uncertainty` and :attr:`sv`:
            ``variance`` (across members; ``p (1 − p)`` of a single member),
            ``bernoulli`` (``p (1 − p)`` of the segmentation probability) or ``combined``
            (their sum). See :data:`SCORES`.
        pixel_scale: the area (2D) or volume (3D) of one pixel of these maps in pixels of
            the grid the model predicted on: 1 unless the image was resampled onto the
            training grid and the maps back (:mod:`edue.engine.inference.grid`). The SV
            counts pixels of the predicted grid, so an image four times the training
            size a side keeps the SV scale of the training images (and of a
            calibration), instead of sixteen times it.
    """

    members: torch.Tensor
    case_id: str | None = None
    method: str | None = None
    structures: tuple[str, ...] | None = None
    segmentation: torch.Tensor | None = None
    score: str = "variance"
    pixel_scale: float = 1.0
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.members.ndim < 3:
            raise ValueError(
                "Prediction.members must be [S, K, *spatial], got shape "
                f"{tuple(self.members.shape)}"
            )
        self.members = self.members.detach().float()
        if self.segmentation is not None:
            self.segmentation = self.segmentation.detach().float()
            if self.segmentation.shape != self.members.shape[1:]:
                raise ValueError(
                    f"Prediction.segmentation must be [K, *spatial] = "
                    f"{tuple(self.members.shape[1:])}, got {tuple(self.segmentation.shape)}"
                )
        if self.score not in SCORES:
            raise ValueError(f"Prediction.score {self.score!r}: expected one of {SCORES}")

    @property
    def n_members(self) -> int:
        """Number of members ``S``."""
        return int(self.members.shape[0])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.members.ndim - 2

    def _cached(self, key: str, fn: object) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = fn()  # type: ignore[operator]
        return self._cache[key]

    @property
    def mean(self) -> torch.Tensor:
        """The segmentation probability ``[K, *spatial]``: the mean over members, or the
        method's own segmentation map where it gives one."""
        if self.segmentation is not None:
            return self.segmentation
        return self._cached("mean", lambda: self.members.mean(0))

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased variance across members ``[K, *spatial]`` (zeros when ``S == 1``).

        Unbiased (N − 1) to match the expert variance map of the data contract.
        """
        if self.n_members < 2:
            return torch.zeros_like(self.mean)
        return self._cached("variance", lambda: leading_variance(self.members))

    @property
    def entropy(self) -> torch.Tensor:
        """Bernoulli entropy of the mean probability ``[K, *spatial]`` (nats)."""
        return self._cached("entropy", lambda: bernoulli_entropy(self.mean))

    @property
    def bernoulli(self) -> torch.Tensor:
        """Bernoulli variance ``p (1 − p)`` of the segmentation probability ``[K, *spatial]``."""
        return self._cached("bernoulli", lambda: self.mean * (1 - self.mean))

    @property
    def uncertainty(self) -> torch.Tensor:
        """The method's uncertainty map ``[K, *spatial]`` (chosen by :attr:`score`).

        ``variance``: the variance across members when there are several; for a single
        member the Bernoulli variance ``p (1 − p)`` of its probability, the natural
        one-pass map of a plain network. ``bernoulli``: ``p (1 − p)`` of the
        segmentation. ``combined``: the variance across members plus ``p (1 − p)``.
        """
        if self.score == "bernoulli" or self.n_members < 2:
            return self.bernoulli
        if self.score == "combined":
            return self._cached("combined", lambda: self.variance + self.bernoulli)
        return self.variance

    def uncertainty_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per structure ``[K]``: the sum of the variance map (of ``p (1 − p)`` for a
        single member) and the sum of ``p (1 − p)`` of the segmentation — the
        image-level scores ``variance`` and ``bernoulli``; ``combined`` is their sum."""
        bernoulli = self.bernoulli.flatten(1).sum(1)
        if self.n_members < 2:
            return bernoulli, bernoulli
        return self.variance.flatten(1).sum(1), bernoulli

    @property
    def sv(self) -> torch.Tensor:
        """Image-level score: sum of the uncertainty map per structure ``[K]`` (in pixels
        of the predicted grid: times :attr:`pixel_scale`)."""
        total = self.uncertainty.flatten(1).sum(1)
        return total if self.pixel_scale == 1.0 else total * self.pixel_scale

    def mask(self, threshold: float = 0.5) -> torch.Tensor:
        """Binary segmentation ``[K, *spatial]`` of the mean probability."""
        return self.mean > threshold

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Raw arrays for saving: members, mean, variance, uncertainty, entropy, sv."""
        return {
            "members": self.members.numpy(),
            "mean": self.mean.numpy(),
            "variance": self.variance.numpy(),
            "uncertainty": self.uncertainty.numpy(),
            "entropy": self.entropy.numpy(),
            "sv": self.sv.numpy(),
        }
