"""The grid a model was trained on, and the resampling that brings a new image onto it.

A network learns structures at the scale it saw them. A checkpoint trained on 64² images
that predicts a 256² image at 256² sees every structure four times larger than ever
before: its uncertainty is then about the scale, not the anatomy. So the training
resolution travels with the model (recorded in the checkpoint as ``data.grid``, in the
exported model's sidecar as ``training_grid``), and prediction resamples an input onto
it and the outputs back onto the input's grid, as nnU-Net does with its target spacing:

* **2D** images: when every training image had one size (``data.size``, or a dataset
  whose images all share one shape), every input is resized to it (bilinear,
  antialiased when shrinking) and the probabilities back to the input's size. A model
  trained on images of several sizes takes an input as it is.
* **3D** volumes with a voxel spacing (NIfTI, DICOM): the training volumes' spacing is
  recorded per axis as its median and its range. A volume whose spacing lies within the
  training range (10 % slack either side) is predicted as it is, since the network saw
  such spacings; one outside it is resampled to the median spacing (trilinear) and the
  probabilities back. A volume without a spacing (``.npy``) is taken as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edue.data.transforms import resize_image
from edue.errors import DataError
from edue.prediction import Prediction

#: how far outside the training spacings an input may lie and still be taken as it is
SPACING_SLACK = 0.10
#: training cases read to find the grid (evenly spread over the training subset)
MAX_CASES_READ = 64


@dataclass(frozen=True)
class TrainingGrid:
    """The training images' grid.

    Attributes:
        size: 2D: the one spatial size every training image had (``None``: several).
        spacing: 3D: the median voxel spacing of the training volumes, per axis (mm).
        spacing_min / spacing_max: the smallest and largest training spacing per axis.
    """

    size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    spacing_min: tuple[float, ...] | None = None
    spacing_max: tuple[float, ...] | None = None

    @classmethod
    def from_cases(cls, shapes: Sequence[Sequence[int]], spacings: Sequence[Any]) -> TrainingGrid:
        """The grid of training cases of spatial shapes ``shapes`` and spacings ``spacings``
        (``None`` where unknown): a size for 2D images of one shape, a spacing for 3D
        volumes that all have one."""
        if not shapes:
            return cls()
        dims = len(shapes[0])
        size = None
        if dims == 2 and len({tuple(int(s) for s in sh) for sh in shapes}) == 1:
            size = tuple(int(s) for s in shapes[0])
        known = [tuple(float(v) for v in sp) for sp in spacings if sp is not None]
        if dims != 3 or len(known) != len(spacings) or any(len(k) != 3 for k in known):
            return cls(size=size)
        table = np.asarray(known)
        return cls(
            size=size,
            spacing=tuple(float(v) for v in np.median(table, axis=0)),
            spacing_min=tuple(float(v) for v in table.min(axis=0)),
            spacing_max=tuple(float(v) for v in table.max(axis=0)),
        )

    @classmethod
    def from_source(cls, source: Any, limit: int = MAX_CASES_READ) -> TrainingGrid:
        """The grid of a prepared training subset (up to ``limit`` cases, evenly spread;
        cases the subset refuses are left out)."""
        n = len(source)
        picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, limit))}) if n else []
        shapes, spacings = [], []
        for index in picks:
            try:
                case = source.load(index)
            except DataError:
                continue
            shapes.append(case.spatial_shape)
            spacings.append(case.spacing)
        return cls.from_cases(shapes, spacings)

    @classmethod
    def from_dict(cls, info: dict[str, Any] | None, data_size: int | None = None) -> TrainingGrid:
        """The grid recorded in a checkpoint or sidecar (:meth:`to_dict`). Checkpoints
        from before the grid was recorded give ``data.size`` for 2D images."""
        if info is None:
            return cls(size=(int(data_size),) * 2 if data_size else None)

        def tup(key: str, kind: type) -> Any:
            value = info.get(key)
            return None if value is None else tuple(kind(v) for v in value)

        return cls(
            tup("size", int),
            tup("spacing", float),
            tup("spacing_min", float),
            tup("spacing_max", float),
        )

    def to_dict(self) -> dict[str, Any]:
        """The grid as JSON-ready lists (``None`` where not set)."""

        def lst(value: tuple[Any, ...] | None) -> list[Any] | None:
            return None if value is None else list(value)

        return {
            "size": lst(self.size),
            "spacing": lst(self.spacing),
            "spacing_min": lst(self.spacing_min),
            "spacing_max": lst(self.spacing_max),
        }

    def within_training(self, spacing: Sequence[float]) -> bool:
        """Whether a volume of ``spacing`` lies within the training spacings (with
        :data:`SPACING_SLACK`); ``True`` when no training spacing is recorded."""
        if self.spacing_min is None or self.spacing_max is None:
            return True
        return all(
            lo * (1 - SPACING_SLACK) <= float(s) <= hi * (1 + SPACING_SLACK)
            for s, lo, hi in zip(spacing, self.spacing_min, self.spacing_max, strict=True)
        )

    def target_shape(
        self, shape: Sequence[int], spacing: Sequence[float] | None = None
    ) -> tuple[int, ...] | None:
        """The shape an input of spatial ``shape`` (and voxel ``spacing``, if known) is
        predicted at, or ``None`` when it is taken as it is."""
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            return self.size if self.size is not None and self.size != shape else None
        if self.spacing is None or spacing is None or len(spacing) != len(shape):
            return None
        if self.within_training(spacing):
            return None
        target = tuple(
            max(1, round(n * float(s) / t))
            for n, s, t in zip(shape, spacing, self.spacing, strict=True)
        )
        return target if target != shape else None

    def describe(self) -> str:
        """One line for people: what inputs are resampled to."""
        if self.size is not None:
            return f"the training size {'×'.join(str(s) for s in self.size)}"
        if self.spacing is not None:
            return "the training spacing " + "×".join(f"{s:g}" for s in self.spacing) + " mm"
        return "the input's own grid"


def pixel_scale(predicted_at: Sequence[int], shape: Sequence[int]) -> float:
    """How many pixels of the grid predicted on one pixel of an image of ``shape``
    covers (1 when it was predicted at its own shape): the factor that keeps the SV of a
    resampled image in the training grid's pixels (:attr:`Prediction.pixel_scale`)."""
    if tuple(predicted_at) == tuple(shape):
        return 1.0
    return float(np.prod([float(p) for p in predicted_at]) / np.prod([float(s) for s in shape]))


