"""The ``monai-datalist`` and ``nnunet-raw`` readers and writers, on tiny layouts."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edue.data.case import MultiRaterCase
from edue.data.monai_datalist import write_monai_datalist
from edue.data.nnunet_raw import write_nnunet_raw
from edue.data.source import open_source
from edue.data.synthetic import FundusConfig, generate_case
from edue.data.synthetic3d import Volume3DConfig, generate_volume
from edue.errors import DataError
from tests.fake_layouts import save_image, write_nifti

H, W = 12, 10
SHAPE_3D = (8, 7, 6)


def _label_2d(case: int, rater: int) -> np.ndarray:
    """A label map 0/1/2 that differs per case and rater: 1 (GTVp) in a band whose
    height depends on the rater, 2 (GTVn) in a small box."""
    label = np.zeros((H, W), np.uint8)
    label[1 : 4 + rater, 1:5] = 1
    label[6 + case % 3, 6 : 7 + rater] = 2
    return label


def _channel_2d(case: int, channel: int) -> np.ndarray:
    """An 8-bit grey image whose pixel (case, channel + 1) marks it."""
    image = np.full((H, W), 10 * channel, np.uint8)
    image[case, channel + 1] = 200 + channel
    return image


def _png_datalist(root: Path, n_train: int = 4, n_raters: int = 3, write_json: bool = True) -> dict:
    """A 2D datalist: two PNG channels per image, ``n_raters`` PNG label maps per entry,
    patient ``P<i // 2>``; a one-entry ``validation`` and a label-less ``test`` list."""

    def entry(name: str, i: int) -> dict:
        images = []
        for c in range(2):
            images.append(f"imagesTr/{name}_ch{c}.png")
            save_image(root / images[-1], _channel_2d(i, c))
        labels = []
        for r in range(n_raters):
            labels.append(f"labelsTr/{name}_r{r + 1}.png")
            save_image(root / labels[-1], _label_2d(i, r))
        return {"image": images, "label": labels, "patient": f"P{i // 2}"}

    spec = {
        "labels": {"0": "background", "1": "GTVp", "2": "GTVn"},
        "training": [entry(f"case{i}", i) for i in range(n_train)],
        "validation": [entry("val0", n_train)],
        "test": [{"image": "imagesTr/case0_ch0.png"}],
    }
    if write_json:
        (root / "dataset.json").write_text(json.dumps(spec))
    return spec


def _rewrite(root: Path, spec: dict) -> Path:
    path = root / "dataset.json"
    path.write_text(json.dumps(spec))
    return path


# --------------------------------------------------------------------------- monai-datalist
def test_datalist_2d_three_raters_two_channels(tmp_path: Path) -> None:
    _png_datalist(tmp_path)
    src = open_source("monai-datalist", str(tmp_path))
    assert src.case_ids == ["case0_ch0", "case1_ch0", "case2_ch0", "case3_ch0"]
    assert src.patient_ids == ["P0", "P0", "P1", "P1"]
    assert src.structures == ("GTVp", "GTVn") and src.spatial_dims == 2
    for i in range(4):
        case = src.load(i)
        assert case.image.shape == (2, H, W) and case.image.dtype == np.float32
        for c in range(2):  # channel c from file c, 8-bit scaled to [0, 1]
            np.testing.assert_allclose(case.image[c], _channel_2d(i, c) / 255.0, rtol=1e-6)
        assert case.masks.shape == (3, 2, H, W) and case.masks.dtype == np.uint8
        for r in range(3):
            np.testing.assert_array_equal(case.masks[r, 0], _label_2d(i, r) == 1)
            np.testing.assert_array_equal(case.masks[r, 1], _label_2d(i, r) == 2)
        assert case.meta["raters"] == ["rater1", "rater2", "rater3"]
        assert [Path(f).name for f in case.meta["label_files"]] == [
            f"case{i}_r{r}.png" for r in (1, 2, 3)
        ]
        assert case.meta["label_values"] == [0, 1, 2]
        assert case.spacing is None and case.affine is None
    both = open_source(
        "monai-datalist", str(tmp_path / "dataset.json"), lists=["training", "validation"]
    )
    assert len(both) == 5 and both.case_ids[-1] == "val0_ch0"
    assert both.load(4).meta["list"] == "validation"


