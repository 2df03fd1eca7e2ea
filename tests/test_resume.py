"""Interruption and resume: a real SIGKILL mid-epoch, and a kill during a checkpoint write."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


def _train_child(run: Path, kill_step: int | None = None, kill_on_save: int | None = None):
    """Train in a child process that SIGKILLs itself at a step or inside a checkpoint write."""
    script = f"""
        import os, signal, torch
        from edue.engine import train as train_module
        kill_step, kill_on_save = {kill_step!r}, {kill_on_save!r}
        original_step = train_module.Trainer._step
        def step(self, batch):
            out = original_step(self, batch)
            if kill_step is not None and self.global_step + 1 == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        train_module.Trainer._step = step
        real_save, saves = torch.save, [0]
        def save(obj, f, *args, **kwargs):
            saves[0] += 1
            if kill_on_save is not None and saves[0] == kill_on_save:
                with open(f, "wb") as fh:
                    fh.write(b"PK\\x03\\x04 half a checkpoint")
                    fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f, *args, **kwargs)
        torch.save = save
        from edue.cli import main
        main(["train", *{RESUME_OVERRIDES!r}, "--out", {str(run)!r}])
    """
    return _run_child(script)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    reference = tmp_path / "reference"
    assert _train_child(reference).returncode == 0
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
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = _train_child(run, kill_on_save=3)
    assert result.returncode == -9
    state = load_checkpoint(run / "last.pt")  # the previous one, intact
    assert state["global_step"] == 2
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".last.pt")]
    assert leftovers, "the half-written temporary file should be the only casualty"
