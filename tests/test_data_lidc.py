"""LIDC readers (pickle and HDF5) and the restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from edue.data.lidc import LidcHdf5Source, LidcPickleSource
from edue.data.safe_pickle import read_bytes_chunked, safe_load, safe_loads
from edue.data.source import open_source
from edue.errors import DataError
from tests.fake_layouts import write_lidc_hdf5, write_lidc_pickle


def _entry(seed: int, empty_rater: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.random((16, 16)).astype(np.float32)
    masks = []
    for r in range(4):
        m = np.zeros((16, 16), np.uint8)
        if r != empty_rater:
            m[4 + r : 10, 5:11] = 1
        masks.append(m)
    return {"image": image, "masks": masks, "series_uid": f"1.2.3.{seed}"}


@pytest.fixture()
def lidc_pickle(tmp_path: Path) -> tuple[Path, dict]:
    data = {
        "LIDC-IDRI-0001_slice_0": _entry(0),
        "LIDC-IDRI-0001_slice_1": _entry(1, empty_rater=2),
        "LIDC-IDRI-0002_slice_0": _entry(2),
    }
    return write_lidc_pickle(tmp_path / "data_lidc.pickle", data), data


def test_pickle_reader_values_and_patients(lidc_pickle: tuple[Path, dict]) -> None:
    path, data = lidc_pickle
    src = open_source("lidc-pickle", str(path))
    assert src.structures == ("nodule",)
    assert src.case_ids == sorted(data)
    assert src.patient_ids == ["LIDC-IDRI-0001", "LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    case = src.load(1)
    assert case.image.shape == (1, 16, 16) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image[0], data["LIDC-IDRI-0001_slice_1"]["image"])
    assert case.masks.shape == (4, 1, 16, 16)
    assert case.masks[2].sum() == 0  # the empty rater mask is kept, not an error
    assert case.masks[0, 0, 4, 5] == 1 and case.masks[3, 0, 6, 5] == 0
    assert case.masks[3, 0, 7, 5] == 1
    assert case.meta["series_uid"] == "1.2.3.1"
    assert case.meta["label_values"] == [0, 1]


def test_pickle_protocol2_and_folder_root(tmp_path: Path) -> None:
    data = {"P7_a": _entry(3)}
    write_lidc_pickle(tmp_path / "lidc.pkl", data, protocol=2)
    src = LidcPickleSource(tmp_path)
    np.testing.assert_array_equal(src.load(0).image[0], data["P7_a"]["image"])
    assert src.patient_ids == ["P7"]


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.target}",))


class _EvilWrite:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(self.target), "pwned"))


@pytest.mark.parametrize("evil", [_Evil, _EvilWrite])
def test_malicious_pickle_refused_without_side_effect(tmp_path: Path, evil: type) -> None:
    marker = tmp_path / "side_effect.txt"
    payload = {"LIDC-IDRI-0001_x": {"image": evil(str(marker)), "masks": [], "series_uid": ""}}
    path = write_lidc_pickle(tmp_path / "evil.pickle", payload)
    with pytest.raises(DataError) as err:
        LidcPickleSource(path)
    assert str(path) in str(err.value)
    assert "not allowed" in str(err.value)
    called = evil(str(marker)).__reduce__()[0]  # os.system or Path.write_text
    assert f"'{called.__module__}.{called.__qualname__}'" in str(err.value)
    assert not marker.exists()


def test_safe_loads_refuses_builtin_eval(tmp_path: Path) -> None:
    class _Eval:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, ("1+1",))

    with pytest.raises(DataError, match="builtins.eval"):
        safe_loads(pickle.dumps(_Eval()), "x.pkl")
    # numpy arrays, scalars and containers are rebuilt exactly
    obj = {"a": [np.arange(5, dtype=np.int16), np.float64(2.5)], "b": (1, "s", {3})}
    back = safe_loads(pickle.dumps(obj, protocol=5))
    np.testing.assert_array_equal(back["a"][0], obj["a"][0])
    assert back["a"][0].dtype == np.int16 and back["a"][1] == 2.5 and back["b"] == (1, "s", {3})


def test_chunked_read_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.pkl"
    payload = pickle.dumps(list(range(1000)))
    path.write_bytes(payload)
    assert read_bytes_chunked(path, chunk=7) == payload
    assert safe_load(path) == list(range(1000))
    path.write_bytes(payload[:20])
    with pytest.raises(DataError, match="cannot unpickle"):
        safe_load(path)
    with pytest.raises(DataError, match="not found"):
        safe_load(tmp_path / "missing.pkl")


def test_pickle_bad_mask_values(tmp_path: Path) -> None:
    entry = _entry(0)
    entry["masks"][1][0, 0] = 7
    path = write_lidc_pickle(tmp_path / "d.pickle", {"P1_s": entry})
    with pytest.raises(DataError, match="0/1"):
        LidcPickleSource(path).load(0)


@pytest.mark.parametrize("rater_last", [True, False])
def test_hdf5_reader(tmp_path: Path, rater_last: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((5, 16, 16)) - 0.5
    labels = np.zeros((5, 16, 16, 4), np.uint8)
    labels[2, 3, 4, 1] = 1  # rater 1 of case 2 marks pixel (3, 4)
    stored = labels if rater_last else np.moveaxis(labels, -1, 1)
    uids = np.array([11, 11, 12, 13, 14])
    groups = {
        group: {"images": images[sl], "labels": stored[sl], "uids": uids[sl]}
        for group, sl in (("train", slice(0, 3)), ("test", slice(3, 5)))
    }
    path = write_lidc_hdf5(tmp_path / "data_lidc.hdf5", groups)
    src = open_source("lidc-hdf5", str(path), group="train")
    assert len(src) == 3 and src.patient_ids == ["11", "11", "12"]
    case = src.load(2)
    np.testing.assert_allclose(case.image[0], images[2] + 0.5, atol=1e-6)
    assert case.masks.shape == (4, 1, 16, 16)
    assert case.masks[1, 0, 3, 4] == 1 and case.masks.sum() == 1
    raw = LidcHdf5Source(path, group="test", restore_range=False)
    np.testing.assert_allclose(raw.load(0).image[0], images[3], atol=1e-6)
    with pytest.raises(DataError, match="no group 'val'"):
        LidcHdf5Source(path, group="val")


def test_hdf5_source_survives_pickling_after_use(tmp_path: Path) -> None:
    train = {"images": np.zeros((2, 8, 8)), "labels": np.ones((2, 8, 8, 4), np.uint8)}
    path = write_lidc_hdf5(tmp_path / "d.h5", {"train": train})
    src = LidcHdf5Source(path)
    assert src.load(0).masks.sum() == 4 * 64  # opens a handle
    clone = pickle.loads(pickle.dumps(src))  # as for DataLoader workers
    assert clone.load(1).masks.sum() == 4 * 64 and clone.patient_ids == ["0", "1"]
