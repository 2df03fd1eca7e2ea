"""``export_bundle``: a checkpoint as a MONAI bundle whose ``python -m monai.bundle run``
writes edue predict's mean and uncertainty, on the inputs' grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edue.config import load_config
from edue.engine.checkpoint import save_checkpoint
from edue.engine.inference.predictor import Predictor
from edue.engine.predict.bundle import (
    BUNDLE_FORMAT,
    INFERENCE_FILE,
    LICENCE_PLACEHOLDER,
    METADATA_FILE,
    MODEL_FILE,
    README_FILE,
    SIDECAR_FILE,
    bundle_net,
    export_bundle,
)
from edue.engine.predict.export import ExportWrapper
from edue.errors import CheckpointError, ConfigError
from edue.io import read_image
from edue.methods import build_method
from tests.conftest import TINY_OVERRIDES
from tests.test_export import VOLUME_OVERRIDES

TOL = 1e-4
#: the sliding window of the 3D bundle: smaller than one test volume, larger than another
ROI = [8, 8, 8]


@pytest.fixture(scope="module")
def volume_run_with_roi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch EDUE run on 16³ synthetic volumes (three spacings), predicting volumes
    larger than 8³ window by window (``infer.roi_size``)."""
    from edue.engine.training.trainer import train

    out = tmp_path_factory.mktemp("bundle_volume_run")
    run = train(load_config(None, [*VOLUME_OVERRIDES, f"out_dir={out}"]))
    for path in run.glob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["config"]["infer"]["roi_size"] = ROI
        save_checkpoint(path, state)
    return run


