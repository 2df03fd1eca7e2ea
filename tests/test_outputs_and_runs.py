"""Nothing overwritten, nothing half-done: a table of bad outputs and bad inputs per
command, each ending in one line and exit status 2 with every earlier file unchanged;
runs never silently replaced, locked against a second writer; resume honouring what may
change; outputs that mirror a dataset's tree."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edue.cli import main
from edue.engine.checkpoint import load_checkpoint
from edue.engine.run_folder import LOCK_NAME, folder_lock
from tests.conftest import TINY_OVERRIDES

ROOT = os.geteuid() == 0


def _hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _png(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def world(tiny_run: Path, tmp_path: Path) -> dict[str, Path]:
    """A run (copied), an input folder, a file, a folder under a file."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    inputs = tmp_path / "scans"
    _png(inputs / "a.png")
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    return {"run": run, "inputs": inputs, "file": afile, "tmp": tmp_path}


def _bad_outputs(w: dict[str, Path]) -> list[tuple[str, Path, str]]:
    """(label, --out, expected words) of outputs no command may write to."""
    return [
        ("a file", w["file"], "is an existing file"),
        ("under a file", w["file"] / "x", "is a file"),
        ("in /proc", Path("/proc/edue-x"), "cannot be created"),
    ]


COMMANDS = {
    "predict": lambda w, out: ["predict", str(w["run"]), str(w["inputs"]), "--out", str(out)],
    "evaluate": lambda w, out: ["evaluate", str(w["run"]), "--out", str(out)],
    "calibrate": lambda w, out: ["calibrate", str(w["run"]), "--out", str(out / "cal.json")],
    "train": lambda w, out: ["train", *TINY_OVERRIDES, "--out", str(out)],
    "data synth": lambda w, out: ["data", "synth", "--out", str(out), "--n", "2", "--size", "32"],
    "compare": lambda w, out: ["compare", str(w["run"]), "--out", str(out)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_outputs_are_one_line_before_any_work(world, capsys, command):
    before = _hashes(world["tmp"])
    for label, out, expected in _bad_outputs(world):
        if command == "calibrate" and label == "a file":
            out = world["tmp"]  # calibrate writes a file: a folder given as its path
            argv = ["calibrate", str(world["run"]), "--out", str(out)]
            expected = "is an existing folder"
        else:
            argv = COMMANDS[command](world, out)
        assert main(argv) == 2, (command, label)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edue: error: "), (command, label, err)
        assert expected in err[0], (command, label, err[0])
        assert "Traceback" not in err[0]
    assert _hashes(world["tmp"]) == before  # nothing that existed was changed


@pytest.mark.skipif(
    ROOT, reason="root writes into read-only folders: permission bits do not stop it"
)
def test_a_read_only_output_folder_is_refused(world, capsys):  # pragma: no cover - not root
    locked = world["tmp"] / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(COMMANDS["evaluate"](world, locked / "eval")) == 2
        assert "cannot be created" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_predicting_into_the_input_folder_is_refused(world, capsys):
    before = _hashes(world["tmp"])
    for out in (world["inputs"], world["inputs"] / "predictions"):
        argv = ["predict", str(world["run"]), str(world["inputs"]), "--out", str(out)]
        assert main(argv) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert _hashes(world["tmp"]) == before


def test_a_finished_run_is_never_replaced_silently(world, capsys):
    run = world["run"]
    before = _hashes(run)
    argv = ["train", *TINY_OVERRIDES, "--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]
    assert _hashes(run) == before
    # --overwrite moves the old run aside (kept whole), then trains anew
    assert main([*argv, "--overwrite", "train.epochs=1"]) == 0
    aside = [p for p in run.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and _hashes(aside[0]) == before
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # a fresh log, not appended
    assert not (run / LOCK_NAME).exists()  # released


def test_a_dataset_folder_is_never_replaced_silently(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["data", "synth", "--out", str(out), "--n", "2", "--size", "32"]
    assert main(argv) == 0
    before = _hashes(out)
    assert main([*argv, "--seed", "1"]) == 2
    assert "holds a dataset" in capsys.readouterr().err
    assert _hashes(out) == before
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "dataset.json").read_text())["name"].endswith("seed1")


def test_a_locked_run_refuses_a_second_writer_and_a_stale_lock_is_taken_over(world, capsys):
    run = world["run"]
    lock = run / LOCK_NAME
    # a live process (this one's parent) holds the lock
    lock.write_text(
        json.dumps(
            {"pid": os.getppid(), "host": os.uname().nodename, "started": "t", "command": "x"}
        )
    )
    assert main(["train", "--resume", str(run), "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "another edue process" in err and str(os.getppid()) in err
    # a dead process's lock is stale: taken over with a warning, released after
    dead = 2**22 + 12345
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    lock.write_text(json.dumps({"pid": dead, "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match="stale lock"), folder_lock(run):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_resume_honours_what_may_change_and_refuses_what_would_change_the_result(world, capsys):
    run = world["run"]
    done = load_checkpoint(run / "last.pt")["epoch"]
    before = _hashes(run)
    for override, key in [
        ("model.channels=[4, 8]", "model.channels"),
        ("method.name=plain", "method.name"),
        ("train.seed=5", "train.seed"),
        ("train.lr=0.5", "train.lr"),
        ("data.split_seed=3", "data.split_seed"),
    ]:
        assert main(["train", "--resume", str(run), override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--resume: {key} = " in err[0], err
    assert main(["train", "--resume", str(run), f"train.epochs={done - 1}"]) == 2
    assert "below the" in capsys.readouterr().err
    assert _hashes(run) == before
    # a longer schedule into another folder: the run is copied, continued there, and
    # the original is left as it was
    moved = world["tmp"] / "longer"
    argv = ["train", "--resume", str(run), f"train.epochs={done + 1}", "--out", str(moved)]
    assert main([*argv, "--device", "cpu"]) == 0
    assert _hashes(run) == before
    log = [json.loads(line) for line in (moved / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, done + 2))
    state = load_checkpoint(moved / "last.pt")
    assert state["epoch"] == done + 1 and state["finished"]
    assert state["config"]["train"]["epochs"] == done + 1
    assert state["config"]["out_dir"] == str(moved)
    # the schedule was stretched: the resumed epoch's rate is the new cosine's
    lr, epochs = state["config"]["train"]["lr"], done + 1
    expected = 0.05 * lr + 0.95 * lr * (1 + np.cos(np.pi * (done + 1) / epochs)) / 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected, rel=1e-6)


def test_a_run_whose_data_moved_resumes_with_the_new_root(tmp_path):
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), "--n", "14", "--size", "32"]) == 0
    run = tmp_path / "run"
    common = [
        "data.format=folder",
        "data.split={train: 8, val: 3, test: 3}",
        "model.channels=[4, 8, 16]",
        "train.batch_size=4",
        "--device",
        "cpu",
    ]
    assert main(["train", f"data.root={data}", *common, "train.epochs=1", "--out", str(run)]) == 0
    moved = tmp_path / "moved"
    data.rename(moved)
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 2  # its data is gone
    assert main(["train", "--resume", str(run), f"data.root={moved}", "train.epochs=2"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_resumed_epoch_logs_the_whole_epoch_average(tmp_path, monkeypatch):
    from edue.config import load_config
    from edue.engine.training.callbacks import TrainingCallback
    from edue.engine.training.trainer import Trainer, train

    config = load_config(
        None, [*TINY_OVERRIDES, "train.epochs=1", "train.batch_size=2", f"out_dir={tmp_path}"]
    )
    whole = Trainer(config)
    whole.setup()
    whole.fit()
    expected = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["train/loss"]
    # the same run interrupted after three of its six steps, then resumed
    for name in ("log.jsonl", "last.pt", "best.pt"):
        (tmp_path / name).unlink()

    class StopAfterThirdStep(TrainingCallback):  # as Ctrl-C during the third step
        def on_step_start(self, trainer: Trainer, batch: object) -> None:
            if trainer.global_step == 2:
                trainer.request_stop()

    first = Trainer(config, callbacks=[StopAfterThirdStep()])
    first.setup()
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert load_checkpoint(tmp_path / "last.pt")["epoch_count"] == 3
    train(None, resume=tmp_path)
    logged = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["train/loss"]
    assert logged == pytest.approx(expected, rel=1e-6)


def test_a_dataset_in_the_project_layout_predicts_in_one_call(world, tmp_path):
    data = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(data), "--n", "3", "--size", "32"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(world["run"]), str(data), "--out", str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    names = sorted(e["output"] for e in summary["predictions"])
    cases = sorted(p.name for p in data.iterdir() if p.is_dir())
    assert names == [f"{c}/image" for c in cases]  # the raters' masks are not inputs
    for case in cases:
        assert (out / case / "image.npz").is_file()
        assert (out / case / "image_probability_disc.png").is_file()


def test_bad_files_are_one_line(world, tmp_path, capsys):
    run = world["run"]
    # a non-UTF-8 configuration
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  epochs: \xff\xfe\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    # dataset.json as a list, and structures as a string
    ds = tmp_path / "ds"
    ds.mkdir()
    for content, expected in [
        ("[1, 2]", "got a JSON list"),
        ('{"structures": "disc"}', "structures = 'disc': Input should be a valid list"),
        ('{"structures": ["disc"], "labels": {"disc": ["1"]}}', "labels.disc"),
    ]:
        (ds / "dataset.json").write_text(content)
        assert main(["data", "check", str(ds)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "dataset.json" in err[0], err
    # a checkpoint without weights, and one from a newer major version
    state = load_checkpoint(run / "best.pt")
    no_model = {k: v for k, v in state.items() if k not in ("model", "weights_sha256")}
    torch.save(no_model, tmp_path / "nomodel.pt")
    newer = dict(state, edue_version="99.0.0")
    torch.save(newer, tmp_path / "newer.pt")
    for name, expected in [("nomodel.pt", "no 'model' entry"), ("newer.pt", "newer major")]:
        argv = ["evaluate", str(tmp_path / name), "--out", str(tmp_path / "e")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and name in err[0], err
    other_minor = dict(state, edue_version="0.0.1")
    torch.save(other_minor, tmp_path / "minor.pt")
    with pytest.warns(UserWarning, match="written by edue 0.0.1"):
        load_checkpoint(tmp_path / "minor.pt")
    # calibration.json with a numeric string and a count that is not a number
    assert main(["calibrate", str(run), "--out", str(tmp_path / "c.json")]) == 0
    good = json.loads((tmp_path / "c.json").read_text())
    for field, value in [("alpha", "0.1"), ("n_calibration", "four")]:
        (tmp_path / "c.json").write_text(json.dumps({**good, field: value}))
        argv = ["predict", str(run), str(world["inputs"]), "--out", str(tmp_path / "p")]
        assert main([*argv, "--calibration", str(tmp_path / "c.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0] and "c.json" in err[0], err


def test_calibrations_in_one_folder_keep_their_own_gates(world, tmp_path):
    run = world["run"]
    cal = tmp_path / "cal"
    assert main(["calibrate", str(run), "--out", str(cal / "a.json")]) == 0
    assert main(["calibrate", str(run), "--split", "test", "--out", str(cal / "b.json")]) == 0
    assert (cal / "a_gate.npz").is_file() and (cal / "b_gate.npz").is_file()
    from edue.engine.referral.calibration import Calibration

    assert Calibration.load(cal / "a.json").split == "val"  # its gate still matches
    assert Calibration.load(cal / "b.json").split == "test"


def test_evaluating_a_split_of_unreadable_cases_is_one_line(world, tmp_path, capsys):
    data = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(data), "--n", "3", "--size", "32"]) == 0
    for image in data.glob("*/image.png"):
        image.write_bytes(b"broken")
    argv = ["evaluate", str(world["run"]), "--data", str(data), "--format", "folder", "--all"]
    assert main([*argv, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "skipped as unreadable" in err[-1] and err[-1].startswith("edue: error: ")


def test_a_channels_first_npy_reads_as_channels_first(tmp_path):
    from edue.io import read_image

    array = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    np.save(tmp_path / "cf.npy", array)
    np.save(tmp_path / "cl.npy", np.moveaxis(array, 0, -1))
    assert np.array_equal(read_image(tmp_path / "cf.npy")[0], array)
    assert np.array_equal(read_image(tmp_path / "cl.npy")[0], array)
