"""The training loop: seeded, resumable, distributed-ready, checkpointing atomically.

A run folder holds ``config.yaml`` (the resolved configuration), ``split.json`` (case
ids per subset), ``log.jsonl`` (one line per epoch: losses and validation metrics),
``last.pt`` (every epoch and on interruption) and ``best.pt`` (lowest validation loss).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from edue.config import Config, save_config
from edue.data.pipeline import (
    PreparedData,
    PreparedSource,
    collate_groups,
    prepare_data,
)
from edue.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from edue.engine.inference.grid import TrainingGrid
from edue.engine.runtime import Runtime, setup_runtime, teardown_runtime
from edue.engine.training.callbacks import StepRecord, TrainingCallback
from edue.errors import TrainingDiverged
from edue.io import write_json
from edue.methods import Method, build_method, get_method

log = logging.getLogger("edue.train")


def learning_rate(config: Config) -> float:
    """The run's peak learning rate: ``train.lr × method.lr_scale``."""
    return float(config.train.lr * config.method.lr_scale)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch (as ``log.jsonl`` records it): losses, validation, seconds."""
    figures = [
        f"{key.removeprefix('train/').removeprefix('val/')}"
        f"{' (val)' if key.startswith('val/') else ''} {value:.4g}"
        for key, value in record.items()
        if key.startswith(("train/", "val/")) and isinstance(value, float)
    ]
    return (
        f"epoch {record['epoch']}/{epochs}: " + ", ".join(figures) + f" ({record['seconds']:.1f} s)"
    )


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded by rank, that can start mid-epoch.

    The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches
    as an uninterrupted one.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch's permutation and the first sample (per rank) to yield."""
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        # Interleaved equal shards (as DistributedSampler): every rank steps together, and
        # the union of the ranks' i-th batches is the single-process i-th batch.
        per_rank = self.size // self.world_size
        return order[: per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return self.size // self.world_size - self.start


class _Interrupted(Exception):
    pass


class Trainer:
    """Trains one method as configured.

    Args:
        config: the run configuration (``out_dir`` is the run folder).
        runtime: device / precision / distribution; created from the config when None.
        callbacks: hooks called at the start, around each step and after each epoch
            (:mod:`edue.engine.training.callbacks`).
    """

    def __init__(
        self,
        config: Config,
        runtime: Runtime | None = None,
        callbacks: Sequence[TrainingCallback] = (),
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.runtime = runtime or setup_runtime(config.train.device, config.train.amp)
        self.run_dir = Path(config.out_dir)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # batches done in the current epoch
        self.global_step = 0
        self.best_val = math.inf
        self.best_epoch = 0  # the epoch of best_val (early stopping counts from it)
        self.finished = False  # reached train.epochs or stopped early
        # running sums of the epoch's training figures (kept in checkpoints, so that a
        # resumed epoch's averages cover the whole epoch)
        self.epoch_totals: dict[str, float] = {}
        self.epoch_count = 0
        self._stop_signal: int | None = None
        self._transfer_seconds = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self, resume_state: dict[str, Any] | None = None) -> None:
        """Data, model, optimiser and random states (fresh or from a checkpoint)."""
        cfg, rt = self.config, self.runtime
        _seed_everything(cfg.train.seed + rt.rank)
        self.data: PreparedData = prepare_data(cfg.data)
        self.subsets: dict[str, PreparedSource] = self.data.subsets
        first = self.subsets["train"].load(0)
        self.data_info: dict[str, Any] = {
            "in_channels": int(first.image.shape[0]),
            "structures": list(first.structures),
            "spatial_dims": first.spatial_dims,
            "image_size": list(first.spatial_shape),
            # the training resolution travels with the model (prediction resamples to it)
            "grid": TrainingGrid.from_source(self.subsets["train"]).to_dict(),
        }
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.method: Method = build_method(
            cfg, self.data_info["in_channels"], len(first.structures), first.spatial_dims
        ).to(rt.device)
        if cfg.train.channels_last and first.spatial_dims == 2:
            self.method = self.method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model: torch.nn.Module = self.method
        if rt.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
            )
        if cfg.train.compile:
            self.model = torch.compile(  # type: ignore[assignment]
                self.model, backend=cfg.train.compile_backend
            )
        lr = learning_rate(cfg)
        self.optimizer = torch.optim.Adam(
            self.method.parameters(), lr=lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=cfg.train.epochs, eta_min=lr * 0.05
        )
        self.scaler = rt.grad_scaler()
        self.rater_generator = torch.Generator(device=rt.device).manual_seed(
            cfg.train.seed * 7919 + rt.rank
        )
        self.train_dataset = self.data.training_dataset(cfg.train.seed)
        self.sampler = EpochSampler(
            len(self.subsets["train"]), cfg.train.seed, rt.rank, rt.world_size
        )
        if resume_state is not None:
            self._restore(resume_state)

    def _restore(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.best_val = int(state["global_step"]), float(state["best_val"])
        self.best_epoch = int(state.get("best_epoch", self.epoch))
        self.finished = bool(state.get("finished", False))
        self.epoch_totals = {str(k): float(v) for k, v in state.get("epoch_totals", {}).items()}
        self.epoch_count = int(state.get("epoch_count", 0))
        recorded_epochs = int(state["config"]["train"]["epochs"])
        if self.config.train.epochs != recorded_epochs:
            self._extend_schedule()
        set_rng_state(state["rng"])
        self.rater_generator.set_state(state["rater_generator"])
        if self.train_dataset.transform is not None and state.get("transforms"):
            self.train_dataset.transform.set_state(state["transforms"])  # type: ignore[attr-defined]

    def _extend_schedule(self) -> None:
        """A resume with a larger ``train.epochs``: the cosine schedule is stretched to
        the new length — from the resumed epoch on, the learning rate follows the cosine
        over the new total (from ``train.lr`` down to 5 % of it), and the run is no
        longer finished unless its patience ran out."""
        cfg = self.config.train
        lr = learning_rate(self.config)
        self.scheduler.T_max = cfg.epochs  # type: ignore[attr-defined]
        eta_min = lr * 0.05
        t = self.scheduler.last_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / cfg.epochs)) / 2
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # type: ignore[attr-defined]
        patience = cfg.patience
        out_of_patience = bool(patience) and self.epoch - self.best_epoch >= patience
        self.finished = self.epoch >= cfg.epochs or out_of_patience

    # ------------------------------------------------------------------ loop
    def fit(self) -> Path:
        """Train to ``train.epochs``; returns the run folder."""
        cfg, rt = self.config, self.runtime
        if rt.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            write_json(self.run_dir / "split.json", self.data.split_record())
        dataset = self.train_dataset
        repeats = getattr(dataset.transform, "repeats", 1)  # patches per loaded case
        per_rank_batch = max(1, cfg.train.batch_size // rt.world_size // repeats)
        workers = cfg.data.num_workers
        loader = DataLoader(
            dataset,
            batch_size=per_rank_batch,
            sampler=self.sampler,
            collate_fn=collate_groups,
            num_workers=workers,
            pin_memory=rt.device.type == "cuda",
            drop_last=False,
            persistent_workers=workers > 0,  # no re-fork (and re-opened cache) per epoch
            prefetch_factor=4 if workers > 0 else None,
            # its own generator: iterating must not draw from the global RNG (resumes)
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        previous = self._install_signal_handlers()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        try:
            while self.epoch < cfg.train.epochs and not self.finished:
                started = time.perf_counter()
                self.sampler.set_epoch(self.epoch, self.step_in_epoch * per_rank_batch)
                train_stats = self._train_epoch(loader)
                self.scheduler.step()
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                val_stats = self.validate()
                self._end_epoch(train_stats, val_stats, time.perf_counter() - started)
        except _Interrupted:
            if rt.is_main:
                self.save("last.pt")
            raise KeyboardInterrupt from None
        finally:
            _restore_signal_handlers(previous)
        return self.run_dir

    def _train_epoch(self, loader: DataLoader) -> dict[str, float]:
        cfg, rt = self.config, self.runtime
        self.model.train()
        if self.step_in_epoch == 0:  # else: a resumed epoch goes on with its sums
            self.epoch_totals, self.epoch_count = {}, 0
        totals = self.epoch_totals
        progress = _progress(loader, f"epoch {self.epoch + 1}/{cfg.train.epochs}", rt.is_main)
        for batch in progress:
            for callback in self.callbacks:
                callback.on_step_start(self, batch)
            started = time.perf_counter()
            loss, parts = self._step(batch)
            seconds = time.perf_counter() - started
            self.epoch_count += 1
            for key, value in {"loss": loss, **parts}.items():
                totals[key] = totals.get(key, 0.0) + value
            if rt.is_main and hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss:.4f}")
            self.step_in_epoch += 1
            self.global_step += 1
            if self.callbacks:
                record = StepRecord(
                    loss, parts, seconds, self._transfer_seconds, len(batch["image"])
                )
                for callback in self.callbacks:
                    callback.on_step_end(self, record)
            every = cfg.train.checkpoint_every
            if rt.is_main and every and self.global_step % every == 0:
                self.save("last.pt")
            if self._stop_signal is not None:
                raise _Interrupted
        return {f"train/{k}": v / max(self.epoch_count, 1) for k, v in totals.items()}

    def _step(self, batch: dict[str, Any]) -> tuple[float, dict[str, float]]:
        rt = self.runtime
        started = time.perf_counter()
        batch = _to_device(batch, rt.device)
        self._transfer_seconds = time.perf_counter() - started
        image = batch["image"]
        if self.config.train.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            logits = self.model(image)
        loss, parts = self.method.loss(logits.float(), batch, self.rater_generator)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"non-finite loss ({float(loss.detach())}) at epoch {self.epoch + 1}, batch "
                f"{self.step_in_epoch + 1}; the last good checkpoint is kept in {self.run_dir}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), parts

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss, soft Dice and SV rank correlation per structure."""
        subset = self.subsets.get("val")
        if subset is None or len(subset) == 0:
            return {}
        from edue.engine.training.validation import validation_metrics

        return validation_metrics(
            self.method,
            self.model,
            subset,
            self.runtime,
            self.config.train.batch_size,
            self.config.train.seed,
        )

    def _end_epoch(
        self, train_stats: dict[str, float], val_stats: dict[str, float], seconds: float
    ) -> None:
        improved = self._track(val_stats.get("val/loss", train_stats.get("train/loss", math.inf)))
        record = {
            "epoch": self.epoch,
            "seconds": round(seconds, 3),
            "lr": self.optimizer.param_groups[0]["lr"],
            **train_stats,
            **val_stats,
        }
        if not self.runtime.is_main:
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            return
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info(epoch_line(record, self.config.train.epochs))
        if self.finished and self.epoch < self.config.train.epochs:
            log.info(
                f"early stop after epoch {self.epoch}: no lower validation loss for "
                f"{self.config.train.patience} epochs (best: epoch {self.best_epoch})"
            )
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)

    def request_stop(self) -> None:
        """Stop as ``SIGINT`` would, after the current step: ``last.pt`` is saved and
        :meth:`fit` raises ``KeyboardInterrupt`` (what a callback calls to stop a run)."""
        self._stop_signal = signal.SIGINT

    def _track(self, val_loss: float) -> bool:
        """Note the best epoch and decide whether training is finished (every rank
        decides alike: the validation loss is agreed across ranks). Returns whether the
        epoch improved on the best validation loss."""
        improved = val_loss < self.best_val
        if improved:
            self.best_val, self.best_epoch = val_loss, self.epoch
        patience = self.config.train.patience
        out_of_patience = bool(patience) and self.epoch - self.best_epoch >= patience
        self.finished = self.epoch >= self.config.train.epochs or out_of_patience
        return improved

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to predict with, and to resume, this run."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
            "method": self.config.method.name,
            "config": self.config.to_dict(),
            "data": self.data_info,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "finished": self.finished,
            "epoch_totals": dict(self.epoch_totals),
            "epoch_count": self.epoch_count,
            "rng": rng_state(),
            "rater_generator": self.rater_generator.get_state(),
            "transforms": self.train_dataset.transform.get_state()  # type: ignore[attr-defined]
            if self.train_dataset.transform is not None
            else [],
        }

    def save(self, name: str) -> Path:
        """Write a checkpoint into the run folder atomically."""
        return save_checkpoint(self.run_dir / name, self.state())

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handler(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, handler)
        return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - legacy global state used by libraries
    torch.manual_seed(seed)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _progress(iterable: DataLoader, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True
    )


#: keys a resumed run may change: where the data and the run are, the device and the
#: workers, how often it checkpoints, and a longer schedule (``train.epochs``); every
#: other key would change the result, and a resume that changes one is refused
RESUMABLE_KEYS = (
    "out_dir",
    "data.root",
    "data.num_workers",
    "data.cache",
    "data.cache_dir",
    "data.cache_memory_mb",
    "data.cache_max_gb",
    "train.device",
    "train.threads",
    "train.checkpoint_every",
    "train.epochs",
)


def resume_state_path(resume: str | Path) -> Path:
    """The checkpoint a resume starts from: ``last.pt`` of a run folder, or the file."""
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def resumed_config(
    recorded: dict[str, Any],
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    epochs_done: int = 0,
) -> Config:
    """The configuration of a resumed run: the run's own, with what the user asks laid
    over it (the keys a file sets, then dotted overrides).

    Args:
        recorded: the configuration saved in the run's checkpoint.
        config_file: a YAML file whose keys are laid over the run's.
        overrides: ``key=value`` items.
        epochs_done: epochs the run has completed (``train.epochs`` may not go below).

    Raises:
        ConfigError: see :func:`check_resume`.
    """
    from edue.config import apply_overrides, config_from_dict, merge_values, read_config_file

    base = config_from_dict(recorded).to_dict()
    values = merge_values(base, read_config_file(config_file)) if config_file else base
    values = apply_overrides(copy.deepcopy(values), list(overrides or []))
    return check_resume(recorded, config_from_dict(values, str(config_file or "")), epochs_done)


def check_resume(recorded: dict[str, Any], config: Config, epochs_done: int = 0) -> Config:
    """``config`` when a run of configuration ``recorded`` may continue with it.

    Raises:
        ConfigError: a key outside :data:`RESUMABLE_KEYS` differs (named, with both
            values), or ``train.epochs`` is below the ``epochs_done`` already trained.
    """
    from edue.config import config_from_dict, flat_values
    from edue.errors import ConfigError

    before = flat_values(config_from_dict(recorded).to_dict())
    for key, value in flat_values(config.to_dict()).items():
        if before.get(key) != value and key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--resume: {key} = {value!r} differs from the run's {before.get(key)!r}; it "
                "would change the result, so the run cannot continue with it (start a new "
                "run with another --out instead)"
            )
    if config.train.epochs < epochs_done:
        raise ConfigError(
            f"--resume: train.epochs = {config.train.epochs} is below the {epochs_done} "
            "epochs the run has already trained"
        )
    return config


def train(
    config: Config | None,
    resume: str | Path | None = None,
    callbacks: Sequence[TrainingCallback] = (),
) -> Path:
    """Train as configured, or continue the run in ``resume`` exactly where it stopped.

    With ``resume``, ``config`` is the configuration to continue with (``None``: the
    run's own, saved in its checkpoint); it may differ from the run's only in
    :data:`RESUMABLE_KEYS` (:func:`resumed_config` builds one from what a user asks). A
    larger ``train.epochs`` extends the cosine schedule (docs/method.md).

    Returns:
        The run folder.

    Raises:
        ConfigError: ``config`` changes what a resume may not (:func:`check_resume`).

    ``callbacks`` are passed to the :class:`Trainer`.
    """
    state = None
    if resume is not None:
        state = load_checkpoint(resume_state_path(resume))
        done = int(state.get("epoch", 0))
        if config is None:
            config = resumed_config(state["config"], epochs_done=done)
        else:
            config = check_resume(state["config"], config, done)
    if config is None:
        raise ValueError("train() needs a configuration or a run to resume")
    trainer = Trainer(config, callbacks=callbacks)
    try:
        trainer.setup(state)
        return trainer.fit()
    finally:
        teardown_runtime(trainer.runtime)


def train_or_resume(config: Config) -> Path:
    """Train as configured into ``config.out_dir``; a finished run there is kept as it is,
    an interrupted one continues where it stopped (``last.pt``).

    Returns:
        The run folder.
    """
    last = Path(config.out_dir) / "last.pt"
    if not last.is_file():
        return train(config)
    if load_checkpoint(last).get("finished"):
        return Path(config.out_dir)
    return train(config, resume=last)


def train_method(config: Config) -> Path:
    """Train whatever the configuration names; a whole ensemble member by member.

    For a method whose members train separately (Deep Ensembles) and no
    ``method.member``, the members train one after another in ``out_dir/member_i`` and
    are gathered into ``out_dir/ensemble.pt``.

    Returns:
        The run folder.
    """
    m = config.method
    if not get_method(m.name).trains_members_separately:
        return train(config)
    from edue.engine.training.ensemble import gather_ensemble, member_config, member_seed

    if m.member is None:
        runs = [train(member_config(config, i)) for i in range(m.ensemble_size)]
        out = Path(config.out_dir)
        gather_ensemble(runs, out / "ensemble.pt")
        save_config(config, out / "config.yaml")
        return out
    # one member as its own job, in the folder the user chose
    config = copy.deepcopy(config)
    config.train.seed = member_seed(config.train.seed, m.member)
    return train(config)
