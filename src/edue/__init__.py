"""edue: expert disagreement-guided one-pass uncertainty for medical image segmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edue._version import __version__

__all__ = ["MultiRaterCase", "Prediction", "__version__", "load"]

if TYPE_CHECKING:  # pragma: no cover
    from edue.engine.inference.predictor import Predictor


def load(checkpoint: str, device: str = "cpu") -> Predictor:
    """Load a trained model for one-pass prediction.

    Args:
        checkpoint: path to a checkpoint file or a run folder.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns:
        A :class:`~edue.engine.inference.predictor.Predictor` whose ``predict(image)`` returns a
        :class:`~edue.prediction.Prediction`.
    """
    from edue.engine.inference.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device)


def __getattr__(name: str) -> Any:
    if name == "Prediction":
        from edue.prediction import Prediction

        return Prediction
    if name == "MultiRaterCase":
        from edue.data.case import MultiRaterCase

        return MultiRaterCase
    raise AttributeError(name)
