"""``edue export``: ONNX and TorchScript graphs equal the Predictor's members, mean and
variance, at any batch and spatial size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edue.cli import main
from edue.config import load_config
from edue.engine.inference.predictor import Predictor
from edue.engine.predict import export as export_module
from edue.engine.predict.export import (
    OUTPUT_NAMES,
    ExportWrapper,
    export_onnx,
    export_torchscript,
    onnx_session,
    write_onnx,
    write_torchscript,
)
from edue.engine.predict.onnx_model import OnnxPredictor
from edue.errors import ConfigError
from edue.io import write_png
from edue.methods import build_method
from tests.conftest import TINY_OVERRIDES

TOL = 1e-4

VOLUME_OVERRIDES = [
    "data.format=synthetic3d",
    "data.options={size: 16, n_raters: 2}",
    "data.split={train: 2, val: 1, test: 1}",
    "model.channels=[4, 8, 16]",
    "train.epochs=1",
    "train.batch_size=2",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch EDUE run on whole 16³ synthetic volumes."""
    from edue.engine.training.trainer import train

    out = tmp_path_factory.mktemp("export_volume_run")
    return train(load_config(None, [*VOLUME_OVERRIDES, f"out_dir={out}"]))


def reference(predictor: Predictor, batch: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The Predictor's members ``[B, S, K, *sp]``, mean and variance ``[B, K, *sp]``."""
    preds = predictor.predict_batch(list(batch))
    return tuple(
        torch.stack([getattr(p, name) for p in preds]).numpy()
        for name in ("members", "mean", "variance")
    )


def max_diffs(got: tuple, want: tuple) -> list[float]:
    """Max abs difference per output (shapes must agree)."""
    out = []
    for g, w in zip(got, want, strict=True):
        g = np.asarray(g)
        assert g.shape == w.shape
        out.append(float(np.abs(g - w).max()))
    return out


@pytest.mark.parametrize("run_name", ["tiny_run", "tiny_run_any_size", "volume_run"])
def test_onnx_and_torchscript_match_the_predictor(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    predictor = Predictor.from_checkpoint(run)
    onnx_path = export_onnx(run, tmp_path / "onnx")
    ts_path = export_torchscript(run, tmp_path / "ts")
    session = onnx_session(onnx_path)
    runner = OnnxPredictor(onnx_path)
    traced = torch.jit.load(str(ts_path))
    wrapper = ExportWrapper(predictor.method, predictor.size_divisor)
    sizes = [(32, 32), (20, 27)] if predictor.spatial_dims == 2 else [(16, 16, 16), (12, 10, 14)]
    gen = torch.Generator().manual_seed(1)
    for size in sizes:
        batch = torch.rand((2, predictor.in_channels, *size), generator=gen)
        want = reference(predictor, batch)
        assert want[0].shape == (2, predictor.method.n_members, len(predictor.structures), *size)
        # edue predict's ONNX path: resampled onto the training grid and back, like the
        # checkpoint's Predictor
        assert max(max_diffs(reference(runner, batch), want)) < TOL
        if predictor.input_shape(size) != size:  # the graph alone sees the training grid
            assert run_name == "tiny_run" and size == (20, 27)
            continue
        from_onnx = session.run(list(OUTPUT_NAMES), {"image": batch.numpy()})
        with torch.no_grad():
            from_ts = tuple(t.numpy() for t in traced(batch))
            from_wrapper = tuple(t.numpy() for t in wrapper(batch))
        assert max(max_diffs(from_onnx, want)) < TOL
        assert max(max_diffs(from_ts, want)) < TOL
        assert max(max_diffs(from_onnx, from_wrapper)) < TOL
        assert float(np.abs(want[2]).max()) > 0  # a real spread, not zeros on both sides


def test_sidecar_says_what_the_model_takes_and_gives(tiny_run, tmp_path):
    import edue

    predictor = Predictor.from_checkpoint(tiny_run)
    export_onnx(tiny_run, tmp_path, opset=17)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == "onnx" and meta["file"] == "model.onnx"
    assert meta["opset"] == 17
    assert meta["method"] == "edue" and meta["score"] == predictor.method.score
    assert meta["members"] == predictor.method.n_members
    assert meta["structures"] == list(predictor.structures)
    assert meta["in_channels"] == predictor.in_channels == 3
    assert meta["spatial_dims"] == 2
    assert meta["edue_version"] == edue.__version__
    assert meta["outputs"]["members"] == ["B", "S", "K", "H", "W"]
    assert meta["input_normalisation"]["kind"] == "none"
    assert meta["size_divisor"] == predictor.size_divisor == 4
    assert meta["input_size"] == [32, 32] and meta["roi_size"] is None
    assert meta["training_grid"]["size"] == [32, 32]
    assert meta["separate_segmentation"] is (predictor.method.stack_size > meta["members"])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("plain", []),
        ("deep_supervision", []),
        ("deep_supervision_heads", []),
        ("layer_ensembles", []),
        ("deep_ensemble", []),
        ("edue", ["method.segmentation=weighted", "method.uncertainty_heads=shared"]),
        ("edue", ["method.segmentation=final", "method.uncertainty_heads=separate"]),
    ],
)
def test_every_one_pass_method_exports(name, options, tmp_path):
    config = load_config(None, [*TINY_OVERRIDES, f"method.name={name}", *options])
    torch.manual_seed(0)
    method = build_method(config, 3, 2, 2, for_training=False)
    info = {"in_channels": 3, "structures": ["a", "b"], "spatial_dims": 2}
    predictor = Predictor(method, config, info, torch.device("cpu"))
    wrapper = ExportWrapper(predictor.method, predictor.size_divisor)
    write_onnx(wrapper, torch.rand(2, 3, 16, 16), tmp_path / "m.onnx")
    write_torchscript(wrapper, torch.rand(2, 3, 16, 16), tmp_path / "m.ts")
    batch = torch.rand(2, 3, 20, 22)
    want = reference(predictor, batch)
    assert want[0].shape[1] == method.n_members
    got = onnx_session(tmp_path / "m.onnx").run(None, {"image": batch.numpy()})
    assert max(max_diffs(got, want)) < TOL
    with torch.no_grad():
        traced = tuple(t.numpy() for t in torch.jit.load(str(tmp_path / "m.ts"))(batch))
    assert max(max_diffs(traced, want)) < TOL


