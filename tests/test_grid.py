"""The training grid travels with the model: recorded in the checkpoint and the export's
sidecar, and ``edue predict`` resamples inputs onto it and the outputs back."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from edue.cli import main
from edue.config import load_config
from edue.data.transforms import resize_image
from edue.engine.inference.grid import TrainingGrid, from_grid, to_grid
from edue.engine.inference.predictor import Predictor
from edue.io import read_image, write_png
from tests.test_export import VOLUME_OVERRIDES as VOLUME_RUN

#: test_export's volume run with more training volumes (several spacings to record)
VOLUME_OVERRIDES = [*VOLUME_RUN, "data.split={train: 6, val: 1, test: 1}"]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch run on synthetic volumes of several anisotropic spacings."""
    from edue.engine.training.trainer import train

    out = tmp_path_factory.mktemp("grid_volume_run")
    return train(load_config(None, [*VOLUME_OVERRIDES, f"out_dir={out}"]))


def test_grid_of_2d_cases_is_their_one_size_or_none():
    assert TrainingGrid.from_cases([(32, 32)] * 3, [None] * 3).size == (32, 32)
    assert TrainingGrid.from_cases([(32, 32), (32, 40)], [None, None]).size is None
    assert TrainingGrid.from_cases([], []) == TrainingGrid()
    grid = TrainingGrid(size=(32, 32))
    assert grid.target_shape((64, 64)) == (32, 32)
    assert grid.target_shape((32, 32)) is None
    assert TrainingGrid().target_shape((64, 64)) is None


def test_grid_of_volumes_is_the_median_spacing_and_its_range():
    spacings = [(2.0, 1.0, 1.0), (1.5, 1.0, 1.0), (2.0, 1.25, 1.25)]
    grid = TrainingGrid.from_cases([(16, 16, 16)] * 3, spacings)
    assert grid.spacing == (2.0, 1.0, 1.0)
    assert grid.spacing_min == (1.5, 1.0, 1.0) and grid.spacing_max == (2.0, 1.25, 1.25)
    assert grid.size is None  # volumes: the spacing, not the size
    # within the training spacings (10 % slack): taken as they are
    assert grid.target_shape((20, 30, 30), (1.6, 1.1, 1.1)) is None
    assert grid.target_shape((20, 30, 30), (2.2, 0.9, 0.9)) is None
    assert grid.target_shape((20, 30, 30)) is None  # no spacing known
    # outside: onto the median spacing, the same physical extent
    assert grid.target_shape((10, 30, 30), (4.0, 1.0, 1.0)) == (20, 30, 30)
    assert grid.target_shape((20, 30, 30), (2.0, 0.5, 0.5)) == (20, 15, 15)
    # a case without a spacing: none recorded, nothing resampled
    assert TrainingGrid.from_cases([(8, 8, 8)] * 2, [(1, 1, 1), None]).spacing is None
    assert TrainingGrid.from_dict(grid.to_dict()) == grid
    assert TrainingGrid.from_dict(None, data_size=64).size == (64, 64)  # older checkpoints


def test_from_grid_undoes_the_shape_of_to_grid():
    images = [torch.rand(1, 12, 10), torch.rand(1, 12, 10)]
    batch = to_grid(images, (24, 20))
    assert batch.shape == (2, 1, 24, 20)
    stack = torch.rand(3, 2, 2, 24, 20)
    back = from_grid(stack, (12, 10))
    assert back.shape == (3, 2, 2, 12, 10)
    assert float(back.min()) >= 0 and float(back.max()) <= 1
    assert from_grid(stack, (24, 20)) is stack


def test_the_checkpoint_records_the_training_size(tiny_run):
    predictor = Predictor.from_checkpoint(tiny_run)
    assert predictor.data_info["grid"]["size"] == [32, 32]
    assert predictor.input_shape((128, 96)) == (32, 32)