def test_datalist_ids_base_dir_regions_and_edue_structures(tmp_path: Path) -> None:
    spec = _png_datalist(tmp_path / "data", write_json=False)
    for i, item in enumerate(spec["training"]):
        item["id"] = f"c-{i}"
        item["labels"] = item.pop("label")  # the alias key
        del item["patient"]
    spec["edue_structures"] = {"tumour": [1, 2], "GTVn": [2]}
    listing = tmp_path / "lists" / "my-list.json"
    listing.parent.mkdir()
    listing.write_text(json.dumps(spec))
    src = open_source("monai-datalist", str(listing), base_dir=str(tmp_path / "data"))
    assert src.case_ids == ["c-0", "c-1", "c-2", "c-3"] and src.patient_ids == src.case_ids
    assert src.structures == ("tumour", "GTVn")  # edue_structures wins over labels
    case = src.load(1)
    np.testing.assert_array_equal(case.masks[2, 0], _label_2d(1, 2) > 0)
    np.testing.assert_array_equal(case.masks[2, 1], _label_2d(1, 2) == 2)
    # the reader option wins over both (here one structure, a single value)
    opt = open_source(
        "monai-datalist", str(listing), base_dir=str(tmp_path / "data"), labels={"GTVn": 2}
    )
    assert opt.structures == ("GTVn",)
    with pytest.raises(DataError, match=r"label values \[1\] are not declared") as err:
        opt.load(0)
    assert "case0_r1.png" in str(err.value)
    # values sharing a name in the file's labels map make one region
    del spec["edue_structures"]
    spec["labels"] = {"0": "background", "1": "tumour", "2": "tumour"}
    listing.write_text(json.dumps(spec))
    region = open_source("monai-datalist", str(listing), base_dir=str(tmp_path / "data"))
    assert region.structures == ("tumour",)
    np.testing.assert_array_equal(region.load(0).masks[0, 0], _label_2d(0, 0) > 0)


def test_datalist_uneven_raters_and_single_rater_warning(tmp_path: Path) -> None:
    spec = _png_datalist(tmp_path)
    spec["training"][1]["label"] = spec["training"][1]["label"][:2]
    _rewrite(tmp_path, spec)
    # label lists of different lengths: refused (a missing file is the likelier cause)
    message = _one_line_error(
        lambda: open_source("monai-datalist", str(tmp_path)),
        "label lists of different lengths: case 'case1_ch0' lists 2 rater file",
        "dataset.json",
    )
    assert "varying_raters: true" in message
    # unless the raters truly differ by case (LIDC-style): an option, or the file says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # several raters: no warning
        src = open_source("monai-datalist", str(tmp_path), varying_raters=True)
    assert [src.load(i).n_raters for i in range(4)] == [3, 2, 3, 3]
    _rewrite(tmp_path, {**spec, "edue_varying_raters": True})
    assert open_source("monai-datalist", str(tmp_path)).load(1).n_raters == 2
    for item in spec["training"]:
        item["label"] = item["label"][0]  # a plain path: one rater
    _rewrite(tmp_path, spec)
    with pytest.warns(UserWarning, match="only one rater per case: disagreement cannot be"):
        single = open_source("monai-datalist", str(tmp_path))
    assert single.load(0).masks.shape == (1, 2, H, W)


