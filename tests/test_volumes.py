"""3D end to end: patch training, sliding-window prediction and NIfTI geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from edue.cli import main
from edue.config import load_config
from edue.engine.training.trainer import train

VOLUME_OVERRIDES = [
    "data.format=synthetic3d",
    "data.options={size: 24, n_raters: 3}",
    "data.split={train: 4, val: 2, test: 2}",
    "data.patch_size=[16, 16, 16]",
    "model.channels=[4, 8, 16]",
    "train.epochs=1",
    "train.batch_size=2",
    "train.device=cpu",
    "infer.overlap=0.5",
]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("volume_run")
    return train(load_config(None, [*VOLUME_OVERRIDES, f"out_dir={out}"]))


def test_predict_nifti_keeps_affine_and_grid(volume_run, tmp_path):
    affine = np.array(
        [[0.0, 0.0, 2.5, -40.0], [0.0, 1.2, 0.0, 11.0], [-1.2, 0.0, 0.0, 7.5], [0.0, 0.0, 0.0, 1.0]]
    )
    volume = np.random.default_rng(0).random((20, 26, 18, 2)).astype(np.float32)
    path = tmp_path / "patient.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    out = tmp_path / "out"
    assert main(["predict", str(volume_run), str(path), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("patient_probability.nii.gz", "patient_uncertainty.nii.gz"):
        img = nib.load(str(out / name))
        np.testing.assert_allclose(img.affine, affine)  # overlays the input exactly
        assert img.shape == (20, 26, 18, 2)  # the input grid, one map per structure
    assert (out / "patient_slices.png").is_file()
    summary = json.loads((out / "predictions.json").read_text())
    assert set(summary["predictions"][0]["sv"]) == {"GTVp", "GTVn"}


def test_volume_larger_than_window_uses_every_member(volume_run, tmp_path):
    import edue

    predictor = edue.load(str(volume_run))
    assert predictor.roi_size() == (16, 16, 16)
    pred = predictor.predict(np.random.default_rng(1).random((2, 30, 20, 24)).astype(np.float32))
    assert pred.members.shape == (predictor.method.n_members, 2, 30, 20, 24)


def test_2d_checkpoint_refuses_a_volume(tiny_run, tmp_path, capsys):
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(path))
    assert main(["predict", str(tiny_run), str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "vol.nii.gz" in err and "2D image" in err


def test_several_patches_per_loaded_volume():
    from edue.data.pipeline import PreparedSource, collate_groups
    from edue.engine.training.trainer import Trainer

    config = load_config(
        None, [*VOLUME_OVERRIDES, "data.patches_per_volume=3", "train.batch_size=6"]
    )
    trainer = Trainer(config)
    trainer.setup()
    loads: list[int] = []
    original = PreparedSource.load

    def counting(self, index):  # type: ignore[no-untyped-def]
        loads.append(index)
        return original(self, index)

    PreparedSource.load = counting  # type: ignore[method-assign]
    try:
        groups = [trainer.train_dataset[i] for i in range(2)]
    finally:
        PreparedSource.load = original  # type: ignore[method-assign]
    assert loads == [0, 1]  # each volume read once for its three patches
    batch = collate_groups(groups)
    assert batch["image"].shape == (6, 2, 16, 16, 16)
    assert batch["case_id"] == [trainer.subsets["train"].case_ids[i] for i in (0, 0, 0, 1, 1, 1)]
    assert not all(
        np.array_equal(batch["image"][0].numpy(), batch["image"][k].numpy()) for k in (1, 2)
    )  # three different patches of the same volume


def test_patches_per_volume_must_divide_the_batch():
    from edue.errors import ConfigError

    with pytest.raises(ConfigError, match="train.batch_size 2 must be a multiple of data.p"):
        load_config(None, [*VOLUME_OVERRIDES, "data.patches_per_volume=3"])