def run_bundle(bundle: Path, dataset: Path) -> None:
    """``python -m monai.bundle run`` on the bundle's inference config, as its README says."""
    pytest.importorskip("fire", reason="MONAI's bundle command line needs fire")
    pytest.importorskip("ignite", reason="MONAI's SupervisedEvaluator needs pytorch-ignite")
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / INFERENCE_FILE),
        "--bundle_root", str(bundle),
        "--dataset_dir", str(dataset),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=bundle, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def written(bundle: Path, name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A written map as ``[K, *sp]`` and its affine (2D maps are stored ``[H, W, 1, K]``)."""
    import nibabel as nib

    image: Any = nib.load(str(bundle / "eval" / f"{name}_{kind}.nii.gz"))
    array = np.asarray(image.dataobj)
    if array.ndim == 4 and array.shape[2] == 1:
        array = array[:, :, 0]
    return np.moveaxis(array, -1, 0), np.asarray(image.affine)


def max_diff(got: np.ndarray, want: torch.Tensor) -> float:
    assert got.shape == tuple(want.shape)
    return float(np.abs(got - want.numpy()).max())


def test_a_3d_bundle_writes_edue_predict_s_maps_on_the_input_grid(volume_run_with_roi, tmp_path):
    import nibabel as nib

    predictor = Predictor.from_checkpoint(volume_run_with_roi)
    assert predictor.roi_size() == tuple(ROI)
    bundle = export_bundle(volume_run_with_roi, tmp_path / "bundle")
    spacing = predictor.grid.spacing
    assert spacing is not None  # the bundle resamples to it (Spacingd), here a no-op
    shifted = np.diag([*spacing, 1.0])
    shifted[:3, 3] = [12.5, -40.0, 7.0]
    flipped = shifted.copy()
    flipped[:, 1] *= -1  # the second axis runs the other way in the world
    coarse = np.diag([3.0, 2.0, 0.5, 1.0])  # outside the training spacings
    volumes = {
        "windows": ((12, 18, 14), shifted),  # larger than the window: window by window
        "whole": ((8, 8, 6), flipped),  # within it: one pass, as the Predictor
        "coarse": ((10, 9, 20), coarse),
    }
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, (shape, affine) in volumes.items():
        array = rng.random((*shape, predictor.in_channels)).astype(np.float32)
        nib.save(nib.Nifti1Image(array, affine), str(data / f"{name}.nii.gz"))
    run_bundle(bundle, data)
    for name, (shape, affine) in volumes.items():
        image, meta = read_image(data / f"{name}.nii.gz")
        want = predictor.predict(image, spacing=meta.spacing)
        for kind in ("mean", "uncertainty"):
            got, got_affine = written(bundle, name, kind)
            assert got.shape == (len(predictor.structures), *shape)
            np.testing.assert_allclose(got_affine, affine, atol=1e-5)
            if name != "coarse":  # resampled by Spacingd here, by a resize in edue
                assert max_diff(got, getattr(want, kind)) <= TOL, (name, kind)
        assert float(want.uncertainty.max()) > 0  # a real spread on both sides


def test_a_2d_bundle_reads_png_as_edue_does_and_resizes_to_the_training_size(tiny_run, tmp_path):
    from PIL import Image

    predictor = Predictor.from_checkpoint(tiny_run)
    assert predictor.grid.size == (32, 32)
    bundle = export_bundle(tiny_run, tmp_path / "bundle")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    shapes = {"trained": (32, 32), "wide": (24, 40), "large": (48, 52)}
    for name, shape in shapes.items():
        pixels = (rng.random((*shape, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(data / f"{name}.png")
    run_bundle(bundle, data)
    for name, shape in shapes.items():
        image, _ = read_image(data / f"{name}.png")
        want = predictor.predict(image)
        for kind in ("mean", "uncertainty"):
            got, _ = written(bundle, name, kind)
            assert got.shape == (len(predictor.structures), *shape)
            assert max_diff(got, getattr(want, kind)) <= TOL, (name, kind)


def test_the_bundle_files_say_what_the_model_is(tiny_run, tmp_path):
    from monai.bundle import ConfigParser, verify_net_in_out
    from monai.data import load_net_with_metadata

    import edue

    predictor = Predictor.from_checkpoint(tiny_run)
    bundle = export_bundle(tiny_run, tmp_path / "bundle")
    for name in (MODEL_FILE, SIDECAR_FILE, METADATA_FILE, INFERENCE_FILE, README_FILE):
        assert (bundle / name).is_file(), name
    meta = json.loads((bundle / METADATA_FILE).read_text())
    structures = list(predictor.structures)
    assert meta["structures"] == structures
    assert meta["license"] == meta["copyright"] == LICENCE_PLACEHOLDER
    assert meta["members"] == predictor.method.n_members and meta["score"] == "variance"
    assert meta["edue_version"] == edue.__version__
    assert meta["weights_sha256"] == predictor.weights_sha256
    assert meta["training_grid"]["size"] == [32, 32]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 2 * len(structures)
    assert list(pred["channel_def"].values()) == [
        *(f"mean {s}" for s in structures),
        *(f"uncertainty {s}" for s in structures),
    ]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert json.loads((bundle / SIDECAR_FILE).read_text())["format"] == BUNDLE_FORMAT
    assert LICENCE_PLACEHOLDER in (bundle / README_FILE).read_text()
    # MONAI parses the config and loads the network it names; the network is the
    # Predictor's whole-image pass, and carries the metadata inside
    parser = ConfigParser()
    parser.read_config(str(bundle / INFERENCE_FILE))
    parser.read_meta(str(bundle / METADATA_FILE))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = predictor.predict(image[0])
    with torch.no_grad():
        out = net(image)[0]
    k = len(structures)
    assert (
        max(max_diff(out[:k].numpy(), want.mean), max_diff(out[k:].numpy(), want.uncertainty))
        <= TOL
    )
    _, embedded, _ = load_net_with_metadata(str(bundle / MODEL_FILE), more_extra_files=())
    assert embedded["structures"] == structures
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / METADATA_FILE),
        config_file=str(bundle / INFERENCE_FILE),
        bundle_root=str(bundle),
        device="cpu",
        any=20,
    )


@pytest.mark.parametrize(
    "options",
    [
        ["method.name=plain"],
        ["method.name=deep_ensemble"],
        ["method.name=layer_ensembles"],
        ["method.name=edue", "method.score=combined"],
        ["method.name=edue", "method.score=bernoulli"],
        ["method.name=edue", "method.segmentation=final", "method.uncertainty_heads=separate"],
    ],
)
def test_model_ts_gives_each_method_s_mean_and_uncertainty(options):
    config = load_config(None, [*TINY_OVERRIDES, *options])
    torch.manual_seed(0)
    method = build_method(config, 3, 2, 2, for_training=False)
    info = {"in_channels": 3, "structures": ["a", "b"], "spatial_dims": 2}
    predictor = Predictor(method, config, info, torch.device("cpu"))
    net = bundle_net(predictor, ExportWrapper(method, predictor.size_divisor))
    images = torch.rand(2, 3, 20, 22, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, stack = net(images), net.stack(images)
    assert stack.shape[1] == method.stack_size * 2
    assert torch.equal(net.reduce(stack), out)
    for image, got in zip(images, out, strict=True):
        want = predictor.predict(image)
        assert (
            max(max_diff(got[:2].numpy(), want.mean), max_diff(got[2:].numpy(), want.uncertainty))
            <= TOL
        )


def test_model_ts_runs_without_edue(tiny_run, tmp_path):
    bundle = export_bundle(tiny_run, tmp_path / "bundle")
    code = (
        "import sys; sys.modules['edue'] = None; import torch; "
        f"net = torch.jit.load({str(bundle / MODEL_FILE)!r}); "
        "print(tuple(net(torch.rand(1, 3, 20, 28)).shape))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 4, 20, 28)"


def test_a_sampling_method_is_refused(tmp_path):
    from edue.engine.training.trainer import train

    overrides = [
        "method.name=mc_dropout",
        "train.epochs=1",
        "data.split={train: 4, val: 2, test: 2}",
    ]
    run = train(load_config(None, [*TINY_OVERRIDES, *overrides, f"out_dir={tmp_path / 'run'}"]))
    with pytest.raises(ConfigError, match="mc_dropout.*one-pass deterministic") as caught:
        export_bundle(run, tmp_path / "bundle")
    assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "bundle").exists()


def test_bad_output_folders_and_checkpoints_are_refused_in_one_line(tiny_run, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_bundle(tiny_run, full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        export_bundle(tiny_run, a_file)
    with pytest.raises(CheckpointError, match="nope.pt"):
        export_bundle(tmp_path / "nope.pt", tmp_path / "bundle")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_bundle(tiny_run, empty) == empty and (empty / MODEL_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    shutil.rmtree(empty)


def test_edue_export_writes_a_bundle(tiny_run, tmp_path, capsys):
    from edue.cli import main

    out = tmp_path / "bundle"
    assert main(["export", str(tiny_run), "--format", "monai-bundle", "--out", str(out)]) == 0
    assert "python -m monai.bundle run" in capsys.readouterr().out
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.ts"):
        assert (out / name).is_file()
    assert main(["export", str(tiny_run), "--format", "monai-bundle", "--out", str(out)]) == 2
    assert "\n" not in capsys.readouterr().err.strip()  # not empty: one line, nothing lost
    assert (out / "models" / "model.ts").is_file()
