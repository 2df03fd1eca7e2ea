"""QUBIQ reader on tiny fake task folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edue.data.qubiq import QubiqSource
from edue.data.source import open_source
from edue.errors import DataError
from tests.fake_layouts import write_nifti, write_qubiq_case


def _prostate(root: Path) -> None:
    """Two 2D cases, two sub-tasks; case01 has a trailing axis and an empty rater."""
    for case, trailing in (("case01", True), ("case02", False)):
        img = np.arange(32 * 24, dtype=np.float32).reshape(32, 24)
        masks = {}
        for task in (1, 2):
            for rater in (1, 2, 3):
                m = np.zeros((32, 24), np.uint8)
                if not (case == "case01" and rater == 2 and task == 1):
                    m[2 + rater : 10, 3 * task : 12] = 1
                masks[task, rater] = m[..., None] if trailing else m
        write_qubiq_case(root, "prostate", case, img[..., None] if trailing else img, masks)


def test_qubiq_2d_trailing_axis_and_empty_mask(tmp_path: Path) -> None:
    _prostate(tmp_path)
    src = open_source("qubiq", str(tmp_path), task="prostate")
    assert src.case_ids == ["case01", "case02"]
    assert src.structures == ("task01", "task02") and src.spatial_dims == 2
    case = src.load(0)
    assert case.image.shape == (1, 32, 24)
    # orientation: image value = row * 24 + col in stored voxel order
    assert case.image[0, 5, 7] == 5 * 24 + 7
    assert case.masks.shape == (3, 2, 32, 24)
    assert case.masks[1, 0].sum() == 0  # empty rater mask kept
    assert case.masks[0, 0, 3, 3] == 1 and case.masks[0, 0, 2, 3] == 0
    assert case.masks[0, 0, 3, 2] == 0
    assert case.masks[2, 1, 5, 6] == 1 and case.masks[2, 1, 5, 5] == 0
    assert case.meta["raters"] == ["seg01", "seg02", "seg03"]
    one = QubiqSource(tmp_path / "prostate", subtasks=[2])
    assert one.structures == ("task02",) and one.load(1).masks.shape == (3, 1, 32, 24)


def test_qubiq_multimodal_and_uneven_raters(tmp_path: Path) -> None:
    image = np.zeros((20, 16, 4), np.float32)
    for c in range(4):
        image[c, c + 1, c] = 10.0 + c  # modality c marked at voxel (c, c + 1)
    masks = {}
    for task, raters in ((1, (1, 2, 3)), (2, (1, 2, 3)), (3, (1, 3))):
        for r in raters:
            m = np.zeros((20, 16), np.float32)  # float masks holding 0/1 are accepted
            m[task, r] = 1.0
            masks[task, r] = m
    write_qubiq_case(tmp_path, "brain-tumor", "case1", image, masks)
    src = QubiqSource(tmp_path, task="brain-tumor")
    case = src.load(0)
    assert case.image.shape == (4, 20, 16)
    for c in range(4):
        assert case.image[c, c, c + 1] == 10.0 + c
    # sub-task 3 has raters 1 and 3 only: rater 2 is dropped for all structures
    assert case.masks.shape == (2, 3, 20, 16)
    assert case.meta["raters"] == ["seg01", "seg03"]
    assert case.meta["dropped_raters"] == ["seg02"]
    assert case.masks[1, 2, 3, 3] == 1 and case.masks[0, 0, 1, 1] == 1
    sub = QubiqSource(tmp_path, task="brain-tumor", subtasks=[1, 2])
    assert sub.load(0).n_raters == 3


def test_qubiq_3d_volumes(tmp_path: Path) -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    vol = np.zeros((16, 12, 8), np.int16)
    vol[3, 4, 5] = 100
    masks = {}
    for r in (1, 2):
        masks[1, r] = np.zeros((16, 12, 8), np.uint8)
        masks[1, r][3, 4, 5 - r : 6] = 1
    for name in ("case1-1", "case1-2", "case2-1"):
        write_qubiq_case(tmp_path, "pancreas", name, vol, masks, affine)
    src = QubiqSource(tmp_path, task="pancreas")
    assert src.spatial_dims == 3
    assert src.patient_ids == ["case1", "case1", "case2"]
    case = src.load(2)
    assert case.image.shape == (1, 16, 12, 8) and case.image[0, 3, 4, 5] == 100
    assert case.masks.shape == (2, 1, 16, 12, 8)
    assert case.masks[0].sum() == 2 and case.masks[1].sum() == 3
    assert case.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_allclose(case.affine, affine)


def test_qubiq_errors(tmp_path: Path) -> None:
    _prostate(tmp_path / "a")
    _prostate(tmp_path / "b")
    with pytest.raises(DataError, match="choose one with task"):
        QubiqSource(tmp_path / "a")
    with pytest.raises(DataError, match=r"sub-tasks \[5\] not found"):
        QubiqSource(tmp_path / "a", task="prostate", subtasks=[5])
    bad = tmp_path / "b" / "prostate" / "Training" / "case02" / "task01_seg03.nii.gz"
    write_nifti(bad, np.full((32, 24), 3, np.uint8))
    src = QubiqSource(tmp_path / "b", task="prostate")
    with pytest.raises(DataError, match="0/1") as err:
        src.load(1)
    assert "task01_seg03" in str(err.value)
