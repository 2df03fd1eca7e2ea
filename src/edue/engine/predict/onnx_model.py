"""An exported ONNX model run by ONNX Runtime, as ``edue predict`` runs a checkpoint.

``edue predict model.onnx …`` reads the graph and its ``model.json`` sidecar (written
by ``edue export --format onnx``) and predicts with the same steps as
:class:`~edue.engine.inference.predictor.Predictor`: the same image checks, the same
resampling onto the training grid and back (:mod:`edue.engine.inference.grid`), and the
same :class:`~edue.prediction.Prediction` (members, mean, variance, uncertainty, SV),
so the files, ``predictions.json`` and the referral decisions are those of the
checkpoint's run. The graph predicts a whole image in one pass: a volume larger than
the training window is not cut into windows (the checkpoint's Predictor does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edue.engine.inference.grid import (
    OnTrainingGrid,
    TrainingGrid,
    from_grid,
    pixel_scale,
    to_grid,
)
from edue.engine.inference.predictor import checked_image
from edue.engine.predict.export import FEATURES_NAME, OUTPUT_NAMES, SIDECAR, onnx_session
from edue.errors import CheckpointError
from edue.io import read_json
from edue.prediction import Prediction

#: sidecar keys the runner needs
_REQUIRED = ("method", "structures", "in_channels", "spatial_dims", "score", "members")


def is_onnx_model(path: str | Path) -> bool:
    """Whether ``path`` names an exported ONNX model (a ``.onnx`` file)."""
    return str(path).lower().endswith(".onnx")


class OnnxPredictor(OnTrainingGrid):
    """An exported ONNX model with the interface ``edue predict`` uses.

    Args:
        path: the ``model.onnx`` file; its ``model.json`` sidecar must lie beside it.

    Raises:
        CheckpointError: the file or its sidecar is missing, unreadable or incomplete.
        ConfigError: ``onnxruntime`` is not installed (names the ``edue[onnx]`` extra).
    """

    n_passes = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError("ONNX model not found", self.path)
        meta_path = self.path.parent / SIDECAR
        if not meta_path.is_file():
            raise CheckpointError(
                f"no {SIDECAR} beside the ONNX model (edue export writes it; it says which "
                "structures, channels and training grid the model has)",
                self.path,
            )
        meta = read_json(meta_path, "the exported model's sidecar")
        lacking = [k for k in _REQUIRED if not isinstance(meta, dict) or k not in meta]
        if lacking:
            raise CheckpointError(f"the sidecar lacks {', '.join(lacking)}", meta_path)
        self.meta: dict[str, Any] = meta
        try:
            self.session = onnx_session(self.path)
        except Exception as exc:  # onnxruntime's own errors on a corrupt or foreign file
            if type(exc).__name__ == "ConfigError":
                raise
            raise CheckpointError(f"not a readable ONNX model ({exc})", self.path) from None
        self.structures = tuple(str(s) for s in meta["structures"])
        self.in_channels = int(meta["in_channels"])
        self.spatial_dims = int(meta["spatial_dims"])
        self.score = str(meta["score"])
        self.separate_segmentation = bool(meta.get("separate_segmentation", False))
        self.weights_sha256 = meta.get("weights_sha256")
        self.grid = TrainingGrid.from_dict(meta.get("training_grid"))

    @property
    def name(self) -> str:
        """The exported method's name."""
        return str(self.meta["method"])

    def check_image(self, image: np.ndarray | torch.Tensor, where: str = "image") -> torch.Tensor:
        """Validate an image ``[C, *sp]`` against the model (as the Predictor does)."""
        return checked_image(image, self.spatial_dims, self.in_channels, where)

    def check_feature_modules(self, names: Sequence[str]) -> None:
        """Refuse feature modules the graph does not give (a gate fitted on another model).

        Raises:
            CheckpointError: a module not among the sidecar's ``features.modules``.
        """
        given = (self.meta.get("features") or {}).get("modules") or []
        missing = [n for n in names if n not in given]
        if missing:
            raise CheckpointError(
                f"the ONNX graph gives no features of {', '.join(missing)} "
                f"(it gives {', '.join(given) or 'none'})",
                self.path,
            )

    def _feature_columns(self, names: Sequence[str]) -> list[int]:
        """The columns of the graph's ``features`` output holding modules ``names``."""
        info = self.meta["features"]
        starts = np.cumsum([0, *info["channels"]])
        columns: list[int] = []
        for name in names:
            k = info["modules"].index(name)
            columns.extend(range(int(starts[k]), int(starts[k + 1])))
        return columns

    def predict_batch_with_features(
        self,
        images: Sequence[np.ndarray | torch.Tensor],
        case_ids: Sequence[str | None] | None = None,
        tap: Sequence[str] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> tuple[list[Prediction], torch.Tensor | None]:
        """:meth:`predict_batch`, also returning the pooled outputs of the modules ``tap``
        ``[B, ΣC]`` from the same run (the graph's ``features`` output; ``None`` without
        ``tap``)."""
        ids = list(case_ids or [None] * len(images))
        tensors = [
            self.check_image(img, str(cid or "image")) for img, cid in zip(images, ids, strict=True)
        ]
        shape = tuple(tensors[0].shape[1:])
        batch = to_grid(tensors, self.input_shape(shape, spacing))
        names = [*OUTPUT_NAMES, FEATURES_NAME] if tap else list(OUTPUT_NAMES)
        outputs = dict(zip(names, self.session.run(names, {"image": batch.numpy()}), strict=True))
        features = None
        if tap:
            self.check_feature_modules(tap)
            pooled = torch.from_numpy(outputs[FEATURES_NAME])
            features = pooled[:, self._feature_columns(tap)]
        members = torch.from_numpy(outputs["members"]).transpose(0, 1)  # [S, B, K, *size]
        mean = torch.from_numpy(outputs["mean"])[None]  # [1, B, K, *size]
        size = tuple(batch.shape[2:])
        stack = from_grid(torch.cat([members, mean]), shape)
        scale = pixel_scale(size, shape)
        preds = [
            Prediction(
                stack[:-1, i].contiguous(),
                case_id=ids[i],
                method=self.name,
                structures=self.structures,
                segmentation=stack[-1, i].contiguous() if self.separate_segmentation else None,
                score=self.score,
                pixel_scale=scale,
            )
            for i in range(len(tensors))
        ]
        return preds, features