def test_cli_export_writes_the_files(tiny_run, tmp_path, capsys):
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        out = tmp_path / fmt
        assert main(["export", str(tiny_run), "--format", fmt, "--out", str(out)]) == 0
        assert (out / name).is_file() and (out / "model.json").is_file()
        assert json.loads((out / "model.json").read_text())["format"] == fmt
    assert "exported" in capsys.readouterr().out


def test_cli_refuses_a_sampling_method(tmp_path, capsys):
    from edue.engine.training.trainer import train

    run = train(
        load_config(
            None,
            [
                *TINY_OVERRIDES,
                "method.name=mc_dropout",
                "train.epochs=1",
                "data.split={train: 4, val: 2, test: 2}",
                f"out_dir={tmp_path / 'run'}",
            ],
        )
    )
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "mc_dropout" in err and "one-pass deterministic" in err
    assert not (out / "model.onnx").exists()


def test_cli_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["export", str(missing), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err


def test_missing_onnx_names_the_extra(tiny_run, tmp_path, monkeypatch):
    real = export_module.importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("onnx", "onnxruntime") else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'edue\[onnx\]'"):
        export_onnx(tiny_run, tmp_path)
    with pytest.raises(ConfigError, match=r"onnxruntime.*pip install 'edue\[onnx\]'"):
        onnx_session(tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


DYNUNET = {
    2: [
        "data.format=synthetic",
        "data.options={size: 32}",
        "data.split={train: 4, val: 2, test: 2}",
        "data.size=32",
        "model.backbone=dynunet",
        "model.filters=[4, 8, 16, 32]",
    ],
    3: [
        "data.format=synthetic3d",
        "data.options={size: 16, n_raters: 2}",
        "data.split={train: 2, val: 1, test: 1}",
        "data.patch_size=[16, 16, 16]",
        "model.backbone=dynunet",
        "model.filters=[4, 8, 16]",
    ],
}


@pytest.mark.parametrize("dims", [2, 3])
def test_a_dynunet_run_exports_to_onnx_with_the_predictor_s_outputs(dims, tmp_path):
    from edue.engine.training.trainer import train

    common = ["train.epochs=1", "train.batch_size=2", "train.device=cpu"]
    run = train(load_config(None, [*DYNUNET[dims], *common, f"out_dir={tmp_path}/run"]))
    predictor = Predictor.from_checkpoint(run)
    session = onnx_session(export_onnx(run, tmp_path / "onnx"))
    wrapper = ExportWrapper(predictor.method, predictor.size_divisor)
    gen = torch.Generator().manual_seed(2)
    # at the training size the graph is the Predictor's whole prediction
    trained = (32, 32) if dims == 2 else (16, 16, 16)
    batch = torch.rand((2, predictor.in_channels, *trained), generator=gen)
    assert (
        max(
            max_diffs(
                session.run(list(OUTPUT_NAMES), {"image": batch.numpy()}),
                reference(predictor, batch),
            )
        )
        < TOL
    )
    # elsewhere the Predictor resizes (2D) or slides windows (3D) outside the graph
    # (docs/deploy.md); the graph still equals the network's own pass at any size
    other = (24, 40) if dims == 2 else (16, 8, 24)
    batch = torch.rand((2, predictor.in_channels, *other), generator=gen)
    with torch.no_grad():
        want = tuple(t.numpy() for t in wrapper(batch))
    assert max(max_diffs(session.run(list(OUTPUT_NAMES), {"image": batch.numpy()}), want)) < TOL


def test_predict_with_the_onnx_model_writes_what_the_checkpoint_writes(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    calibrate = ["calibrate", str(run), "--poor", "disc=0.5", "cup=0.3", "--alpha", "0.2"]
    assert main([*calibrate, "--false-alarm", "0.5", "--device", "cpu"]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "calibration.json").is_file()  # travels with the model
    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, shape in enumerate([(32, 32, 3), (32, 32, 3), (48, 40, 3)]):
        write_png(inputs / f"img{i}.png", (rng.random(shape) * 255).astype(np.uint8))
    outs = {}
    for name, model in (("checkpoint", run), ("onnx", tmp_path / "x" / "model.onnx")):
        outs[name] = tmp_path / name
        args = ["predict", str(model), str(inputs), "--out", str(outs[name]), "--no-figures"]
        assert main([*args, "--no-gallery"]) == 0
    want = json.loads((outs["checkpoint"] / "predictions.json").read_text())
    got = json.loads((outs["onnx"] / "predictions.json").read_text())
    assert got["method"] == want["method"] and got["structures"] == want["structures"]
    assert got["referral"]["gate"] is True  # the gate read the graph's features
    for g, w in zip(got["predictions"], want["predictions"], strict=True):
        assert g["refer"] == w["refer"] and g["reasons"] == w["reasons"]
        assert g.get("resampled") == w.get("resampled")
        assert g["ood"]["available"] and g["ood"]["unlike_training"] == w["ood"]["unlike_training"]
        assert g["ood"]["score"] == pytest.approx(w["ood"]["score"], rel=1e-4, abs=1e-5)
        for name in w["sv"]:
            assert g["sv"][name] == pytest.approx(w["sv"][name], rel=1e-4, abs=1e-5)
        a, b = (
            np.load(outs["onnx"] / f"{g['output']}.npz"),
            np.load(outs["checkpoint"] / f"{w['output']}.npz"),
        )
        assert set(a.files) == set(b.files)
        for key in ("members", "mean", "variance", "uncertainty"):
            assert float(np.abs(a[key] - b[key]).max()) < TOL
    assert "resampled" in got["predictions"][2]  # 48×40 onto the training 32²


def test_onnx_model_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    bad = tmp_path / "m" / "model.onnx"
    bad.write_bytes(b"not a graph")
    write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    assert main(["predict", str(bad), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    assert "model.json" in capsys.readouterr().err  # no sidecar beside it
    (tmp_path / "m" / "model.json").write_text(json.dumps({"method": "edue"}))
    assert main(["predict", str(bad), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    assert "the sidecar lacks structures" in capsys.readouterr().err
    meta = {
        "method": "edue",
        "structures": ["a"],
        "in_channels": 1,
        "spatial_dims": 2,
        "score": "variance",
        "members": 2,
    }
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    assert main(["predict", str(bad), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a readable ONNX model" in err and len(err.strip().splitlines()) == 1