def to_grid(images: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Images ``[C, *sp]`` of one shape resampled to ``size`` (:func:`resize_image`) and
    stacked ``[B, C, *size]`` (unchanged when ``size`` is their own)."""
    return torch.stack([resize_image(t, size) for t in images])


def from_grid(stack: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A predicted stack ``[S', B, K, *size]`` resampled back to the inputs' ``shape``
    (probabilities: bilinear / trilinear, clamped to [0, 1]); unchanged when ``size``
    is ``shape``."""
    shape = tuple(int(s) for s in shape)
    if tuple(stack.shape[3:]) == shape:
        return stack
    s, b, k = stack.shape[:3]
    flat = stack.reshape(s * b, k, *stack.shape[3:])
    return torch.stack([resize_image(m, shape) for m in flat]).reshape(s, b, k, *shape).clamp(0, 1)


class OnTrainingGrid:
    """What every predictor of ``edue predict`` shares about the training grid: the
    shape an input is predicted at, and the batch and single-image predictions through
    the one path with features. A subclass sets ``grid`` and defines
    ``predict_batch_with_features(images, case_ids, tap, spacing)``."""

    grid: TrainingGrid

    def input_shape(
        self, shape: Sequence[int], spacing: Sequence[float] | None = None
    ) -> tuple[int, ...]:
        """The spatial shape an image of ``shape`` (voxel ``spacing``, if known) is
        predicted at: the training grid's (:meth:`TrainingGrid.target_shape`), else its
        own (the network pads odd sizes inside)."""
        target = self.grid.target_shape(shape, spacing)
        return tuple(int(s) for s in shape) if target is None else target

    def predict_batch(
        self,
        images: Sequence[np.ndarray | torch.Tensor],
        case_ids: Sequence[str | None] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> list[Prediction]:
        """Predict several images ``[C, *sp]`` of the same size in one pass (voxel
        ``spacing``, when known, decides the grid: :meth:`input_shape`).

        Returns:
            One :class:`~edue.prediction.Prediction` per image, at the image's own size.
        """
        preds: list[Prediction] = self.predict_batch_with_features(  # type: ignore[attr-defined]
            images, case_ids, None, spacing
        )[0]
        return preds

    def predict(
        self,
        image: np.ndarray | torch.Tensor,
        case_id: str | None = None,
        spacing: Sequence[float] | None = None,
    ) -> Prediction:
        """One image ``[C, *sp]`` (voxel ``spacing``, if known) predicted alone: its
        :class:`~edue.prediction.Prediction`."""
        return self.predict_batch([image], [case_id], spacing)[0]
