"""HECKTOR-style PET/CT reader: both layouts, resampling, orientation, 2D/3D modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edue.data.hecktor import HecktorSource, axial_axis, resample_to
from edue.data.hecktor_layout import modality_of
from edue.data.source import open_source
from edue.errors import DataError
from tests.fake_layouts import Nii, Volume, write_hecktor_challenge, write_hecktor_patient

# label/CT-like grid: 16×16×12 voxels of 1×1×2 mm, x axis flipped (world x = 15 − i)
LABEL_AFFINE = np.array([[-1.0, 0, 0, 15], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])
CT_AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # same field, not flipped
PET_AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])  # coarser PET: 8×8×6
CT_MARK, PET_MARK = (2, 3, 4), (3, 2, 1)
# where the markers land on the label grid (through world coordinates)
CT_MARK_ON_LABEL, PET_MARK_ON_LABEL = (13, 3, 4), (9, 4, 2)


def _ct_pet() -> tuple[Volume, Volume]:
    """A CT (16×16×12, −1000 HU but one marker) and a coarser PET (8×8×6, one marker)."""
    ct = np.full((16, 16, 12), -1000.0, np.float32)
    ct[CT_MARK] = 250.0
    pet = np.zeros((8, 8, 6), np.float32)
    pet[PET_MARK] = 5.0
    return (ct, CT_AFFINE), (pet, PET_AFFINE)


def _images(ct_name: str, pet_name: str) -> list[Nii]:
    """:func:`_ct_pet` under these file names."""
    ct, pet = _ct_pet()
    return [(ct_name, *ct), (pet_name, *pet)]


def _label(slices: dict[int, int], extra: tuple | None = None) -> np.ndarray:
    lab = np.zeros((16, 16, 12), np.uint8)
    for z, value in slices.items():
        lab[10:14, 2:6, z] = value
    if extra is not None:
        lab[extra[:3]] = extra[3]
    return lab


@pytest.fixture()
def multi_annotator(tmp_path: Path) -> Path:
    write_hecktor_patient(
        tmp_path,
        "P1",
        _images("P1_CT.nii.gz", "P1_PET.nii.gz"),
        {
            "alice": ("gtv.nii.gz", _label({4: 1, 5: 2}), LABEL_AFFINE),
            "bob": ("bob.nii.gz", _label({4: 1, 6: 1}), LABEL_AFFINE),
        },
        official=("P1.nii.gz", _label({4: 1}), LABEL_AFFINE),
    )
    seg = "seg.nii.gz"
    annotators = {  # a3 drew nothing: an empty rater mask
        name: (seg, lab, LABEL_AFFINE)
        for name, lab in (("a1", _label({7: 2})), ("a2", _label({7: 1})), ("a3", _label({})))
    }
    # a4's label is stored on the unflipped CT grid: voxel (2, 3, 8) = label voxel (13, 3, 8)
    annotators["a4"] = (seg, _label({}, (2, 3, 8, 2)), CT_AFFINE)
    write_hecktor_patient(tmp_path, "P2", _images("ct.nii.gz", "pt.nii.gz"), annotators)
    return tmp_path


def _challenge(root: Path, image_id: str, label_name: str, label: np.ndarray) -> None:
    write_hecktor_challenge(root, image_id, *_ct_pet(), (label_name, label, LABEL_AFFINE))


def test_geometry_helpers() -> None:
    assert modality_of(Path("CHUM-001__CT.nii.gz")) == "CT"
    assert modality_of(Path("CHUM-001__PT.nii.gz")) == "PET"
    assert modality_of(Path("x_pet.nii.gz")) == "PET"
    assert modality_of(Path("project.nii.gz")) is None
    assert axial_axis(LABEL_AFFINE) == 2
    vol = np.zeros((8, 8, 6), np.float32)
    vol[PET_MARK] = 1
    out = resample_to(vol, PET_AFFINE, LABEL_AFFINE, (16, 16, 12), order=1)
    assert np.unravel_index(out.argmax(), out.shape) == PET_MARK_ON_LABEL
    assert out[PET_MARK_ON_LABEL] == pytest.approx(1.0)


def test_3d_volumes_resampled_onto_label_grid(multi_annotator: Path) -> None:
    src = open_source("hecktor", str(multi_annotator), mode="3d")
    assert src.case_ids == ["P1", "P2"] and src.spatial_dims == 3
    assert src.structures == ("GTVp", "GTVn")
    case = src.load(0)
    assert case.image.shape == (2, 16, 16, 12)
    ct, pet = case.image
    assert np.unravel_index(ct.argmax(), ct.shape) == CT_MARK_ON_LABEL
    assert ct[CT_MARK_ON_LABEL] == pytest.approx(1.0)  # 250 HU at the top of the window
    assert ct[0, 0, 0] == pytest.approx(0.0)  # -1000 HU clipped
    assert np.unravel_index(pet.argmax(), pet.shape) == PET_MARK_ON_LABEL
    assert pet[PET_MARK_ON_LABEL] == pytest.approx(0.5)  # SUV 5 / suv_max 10
    assert case.meta["raters"] == ["alice", "bob", "labelsTs"]
    assert case.masks.shape == (3, 2, 16, 16, 12)
    assert case.masks[0, 1, 10, 2, 5] == 1 and case.masks[0, 0, 10, 2, 5] == 0
    assert case.masks[1, 0, 10:14, 2:6, 6].all() and case.masks[2, 0].sum() == 16
    assert case.spacing == pytest.approx((1.0, 1.0, 2.0))
    np.testing.assert_allclose(case.affine, LABEL_AFFINE)
    p2 = src.load(1)
    assert p2.n_raters == 4 and p2.masks[2].sum() == 0
    assert p2.masks[3, 1, 13, 3, 8] == 1 and p2.masks[3].sum() == 1  # resampled label


def test_2d_mode_keeps_annotated_slices(multi_annotator: Path) -> None:
    src = HecktorSource(multi_annotator, mode="2d")
    assert src.case_ids == ["P1_z004", "P1_z005", "P1_z006", "P2_z007", "P2_z008"]
    assert src.patient_ids == ["P1", "P1", "P1", "P2", "P2"]
    case = src.load(0)
    assert case.image.shape == (2, 16, 16) and case.masks.shape == (3, 2, 16, 16)
    assert np.unravel_index(case.image[0].argmax(), (16, 16)) == CT_MARK_ON_LABEL[:2]
    assert case.masks[:, 0, 10:14, 2:6].all() and case.spacing == pytest.approx((1.0, 1.0))
    z6 = src.load(2)  # only bob drew on slice 6
    assert z6.masks[1, 0].sum() == 16 and z6.masks[0].sum() == 0
    no_official = HecktorSource(multi_annotator, mode="2d", include_official=False)
    assert no_official.load(0).meta["raters"] == ["alice", "bob"]
    raw = HecktorSource(multi_annotator, mode="3d", ct_window=None, suv_max=None).load(0)
    assert raw.image[0][CT_MARK_ON_LABEL] == pytest.approx(250.0)
    assert raw.image[1][PET_MARK_ON_LABEL] == pytest.approx(5.0)


def test_challenge_layout_with_mixed_ids(tmp_path: Path) -> None:
    _challenge(tmp_path, "CHUM-001", "CHUM_001.nii.gz", _label({3: 1}, (13, 3, 4, 2)))
    src = HecktorSource(tmp_path, mode="3d")
    assert src.case_ids == ["CHUM_001"]
    case = src.load(0)
    assert case.n_raters == 1 and case.meta["raters"] == ["official"]
    assert case.masks[0, 1, 13, 3, 4] == 1 and case.masks[0, 0, 13, 3, 4] == 0
    assert np.unravel_index(case.image[1].argmax(), (16, 16, 12)) == PET_MARK_ON_LABEL
    assert HecktorSource(tmp_path).case_ids == ["CHUM_001_z003", "CHUM_001_z004"]


def test_bad_label_value_named(tmp_path: Path) -> None:
    _challenge(tmp_path, "A-1", "A-1.nii.gz", _label({3: 5}))
    with pytest.raises(DataError, match=r"unexpected label values \[0, 5\]") as err:
        HecktorSource(tmp_path, mode="3d").load(0)
    assert "A-1.nii.gz" in str(err.value)


def test_2d_slice_folders(tmp_path: Path) -> None:
    s1 = tmp_path / "S1"
    (s1 / "images").mkdir(parents=True)
    img = np.zeros((20, 24, 2), np.float32)
    img[1, 2, 0], img[3, 4, 1] = 0.7, 0.9
    np.save(s1 / "images" / "slice_010.npy", img)
    np.save(s1 / "images" / "slice_011.npy", np.moveaxis(img, -1, 0))  # channels first too
    for ann, value in (("annA", 1), ("annB", 2)):
        (s1 / "labels" / ann).mkdir(parents=True)
        for name in ("slice_010", "slice_011"):
            lab = np.zeros((20, 24), np.uint8)
            lab[5, 6] = value
            Image.fromarray(lab).save(s1 / "labels" / ann / f"{name}.png")
    s2 = tmp_path / "S2"
    (s2 / "images").mkdir(parents=True)
    ct, pt = np.zeros((20, 24), np.uint8), np.zeros((20, 24), np.uint8)
    ct[0, 1], pt[2, 3] = 255, 51
    Image.fromarray(ct).save(s2 / "images" / "012_CT.png")
    Image.fromarray(pt).save(s2 / "images" / "012_PT.png")
    for ann in ("x", "y"):
        (s2 / "labels" / ann).mkdir(parents=True)
    np.save(s2 / "labels" / "x" / "012.npy", np.ones((20, 24), np.uint8))  # y's file missing
    src = open_source("hecktor", str(tmp_path), mode="2d")
    assert src.case_ids == ["S1_slice_010", "S1_slice_011", "S2_012"]
    for i in (0, 1):
        case = src.load(i)
        assert case.image.shape == (2, 20, 24)
        assert case.image[0, 1, 2] == pytest.approx(0.7)
        assert case.image[1, 3, 4] == pytest.approx(0.9)
        assert case.masks[0, 0, 5, 6] == 1 and case.masks[1, 1, 5, 6] == 1
        assert case.masks.sum() == 2
    with pytest.raises(DataError, match="missing label file of annotator 'y'"):
        src.load(2)
    with pytest.raises(DataError, match="mode: 2d"):
        HecktorSource(tmp_path, mode="3d")
    (s2 / "labels" / "y").rmdir()
    case = HecktorSource(tmp_path).load(2)
    assert case.image[0, 0, 1] == pytest.approx(1.0) and case.image[1, 2, 3] == pytest.approx(0.2)
    assert case.masks[0, 0].all()


def test_keep_empty_and_pickling(multi_annotator: Path) -> None:
    import pickle

    src = HecktorSource(multi_annotator, mode="2d", keep_empty=True)
    assert len(src) == 2 * 12 and src.case_ids[0] == "P1_z000"
    assert src.load(0).masks.sum() == 0
    clone = pickle.loads(pickle.dumps(src))
    assert clone._cache == {}
    np.testing.assert_array_equal(clone.load(4).masks, src.load(4).masks)


def test_bad_patient_reported_not_fatal(multi_annotator: Path) -> None:
    from edue.data.check import check_dataset

    (multi_annotator / "P2" / "labels" / "a2" / "seg.nii.gz").write_bytes(b"broken")
    extra = write_hecktor_patient(multi_annotator, "P3", _images("ct.nii.gz", "pet.nii.gz"), {})
    (extra / "labels" / "only").mkdir(parents=True)  # an annotator folder without a label
    src = HecktorSource(multi_annotator, mode="2d")
    assert src.case_ids == ["P1_z004", "P1_z005", "P1_z006", "P2_unreadable", "P3_unreadable"]
    report = check_dataset(src)
    assert report.bad_indices == [3, 4]
    assert "a2" in report.problems[0] and "cannot read" in report.problems[0]
    assert "expected one label volume, found 0" in report.problems[1]
    assert report.raters == {3: 3}
    # by hand: one of three raters marks 16 px on one slice -> SV 16 × 1/3 there, 0 elsewhere
    assert report.sv["GTVp"] == pytest.approx((0.0, 0.0, 16 / 3))  # bob alone on z6
    assert report.sv["GTVn"] == pytest.approx((0.0, 0.0, 16 / 3))  # alice alone on z5