def _one_line_error(call: Callable[[], object], match: str, names: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and names in message, message
    return message


def test_datalist_errors(tmp_path: Path) -> None:
    def reader(**options: object) -> Callable[[], object]:
        return lambda: open_source("monai-datalist", str(tmp_path), **options)

    _one_line_error(reader(), "datalist JSON not found", "dataset.json")
    (tmp_path / "dataset.json").write_text('{"training": [')
    _one_line_error(reader(), "not a readable JSON file", "dataset.json")
    spec = _png_datalist(tmp_path)
    _one_line_error(reader(lists=["holdout"]), r"no 'holdout' list", "dataset.json")
    _one_line_error(
        reader(lists=["training", "test"]), r"entry 0 of 'test' has no 'label'", "dataset.json"
    )
    (tmp_path / "imagesTr" / "case2_ch1.png").rename(tmp_path / "moved.png")
    _one_line_error(reader(), r"entry 2 of 'training': image file not found", "case2_ch1.png")
    (tmp_path / "moved.png").rename(tmp_path / "imagesTr" / "case2_ch1.png")
    (tmp_path / "labelsTr" / "case3_r2.png").unlink()
    _one_line_error(reader(), r"entry 3 of 'training': label file not found", "case3_r2.png")
    save_image(tmp_path / "labelsTr" / "case3_r2.png", _label_2d(3, 1))
    spec["training"][3]["id"] = "case1_ch0"
    _rewrite(tmp_path, spec)
    _one_line_error(
        reader(),
        r"duplicate case id 'case1_ch0': entry 1 of 'training' and entry 3",
        "dataset.json",
    )
    del spec["training"][3]["id"]
    _rewrite(tmp_path, spec)
    bad = _label_2d(2, 0)
    bad[0, 0] = 7
    save_image(tmp_path / "labelsTr" / "case2_r1.png", bad)
    save_image(tmp_path / "labelsTr" / "case1_r3.png", np.zeros((H + 1, W), np.uint8))
    src = open_source("monai-datalist", str(tmp_path))
    _one_line_error(lambda: src.load(2), r"label values \[7\] are not declared", "case2_r1.png")
    _one_line_error(
        lambda: src.load(1), r"label shape \(13, 10\) differs from image", "case1_r3.png"
    )
    save_image(tmp_path / "imagesTr" / "case0_ch1.png", np.zeros((H, W + 2), np.uint8))
    _one_line_error(lambda: src.load(0), "channel shape", "case0_ch1.png")


# --------------------------------------------------------------------------- nnunet-raw
RATER_DIRS = ("labelsTr", "labelsTr_rater2", "labelsTr_rater10")
AFFINE = np.array([[0.0, 0, 2.5, -10], [0, 0.8, 0, 5], [0.8, 0, 0, 3], [0, 0, 0, 1]])


def _label_3d(case: int, rater: int) -> np.ndarray:
    label = np.zeros(SHAPE_3D, np.uint8)
    label[1 : 3 + rater, 2:5, 1:4] = 1
    label[5 + case % 2, 1, 0 : 1 + rater] = 2
    return label


def _nnunet_3d(root: Path, n_cases: int = 3, raters: tuple[str, ...] = RATER_DIRS) -> Path:
    """A 3D NIfTI nnU-Net folder: CT and PET channels, GTVp/GTVn plus a region."""
    spec = {
        "channel_names": {"0": "CT", "1": "PET"},
        "labels": {"background": 0, "GTVp": 1, "GTVn": 2, "tumour": [1, 2]},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(spec))
    for i in range(n_cases):
        for c in range(2):
            volume = np.full(SHAPE_3D, -100.0 * c, np.float32)
            volume[i, c, 1] = 42.0 + c
            write_nifti(root / "imagesTr" / f"HN_{i:03d}_{c:04d}.nii.gz", volume, AFFINE)
        for r, folder in enumerate(raters):
            write_nifti(root / folder / f"HN_{i:03d}.nii.gz", _label_3d(i, r), AFFINE)
    return root


def test_nnunet_3d_three_raters(tmp_path: Path) -> None:
    root = _nnunet_3d(tmp_path / "Dataset001_HN")
    (root / "labelsTs").mkdir()  # not a rater folder
    src = open_source("nnunet-raw", str(root))
    assert src.case_ids == ["HN_000", "HN_001", "HN_002"] and src.patient_ids == src.case_ids
    assert src.structures == ("GTVp", "GTVn", "tumour") and src.spatial_dims == 3
    case = src.load(1)
    assert case.image.shape == (2, *SHAPE_3D) and case.image.dtype == np.float32
    assert case.image[0, 1, 0, 1] == 42.0 and case.image[1, 1, 1, 1] == 43.0
    assert case.image[1, 0, 0, 0] == -100.0  # channel 1 is the PET file, values kept
    assert case.masks.shape == (3, 3, *SHAPE_3D)
    assert case.meta["raters"] == list(RATER_DIRS)  # natural order: rater2 before rater10
    for r in range(3):
        label = _label_3d(1, r)
        np.testing.assert_array_equal(case.masks[r, 0], label == 1)
        np.testing.assert_array_equal(case.masks[r, 1], label == 2)
        np.testing.assert_array_equal(case.masks[r, 2], label > 0)
    assert case.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_allclose(case.affine, AFFINE)
    assert case.meta["channel_names"] == ["CT", "PET"]


def test_nnunet_single_rater_and_patients(tmp_path: Path) -> None:
    root = _nnunet_3d(tmp_path / "one", n_cases=2, raters=("labelsTr",))
    spec = json.loads((root / "dataset.json").read_text())
    spec["edue_patients"] = {"HN_000": "P7"}
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.warns(UserWarning, match="only one rater per case"):
        src = open_source("nnunet-raw", str(root))
    assert src.patient_ids == ["P7", "HN_001"] and src.load(0).n_raters == 1


def test_nnunet_errors(tmp_path: Path) -> None:
    root = tmp_path / "ds"

    def reader() -> object:
        return open_source("nnunet-raw", str(root))

    root.mkdir()
    _one_line_error(reader, "dataset.json not found", "dataset.json")
    _nnunet_3d(root, n_cases=2)
    spec = json.loads((root / "dataset.json").read_text())
    for key in ("labels", "channel_names", "file_ending"):
        _rewrite(root, {k: v for k, v in spec.items() if k != key})
        _one_line_error(reader, f"no '{key}'", "dataset.json")
    _rewrite(root, spec)
    (root / "imagesTr" / "HN_001_0001.nii.gz").unlink()
    _one_line_error(
        reader, r"channel file of case 'HN_001' missing \(channel 1: 'PET'\)", "HN_001_0001.nii.gz"
    )
    write_nifti(root / "imagesTr" / "HN_001_0001.nii.gz", np.zeros(SHAPE_3D, np.float32))
    (root / "labelsTr_rater2" / "HN_000.nii.gz").unlink()
    _one_line_error(
        reader,
        r"case 'HN_000' has no label file in rater folder 'labelsTr_rater2'",
        "labelsTr_rater2/HN_000.nii.gz",
    )
    bad = _label_3d(0, 1)
    bad[0, 0, 0] = 3
    write_nifti(root / "labelsTr_rater2" / "HN_000.nii.gz", bad)
    write_nifti(root / "labelsTr" / "HN_009.nii.gz", _label_3d(0, 0))
    _one_line_error(reader, "label of case 'HN_009' has no image file", "labelsTr/HN_009.nii.gz")
    (root / "labelsTr" / "HN_009.nii.gz").unlink()
    src = open_source("nnunet-raw", str(root))
    src.load(1)  # the other cases still read
    _one_line_error(
        lambda: src.load(0),
        r"label values \[3\] are not declared in 'labels' of dataset.json",
        "labelsTr_rater2/HN_000.nii.gz",
    )
    _rewrite(root, {**spec, "labels": {"background": 0, "GTVp": 1, "ignore": 3}})
    _one_line_error(reader, "'ignore' label", "dataset.json")


def test_nnunet_2d_png_rgb_channel_file(tmp_path: Path) -> None:
    """nnU-Net's natural-image layout: one RGB ``_0000.png`` for three channel names."""
    root = tmp_path / "Dataset120_Roads"
    spec = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "road": 1},
        "numTraining": 2,
        "file_ending": ".png",
    }
    root.mkdir()
    _rewrite(root, spec)
    for i in range(2):
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[i, :, 1] = 255
        save_image(root / "imagesTr" / f"road{i}_0000.png", rgb)
        for r, folder in enumerate(("labelsTr", "labelsTr_b")):
            save_image(root / folder / f"road{i}.png", (_label_2d(i, r) == 1).astype(np.uint8))
    src = open_source("nnunet-raw", str(root))
    assert src.spatial_dims == 2 and src.structures == ("road",)
    case = src.load(1)
    assert case.image.shape == (3, H, W) and case.image[1, 1].tolist() == [1.0] * W
    assert case.image[0].max() == 0 and case.meta["raters"] == ["labelsTr", "labelsTr_b"]
    np.testing.assert_array_equal(case.masks[1, 0], _label_2d(1, 1) == 1)
    # a grey single-channel file: channel 0001 is missing, named at once
    save_image(root / "imagesTr" / "road0_0000.png", np.zeros((H, W), np.uint8))
    with pytest.raises(DataError, match="missing") as err:
        open_source("nnunet-raw", str(root))
    assert "road0_0001.png" in str(err.value)


