"""Hooks into a training run: what tests, benchmarks and users attach to a
:class:`~edue.engine.training.trainer.Trainer` instead of patching it.

Subclass :class:`TrainingCallback`, override the hooks you need and pass instances as
``Trainer(config, callbacks=[...])`` or ``train(config, callbacks=[...])``. Hooks run on
every rank, in the order given. A hook may stop the run as a signal would
(:meth:`Trainer.request_stop <edue.engine.training.trainer.Trainer.request_stop>`:
``last.pt`` is saved and ``KeyboardInterrupt`` raised) or raise its own exception (the
run stops where it is; nothing is saved).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edue.engine.training.trainer import Trainer


@dataclass(frozen=True)
class StepRecord:
    """One optimisation step, as :meth:`TrainingCallback.on_step_end` sees it.

    Attributes:
        loss: the batch's loss.
        parts: the loss's named parts (the method's ``loss`` dictionary).
        seconds: wall-clock seconds of the step (transfer, forward, backward, update).
        transfer_seconds: of which moving the batch to the device.
        batch_size: images (or patches) in the batch.
    """

    loss: float
    parts: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    transfer_seconds: float = 0.0
    batch_size: int = 0


class TrainingCallback:
    """Base class of training hooks; every hook does nothing by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of :meth:`Trainer.fit` (also of a resumed run)."""

    def on_step_start(self, trainer: Trainer, batch: dict[str, Any]) -> None:
        """Before a step; ``trainer.global_step`` counts the steps already done."""

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        """After a step's update, with the counters already advanced
        (``trainer.global_step`` includes this step) and before a periodic checkpoint
        (``train.checkpoint_every``) is written."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After an epoch's validation and checkpoints, with its ``log.jsonl`` record."""
