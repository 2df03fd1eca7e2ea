"""``edue predict`` on folders of DICOM series, with ``--dicom-out``: the Segmentation and
Parametric Maps it writes hold the NPZ's mean and uncertainty on the source slices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from edue.cli import main  # noqa: E402
from edue.config import load_config  # noqa: E402
from edue.engine.checkpoint import save_checkpoint  # noqa: E402
from edue.io import write_png  # noqa: E402
from edue.methods import build_method  # noqa: E402
from tests.test_dicom import (  # noqa: E402
    COLS,
    ROWS,
    SLICES,
    check_frames,
    make_ct_series,
    make_planar,
    rotation,
)

STRUCTURES = ["GTVp", "GTVn"]


def one_channel_checkpoint(folder: Path, dims: int) -> Path:
    """An untrained one-channel EDUE model of ``dims`` dimensions saved as a checkpoint
    (a CT series has one channel; the embedded 3D data has two)."""
    import torch

    config = load_config(None, ["model.channels=[4, 8]", "train.device=cpu"])
    torch.manual_seed(0)
    method = build_method(config, 1, len(STRUCTURES), dims, for_training=False)
    data = {
        "in_channels": 1,
        "structures": STRUCTURES,
        "spatial_dims": dims,
        "image_size": [8] * dims,
        "grid": {"size": None, "spacing": None},
    }
    state = {"model": method.state_dict(), "config": config.to_dict(), "data": data}
    return save_checkpoint(folder / f"model{dims}d.pt", state)


def test_predict_a_dicom_folder_with_dicom_out(tmp_path, capsys):
    folder = tmp_path / "in" / "patient"
    folder.mkdir(parents=True)
    first = make_ct_series(folder, seed=0, series_number=1)
    second = make_ct_series(folder, seed=1, series_number=2)
    (folder / "notes.json").write_text("{}")  # not DICOM: left alone
    model = one_channel_checkpoint(tmp_path, 3)
    out = tmp_path / "out"
    assert (
        main(["predict", str(model), str(tmp_path / "in"), "--out", str(out), "--dicom-out"]) == 0
    )
    assert "predicted 2 image(s), 0 failed" in capsys.readouterr().out
    page = (out / "predictions.html").read_text()  # the gallery read the series again
    assert page.count("slice ") >= 2 and "could not be read again" not in page
    entries = json.loads((out / "predictions.json").read_text())["predictions"]
    assert [e["dicom_series"]["uid"] for e in entries] == [first.uid, second.uid]
    for written, entry in zip((first, second), entries, strict=True):
        assert entry["dicom_series"]["instances"] == SLICES
        assert entry["dicom_series"]["modality"] == "CT"
        arrays = np.load(out / f"{entry['output']}.npz")
        assert arrays["mean"].shape == (2, COLS, ROWS, SLICES)  # [K, column, row, slice]
        # the NIfTI maps carry the series' geometry
        probability = nib.load(out / f"{entry['output']}_probability.nii.gz")
        voxel = probability.affine @ np.array([0, 0, SLICES - 1, 1.0])
        lps = written.positions[SLICES - 1]
        np.testing.assert_allclose(voxel[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
        np.testing.assert_allclose(
            np.moveaxis(probability.get_fdata(), -1, 0), arrays["mean"], atol=1e-6
        )
        # the Segmentation: round(p × 255) of the NPZ's mean on every source slice
        seg = hd.seg.segread(out / entry["dicom"]["seg"])
        assert [seg.get_segment_description(k + 1).segment_label for k in range(2)] == STRUCTURES
        assert {uid[2] for uid in seg.get_source_image_uids()} == set(written.sop_uids)
        expected = np.around(arrays["mean"].astype(np.float64) * 255).transpose(3, 2, 1, 0)
        check_frames(seg, written, expected, "ReferencedSegmentNumber")
        # the Parametric Maps: the NPZ's uncertainty, per structure
        for k, structure in enumerate(STRUCTURES):
            pm = pydicom.dcmread(out / entry["dicom"]["uncertainty"][structure])
            truth = arrays["uncertainty"][k].transpose(2, 1, 0)[..., None]
            check_frames(pm, written, truth.astype(np.float32), None)


def test_a_dicom_folder_with_mixed_orientations_is_one_line(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    written = make_ct_series(folder, orientations={2: rotation(40.0, 10.0)})
    model = one_channel_checkpoint(tmp_path, 3)
    assert main(["predict", str(model), str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "orientation" in err
    assert str(written.files[2]) in err
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_2d_dicom_and_png_inputs_predict_together(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    make_planar(folder, "chest.dcm", "DX", rng.integers(0, 4000, (24, 20), dtype=np.uint16))
    write_png(folder / "photo.png", rng.integers(0, 255, (24, 20), dtype=np.uint8))
    model = one_channel_checkpoint(tmp_path, 2)
    out = tmp_path / "out"
    assert main(["predict", str(model), str(folder), "--out", str(out), "--dicom-out"]) == 0
    entries = json.loads((out / "predictions.json").read_text())["predictions"]
    by_kind = {"dicom" if "dicom_series" in e else "png": e for e in entries}
    assert set(by_kind) == {"dicom", "png"}
    dx = by_kind["dicom"]
    assert dx["dicom_series"]["modality"] == "DX"
    assert (out / f"{dx['output']}_probability_GTVp.png").is_file()  # 2D maps as PNG
    assert dx["dicom"]["uncertainty"] == {}  # no frame of reference: no Parametric Map
    seg = hd.seg.segread(out / dx["dicom"]["seg"])
    mean = np.load(out / f"{dx['output']}.npz")["mean"]
    frames = seg.pixel_array.reshape(-1, 24, 20)
    np.testing.assert_array_equal(frames[:2], np.around(mean * 255))
    assert "dicom" not in by_kind["png"]
    # --dicom-out without DICOM input is a one-line error
    png_only = tmp_path / "png"
    png_only.mkdir()
    (folder / "photo.png").rename(png_only / "photo.png")
    assert (
        main(["predict", str(model), str(png_only), "--out", str(tmp_path / "o2"), "--dicom-out"])
        == 2
    )
    assert "none of the inputs is DICOM" in capsys.readouterr().err


def test_skip_bad_predicts_the_good_series_and_names_the_bad(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = make_ct_series(folder, seed=0, series_number=1)
    bad = make_ct_series(folder, seed=1, series_number=2, orientations={1: rotation(40.0, 10.0)})
    model = one_channel_checkpoint(tmp_path, 3)
    out = tmp_path / "out"
    assert main(["predict", str(model), str(folder), "--out", str(out), "--skip-bad"]) == 1
    summary = json.loads((out / "predictions.json").read_text())
    assert [e["dicom_series"]["uid"] for e in summary["predictions"]] == [good.uid]
    (failure,) = summary["failed"]
    assert failure["input"] == str(bad.files[1]) and "orientation" in failure["reason"]
    assert "skipped" in capsys.readouterr().err