# --------------------------------------------------------------------------- round trips
def _fundus(n: int = 3) -> list[MultiRaterCase]:
    return [generate_case(i, seed=0, config=FundusConfig(size=32)) for i in range(n)]


def _volumes(n: int = 2) -> list[MultiRaterCase]:
    return [generate_volume(i, seed=0, config=Volume3DConfig(size=16)) for i in range(n)]


def _write_nnunet(cases: list[MultiRaterCase], out: Path) -> tuple[str, Path]:
    return "nnunet-raw", write_nnunet_raw(cases, out)


def _write_datalist(cases: list[MultiRaterCase], out: Path) -> tuple[str, Path]:
    return "monai-datalist", write_monai_datalist(cases, out)


WRITERS = {"nnunet": _write_nnunet, "datalist": _write_datalist}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("dims", [2, 3])
def test_round_trip(tmp_path: Path, writer: str, dims: int) -> None:
    cases = _fundus() if dims == 2 else _volumes()
    fmt, root = WRITERS[writer](cases, tmp_path / "out")
    src = open_source(fmt, str(root))
    assert src.structures == cases[0].structures and src.spatial_dims == dims
    assert src.case_ids == [c.case_id for c in cases]
    for i, case in enumerate(cases):
        back = src.load(i)
        assert back.image.dtype == np.float32 and back.masks.dtype == np.uint8
        np.testing.assert_array_equal(back.image, case.image)
        np.testing.assert_array_equal(back.masks, case.masks)
        assert back.n_raters == case.n_raters == (6 if dims == 2 else 4)
        if dims == 3:
            assert back.spacing == pytest.approx(case.spacing)
            np.testing.assert_allclose(back.affine, case.affine, atol=1e-4)
    spec = json.loads(((root / "dataset.json") if root.is_dir() else root).read_text())
    if dims == 2:  # the cup lies inside the disc: the disc is a region
        nested = spec["labels"] if writer == "nnunet" else spec["edue_structures"]
        assert nested["disc"] == [1, 2] and nested["cup"] == [2]
    else:  # GTVp and GTVn never overlap: plain values 1, 2
        if writer == "nnunet":
            assert spec["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2}
        else:
            assert "edue_structures" not in spec
            assert spec["labels"] == {"0": "background", "1": "GTVp", "2": "GTVn"}


def test_writers_refuse_what_a_label_map_cannot_hold(tmp_path: Path) -> None:
    cases = _fundus(2)
    crossing = cases[1].masks.copy()
    crossing[0, 1, 0, 0] = 1  # rater 0's cup pokes out of the disc
    crossing[0, 0, 0, 0] = 0
    bad = MultiRaterCase(
        image=cases[1].image, masks=crossing, case_id="x", structures=cases[1].structures
    )
    for write in (write_nnunet_raw, write_monai_datalist):
        with pytest.raises(DataError, match="overlap without 'cup' lying inside 'disc'"):
            write([cases[0], bad], tmp_path / write.__name__)
    fewer = MultiRaterCase(
        image=cases[1].image, masks=cases[1].masks[:4], case_id="y", structures=cases[1].structures
    )
    with pytest.raises(DataError, match="4 raters but the first case has 6"):
        write_nnunet_raw([cases[0], fewer], tmp_path / "n")
    path = write_monai_datalist([cases[0], fewer], tmp_path / "d")  # a datalist can
    assert open_source("monai-datalist", str(path)).load(1).n_raters == 4
    with pytest.raises(DataError, match="not 8-bit levels"):
        write_nnunet_raw(cases, tmp_path / "png", file_ending=".png")
    eight_bit = [
        MultiRaterCase(
            image=np.round(c.image * 255).astype(np.float32) / np.float32(255),
            masks=c.masks,
            case_id=c.case_id,
            structures=c.structures,
        )
        for c in cases
    ]
    root = write_nnunet_raw(eight_bit, tmp_path / "png8", file_ending=".png")
    back = open_source("nnunet-raw", str(root)).load(1)
    np.testing.assert_array_equal(back.image, eight_bit[1].image)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("layout", ["monai-datalist-2d-png", "nnunet-raw-3d-nifti"])
def test_three_rater_layouts_train_and_evaluate_end_to_end(layout: str, tmp_path: Path) -> None:
    """A datalist of 2D PNGs and an nnU-Net folder of NIfTI volumes, three raters each
    (written here), train an epoch and evaluate against all three raters."""
    from edue.cli import main

    root = tmp_path / "data"
    root.mkdir()
    if layout.startswith("monai"):
        _png_datalist(root, n_train=5)
        fmt = "monai-datalist"
    else:
        _nnunet_3d(root, n_cases=5)
        fmt = "nnunet-raw"
    run = tmp_path / "run"
    args = [
        "train",
        f"data.format={fmt}",
        f"data.root={root}",
        "data.split={train: 3, val: 1, test: 1}",
        "model.channels=[4, 8]",
        "train.epochs=1",
        "train.batch_size=2",
        "train.device=cpu",
        "method.skip_first=0",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    structures = ["GTVp", "GTVn"] if fmt == "monai-datalist" else ["GTVp", "GTVn", "tumour"]
    assert metrics["structures"] == structures
    for name in structures:  # scored against the three raters: their vote and spread
        for metric in ("soft_dice", "pixel_ncc", "ged"):
            assert f"{metric}/{name}/mean" in metrics["metrics"], (metric, name)
        assert metrics["metrics"][f"expert_sv/{name}/mean"] > 0  # the raters disagree
    rows = (tmp_path / "eval" / "per_case.csv").read_text().strip().splitlines()
    n_test = int(metrics["metrics"]["n_cases"])  # the split keeps a patient's cases together
    assert n_test >= 1 and len(rows) == 1 + n_test


def test_edue_data_convert_round_trips_the_embedded_dataset_through_both_layouts(tmp_path):
    from edue.cli import main

    nn_dir, ml_dir = tmp_path / "nn", tmp_path / "ml"
    synth = ["--format", "synthetic", "--option", "n=4", "--option", "size=32"]
    assert main(["data", "convert", *synth, "--to", "nnunet-raw", "--out", str(nn_dir)]) == 0
    convert = ["data", "convert", str(nn_dir), "--format", "nnunet-raw"]
    assert main([*convert, "--to", "monai-datalist", "--out", str(ml_dir)]) == 0
    original = list(open_source("synthetic", n=4, size=32))
    back = list(open_source("monai-datalist", str(ml_dir)))
    assert [c.case_id for c in back] == [c.case_id for c in original]
    for a, b in zip(original, back, strict=True):
        assert b.structures == a.structures
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_array_equal(b.masks, a.masks)
    # the output may not be inside the input
    assert main([*convert, "--to", "monai-datalist", "--out", str(nn_dir / "x")]) == 2
    # a missing dataset is one error, and no output folder is left behind
    missing = ["data", "convert", str(tmp_path / "nope"), "--format", "nnunet-raw"]
    assert main([*missing, "--to", "monai-datalist", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_bad_layouts_end_edue_data_check_with_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    """The command-line face of the errors above: one line naming the file, exit 2."""
    from edue.cli import main

    def check(root: Path, fmt: str, names: str, says: str) -> None:
        assert main(["data", "check", str(root), "--format", fmt]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and names in err and says in err, err

    datalist = tmp_path / "datalist"
    datalist.mkdir()
    spec = _png_datalist(datalist)
    (datalist / spec["training"][2]["label"][1]).unlink()  # an entry's missing file
    check(datalist, "monai-datalist", "case2_r2.png", "label file not found")
    spec = _png_datalist(datalist)
    spec["training"][3]["label"] = spec["training"][3]["label"][:1]
    _rewrite(datalist, spec)
    check(datalist, "monai-datalist", "dataset.json", "label lists of different lengths")
    nnunet = tmp_path / "nnunet"
    nnunet.mkdir()
    _nnunet_3d(nnunet, n_cases=2)
    described = json.loads((nnunet / "dataset.json").read_text())
    _rewrite(nnunet, {k: v for k, v in described.items() if k != "labels"})
    check(nnunet, "nnunet-raw", "dataset.json", "no 'labels'")
