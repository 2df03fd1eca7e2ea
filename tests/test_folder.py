import json

import numpy as np
import pytest
from PIL import Image

from edue.data.folder import FolderSource, decode_labels, encode_labels, write_folder_dataset
from edue.errors import DataError
from tests.conftest import make_case
from tests.fake_layouts import write_folder_case


def test_roundtrip_nested_structures(tmp_path, rng):
    cases = [make_case(rng, n_raters=r, case_id=f"c{r}") for r in (2, 4)]
    root = write_folder_dataset(cases, tmp_path / "ds")
    spec = json.loads((root / "dataset.json").read_text())
    assert spec["structures"] == ["disc", "cup"]
    assert spec["labels"] == {"disc": [127, 255], "cup": [255]}  # RIGA-like nesting encoding
    source = FolderSource(root)
    assert source.case_ids == ["c2", "c4"]
    for original, i in zip(cases, range(2), strict=True):
        loaded = source.load(i)
        assert loaded.n_raters == original.n_raters
        np.testing.assert_array_equal(loaded.masks, original.masks)
        # PNG stores 8 bits: the image comes back within half a grey level
        assert np.abs(loaded.image - original.image).max() <= 0.5 / 255 + 1e-6


def test_bit_encoding_for_overlapping_structures():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2] = 1
    masks[1, :, :2] = 1  # overlaps structure 0 without being nested
    label_map, labels = encode_labels(masks, ("a", "b"), nested=False)
    assert labels == {"a": [1, 3], "b": [2, 3]}
    np.testing.assert_array_equal(decode_labels(label_map, labels, ("a", "b"), "x"), masks)


def _write_one(tmp_path, image, mask, labels=None):
    spec = {"structures": ["lesion"], "labels": labels or {"lesion": [1, 255]}}
    return write_folder_case(tmp_path / "ds", "c1", image, {"a": mask, "b": mask}, spec)


def test_unexpected_mask_values_name_the_file(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 7
    root = _write_one(tmp_path, np.zeros((8, 8), np.uint8), mask)
    with pytest.raises(DataError, match=r"rater_a\.png.*values \[7\]"):
        FolderSource(root).load(0)


def test_mask_size_mismatch_names_the_file(tmp_path):
    root = _write_one(tmp_path, np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(root / "c1" / "rater_b.png")
    with pytest.raises(DataError, match=r"rater_b\.png.*differs from image size"):
        FolderSource(root).load(0)


def test_truncated_png_is_a_clear_error(tmp_path):
    root = _write_one(tmp_path, np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8))
    path = root / "c1" / "image.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"image\.png: cannot read file"):
        FolderSource(root).load(0)


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DataError, match="dataset.json not found"):
        FolderSource(tmp_path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_decode_labels_matches_isin_for_every_dtype(dtype):
    rng = np.random.default_rng(3)
    label_map = rng.choice([0, 1, 2, 3, 200], size=(2, 17, 9)).astype(dtype)
    labels = {"a": [1, 3, 200], "b": [2], "c": [3, 2]}
    masks = decode_labels(label_map, labels, ("a", "b", "c"), "x")
    assert masks.dtype == np.uint8 and masks.shape == (3, 2, 17, 9)
    for k, name in enumerate(("a", "b", "c")):
        np.testing.assert_array_equal(masks[k], np.isin(label_map, labels[name]))
    with pytest.raises(DataError, match=r"values \[200\]"):
        decode_labels(label_map, {"a": [1, 3], "b": [2]}, ("a", "b"), "x")
