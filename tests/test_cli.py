import json

import numpy as np
import pytest
from PIL import Image

from edue.cli import main


def _png(path, size=(40, 40), channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (*size, channels) if channels > 1 else size
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(path)
    return path


def _broken(path):
    path.write_bytes(b"\x89PNG\r\n garbage")
    return path


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "predict", "evaluate", "compare", "data", "ensemble", "demo"):
        assert command in out


def test_predict_writes_every_output(tiny_run, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _png(inputs / "a.png")
    _png(inputs / "b.png", size=(24, 30), seed=1)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run), str(inputs), "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [p["input"].split("/")[-1] for p in summary["predictions"]] == ["a.png", "b.png"]
    assert set(summary["predictions"][0]["sv"]) == {"disc", "cup"}
    for name in ("a.npz", "a_overlay.png", "a_probability_disc.png", "a_uncertainty_cup.png"):
        assert (out / name).is_file(), name
    arrays = np.load(out / "b.npz")
    assert arrays["mean"].shape == (2, 24, 30)  # back at the input's own size
    assert arrays["members"].shape == (2, 2, 24, 30)
    # b was predicted on the 32² training grid: its SV counts pixels of that grid
    scale = summary["predictions"][1]["resampled"]["pixel_scale"]
    assert scale == pytest.approx(32 * 32 / (24 * 30))
    np.testing.assert_allclose(arrays["sv"], arrays["uncertainty"].sum((1, 2)) * scale, rtol=1e-5)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.png", "input not found"),
        (lambda d: _png(d / "gray.png", channels=1), "expects 3 channel"),
        (lambda d: _broken(d / "broken.png"), "cannot read file"),
    ],
)
def test_predict_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys, make, expected):
    path = make(tmp_path)
    code = main(["predict", str(tiny_run), str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and expected in err[0] and path.name in err[0]


def test_not_a_checkpoint(tmp_path, capsys):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a checkpoint at all")
    assert main(["predict", str(fake), str(_png(tmp_path / "x.png")), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "not a readable checkpoint" in err


def test_crafted_checkpoint_never_runs_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import torch

    path = tmp_path / "evil.pt"
    torch.save({"format": "edue-checkpoint", "model": {}, "payload": Evil()}, path)
    assert main(["predict", str(path), str(_png(tmp_path / "x.png")), "--out", str(tmp_path)]) == 2
    assert not marker.exists()
    assert "refused" in capsys.readouterr().err


def test_data_synth_then_train_on_folder(tmp_path, capsys):
    root = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(root), "--n", "8", "--size", "32"]) == 0
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["structures"] == ["disc", "cup"] and len(spec["cases"]) == 8
    assert len(list((root / spec["cases"][0]["id"]).glob("rater_*.png"))) == 6
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "data.format=folder",
            f"data.root={root}",
            "data.split={train: 0.5, val: 0.25, test: 0.25}",
            "model.channels=[4, 8]",
            "train.epochs=1",
            "train.batch_size=4",
            "--out",
            str(run),
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (run / "best.pt").is_file()


def test_bad_override_is_one_line(capsys):
    assert main(["train", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edue: error: train.nope: unknown key (known here: epochs, patience,")
    assert err.count("\n") == 1


def test_evaluate_poor_threshold_sets_quality_control(tiny_run, tmp_path, capsys):
    # a threshold of 1.0 makes every image poor (nothing to rank: no d-AUC), 0.0 none
    out = tmp_path / "eval"
    args = ["evaluate", str(tiny_run), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--poor", "disc=1.0", "CUP=0.0"]) == 2
    assert "--poor names CUP; the model predicts disc, cup" in capsys.readouterr().err
    assert main([*args, "--poor", "disc=1.0", "--poor", "cup=0.0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    n = metrics["n_cases"]
    assert metrics["qc_threshold/disc"] == 1.0 and metrics["qc_n_poor/disc"] == n
    assert metrics["qc_threshold/cup"] == 0.0 and metrics["qc_n_poor/cup"] == 0
    assert np.isnan(metrics["qc_d_auc/disc"])  # written as NaN: nothing to rank
    capsys.readouterr()
    assert main([*args, "--poor", "disc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "STRUCTURE=DICE" in err[0]
    # the old name still works for one release, with a notice
    assert main([*args, "--poor-threshold", "disc=1.0", "--poor-threshold", "cup=0.0"]) == 0
    assert "--poor-threshold is deprecated" in capsys.readouterr().err
    again = json.loads((out / "metrics.json").read_text())["metrics"]
    assert (again["qc_threshold/disc"], again["qc_threshold/cup"]) == (1.0, 0.0)
