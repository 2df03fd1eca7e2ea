"""Interruption and resume: a real SIGKILL mid-epoch, and a kill during a checkpoint write."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edue.engine.checkpoint import load_checkpoint

RESUME_OVERRIDES = [
    "data.format=synthetic",
    "data.options={size: 32}",
    "data.split={train: 16, val: 4, test: 0}",
    "model.channels=[4, 8, 16]",
    "method.name=mc_dropout",  # dropout draws from the global RNG: its state must resume too
    "train.epochs=3",
    "train.batch_size=4",
    "train.device=cpu",
    "train.deterministic=true",
    "train.threads=1",
    "train.checkpoint_every=1",
    "data.augment=true",  # seeded flips: their generator must resume too
    "data.cache=disk",  # prepared cases read back from memory-mapped files
]


def _run_child(script: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _train_child(
    run: Path,
    kill_step: int | None = None,
    kill_on_save: int | None = None,
    snapshots: Path | None = None,
):
    """Train in a child process that SIGKILLs itself at a step or inside a checkpoint write.

    With ``snapshots``, each completed ``torch.save`` also writes what it saved to
    ``snapshots/save<n>.pt`` (a copy taken at save time, before training moves on).
    """
    script = f"""
        import os, signal, torch
        from pathlib import Path
        from edue.engine.training import trainer as train_module
        kill_step, kill_on_save = {kill_step!r}, {kill_on_save!r}
        snapshots = {str(snapshots) if snapshots else None!r}
        from edue.engine.training.callbacks import TrainingCallback
        class KillAfterStep(TrainingCallback):  # before that step's periodic checkpoint
            def on_step_end(self, trainer, step):
                if kill_step is not None and trainer.global_step == kill_step:
                    os.kill(os.getpid(), signal.SIGKILL)
        real_save, saves = torch.save, [0]
        def save(obj, f, *args, **kwargs):
            saves[0] += 1
            if kill_on_save is not None and saves[0] == kill_on_save:
                with open(f, "wb") as fh:
                    fh.write(b"PK\\x03\\x04 half a checkpoint")
                    fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if snapshots is not None:
                Path(snapshots).mkdir(parents=True, exist_ok=True)
                real_save(obj, Path(snapshots) / f"save{{saves[0]}}.pt")
            real_save(obj, f, *args, **kwargs)
        torch.save = save
        if kill_step is None:
            from edue.cli import main
            raise SystemExit(main(["train", *{RESUME_OVERRIDES!r}, "--out", {str(run)!r}]))
        from edue.config import load_config
        from edue.engine.training.trainer import train
        config = load_config(None, [*{RESUME_OVERRIDES!r}, "out_dir={run}"])
        train(config, callbacks=[KillAfterStep()])
    """
    return _run_child(script)


def _assert_same(a: object, b: object, where: str = "checkpoint") -> None:
    """``a`` equals ``b`` tensor for tensor (dtype, shape, values) and value for value."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    reference = tmp_path / "reference"
    trained = _train_child(reference)
    assert trained.returncode == 0, trained.stderr[-2000:]
    killed = tmp_path / "killed"
    # 4 steps per epoch: step 6 is in the middle of epoch 2
    result = _train_child(killed, kill_step=6)
    assert result.returncode == -9, result.stderr[-2000:]
    state = load_checkpoint(killed / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    resumed = _run_child(f"""
        from edue.cli import main
        raise SystemExit(main(["train", "--resume", {str(killed)!r}]))
    """)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(reference), _weights(killed)
    assert load_checkpoint(killed / "last.pt")["epoch"] == 3
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    run, saved = tmp_path / "run", tmp_path / "saved"
    # saves 1 and 2 are last.pt after steps 1 and 2; the third is killed half-written
    result = _train_child(run, kill_on_save=3, snapshots=saved)
    assert result.returncode == -9, result.stderr[-2000:]
    assert sorted(p.name for p in saved.iterdir()) == ["save1.pt", "save2.pt"]
    state = load_checkpoint(run / "last.pt")  # the previous one: loads and passes its hash
    assert state["global_step"] == 2 and (state["epoch"], state["step_in_epoch"]) == (0, 2)
    before = torch.load(saved / "save2.pt", map_location="cpu", weights_only=True)
    _assert_same(state, before)  # every tensor and value exactly as saved before the kill
    leftovers = [p for p in run.iterdir() if p.name.startswith(".last.pt")]
    assert len(leftovers) == 1, "the half-written temporary file should be the only casualty"
    assert leftovers[0].read_bytes() == b"PK\x03\x04 half a checkpoint"