def test_predict_resamples_a_larger_image_and_says_so(
    tiny_run, tiny_run_any_size, tmp_path, capsys
):
    rng = np.random.default_rng(0)
    small = rng.random((32, 32, 3)).astype(np.float32)
    large = resize_image(torch.from_numpy(small).permute(2, 0, 1), (128, 128))
    path = tmp_path / "in" / "large.png"
    path.parent.mkdir()
    write_png(path, (large.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    assert main(["predict", str(tiny_run), str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "resampled 1 of 1 input(s) to the training size 32×32" in printed
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    entry = summary["predictions"][0]
    assert entry["resampled"] == {
        "shape": [128, 128],
        "spacing": None,
        "predicted_at": [32, 32],
        "pixel_scale": 1 / 16,
    }
    assert summary["training_grid"]["size"] == [32, 32]
    arrays = np.load(tmp_path / "out" / "large.npz")
    assert arrays["mean"].shape == (2, 128, 128)  # the outputs on the input's own grid
    # the network saw the image at its training size: the prediction of the image
    # brought to 32² first, brought back to 128²
    predictor = Predictor.from_checkpoint(tiny_run)
    image = read_image(path, 2)[0]
    at_grid = predictor.method.members_from_logits(
        predictor.method(resize_image(torch.from_numpy(image), (32, 32))[None])
    )
    want = from_grid(at_grid.detach(), (128, 128))
    members = predictor.method.split_stack(want)[0][:, 0]
    np.testing.assert_allclose(arrays["members"], members.numpy(), atol=1e-5)
    # the SV counts pixels of the 32² grid predicted on: on the scale of a 32² image's
    at_training_size = predictor.predict(resize_image(torch.from_numpy(image), (32, 32)))
    for k, name in enumerate(summary["structures"]):
        assert entry["sv"][name] == pytest.approx(float(at_training_size.sv[k]), rel=0.05)
    # a model with no training size takes the image as it is, and says nothing
    assert main(["predict", str(tiny_run_any_size), str(path), "--out", str(tmp_path / "o2")]) == 0
    assert "resampled" not in capsys.readouterr().out
    summary = json.loads((tmp_path / "o2" / "predictions.json").read_text())
    assert "resampled" not in summary["predictions"][0]


def test_a_volume_outside_the_training_spacings_is_resampled(volume_run, tmp_path, capsys):
    predictor = Predictor.from_checkpoint(volume_run)
    grid = predictor.grid
    assert grid.spacing is not None and grid.spacing_min is not None
    rng = np.random.default_rng(1)
    inside = tmp_path / "in" / "inside.nii.gz"
    coarse = tmp_path / "in" / "coarse.nii.gz"
    inside.parent.mkdir()
    volume = rng.random((16, 16, 16, 2)).astype(np.float32)  # CT and PET, channels last
    nib.save(nib.Nifti1Image(volume, np.diag([*grid.spacing, 1.0])), inside)
    # slices four times as thick as the training's thickest: half the slices of 16
    thick = np.diag([grid.spacing_max[0] * 4, *grid.spacing[1:], 1.0])
    nib.save(nib.Nifti1Image(volume[:4], thick), coarse)
    out = tmp_path / "out"
    assert main(["predict", str(volume_run), str(inside), str(coarse), "--out", str(out)]) == 0
    assert "resampled 1 of 2 input(s) to the training spacing" in capsys.readouterr().out
    entries = {
        Path(e["input"]).name: e
        for e in json.loads((out / "predictions.json").read_text())["predictions"]
    }
    assert "resampled" not in entries["inside.nii.gz"]
    resampled = entries["coarse.nii.gz"]["resampled"]
    expected_depth = round(4 * grid.spacing_max[0] * 4 / grid.spacing[0])
    assert resampled["shape"] == [4, 16, 16]
    assert resampled["predicted_at"] == [expected_depth, 16, 16]
    probability = nib.load(out / "coarse_probability.nii.gz")
    assert probability.shape[:3] == (4, 16, 16)  # back on the input's grid
    np.testing.assert_allclose(probability.affine, thick)
