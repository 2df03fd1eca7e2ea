"""Random and broken inputs: every failure is the project's own clear error."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edue.cli import main
from edue.engine.inference.predictor import Predictor
from edue.errors import EdueError
from edue.io import read_image, read_label_map

SUFFIXES = [".png", ".tif", ".jpg", ".npy", ".nii.gz", ".bmp"]
# derandomize: the same examples on every run, so a failure reproduces
FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])
shapes = st.lists(st.integers(1, 9), min_size=1, max_size=5).map(tuple)


def _encode(array: np.ndarray, suffix: str) -> bytes:
    """Bytes of ``array`` in ``suffix``'s format, or raw bytes when it cannot be encoded."""
    buffer = io.BytesIO()
    try:
        if suffix == ".npy":
            np.save(buffer, array)
        elif suffix == ".nii.gz":
            return nib.Nifti1Image(array.astype(np.float32), np.eye(4)).to_bytes()
        else:
            fmt = {".png": "PNG", ".tif": "TIFF", ".jpg": "JPEG", ".bmp": "BMP"}[suffix]
            Image.fromarray(array).save(buffer, format=fmt)
    except Exception:
        return array.tobytes()
    return buffer.getvalue()


@FAST
@given(
    shape=shapes,
    dtype=dtypes,
    suffix=st.sampled_from(SUFFIXES),
    cut=st.one_of(st.none(), st.integers(0, 200)),
    junk=st.binary(max_size=64),
    special=st.sampled_from([None, np.nan, np.inf, -1e30]),
)
def test_readers_fail_only_with_edue_errors(tmp_path, shape, dtype, suffix, cut, junk, special):
    array = (np.random.default_rng(0).random(shape) * 300).astype(dtype)
    if special is not None and np.issubdtype(array.dtype, np.floating):
        array.flat[0] = special
    data = _encode(array, suffix)
    data = data[:cut] + junk if cut is not None else data
    path = tmp_path / f"sample{suffix}"
    path.write_bytes(data)
    for reader in (read_image, read_label_map):
        for dims in (None, 2, 3):
            try:
                reader(path, dims)
            except EdueError as exc:
                assert str(path) in str(exc)


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_checkpoint(tiny_run)


@FAST
@given(shape=shapes, dtype=dtypes, special=st.sampled_from([None, np.nan, np.inf]))
def test_predict_rejects_bad_arrays_clearly(predictor, shape, dtype, special):
    array = (np.random.default_rng(1).random(shape) * 10).astype(dtype)
    if special is not None and np.issubdtype(array.dtype, np.floating):
        array.flat[0] = special
    try:
        pred = predictor.predict(array)
    except EdueError as exc:
        assert "image" in str(exc)
    else:
        assert pred.members.shape[2:] == array.shape[1:]


def test_skip_bad_predicts_the_good_and_names_the_bad(tiny_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    broken = set()
    for i in range(50):
        path = folder / f"img{i:02d}.png"
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(path)
        if i % 10 == 3:  # 5 broken files of different kinds
            kind = len(broken)
            if kind == 0:
                path.write_bytes(path.read_bytes()[:50])  # truncated
            elif kind == 1:
                path.write_bytes(b"")  # empty
            elif kind == 2:
                Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(path)  # 1 ch
            elif kind == 3:
                path.write_bytes(b"GIF89a not really")
            else:
                np.save(path.with_suffix(".npy"), np.full((3, 8, 8), np.nan, np.float32))
                path.unlink()
                path = path.with_suffix(".npy")
            broken.add(path.name)
    out = tmp_path / "out"
    code = main(
        ["predict", str(tiny_run), str(folder), "--out", str(out), "--skip-bad", "--no-figures"]
    )
    assert code == 1
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["predictions"]) == 45
    assert {item["input"].split("/")[-1] for item in summary["failed"]} == broken
    assert len(list(out.glob("*.npz"))) == 45
    printed = capsys.readouterr()
    assert "predicted 45 image(s), 5 failed" in printed.out
    assert all(name in printed.out for name in broken)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cut=st.integers(0, 4000), junk=st.binary(max_size=32))
def test_damaged_checkpoints_are_checkpoint_errors(tiny_run, tmp_path, cut, junk):
    from edue.engine.checkpoint import load_checkpoint
    from edue.errors import CheckpointError

    data = (tiny_run / "best.pt").read_bytes()
    path = tmp_path / "damaged.pt"
    path.write_bytes(data[:cut] + junk)
    with pytest.raises(CheckpointError, match="damaged.pt"):
        load_checkpoint(path)


def test_altered_weights_fail_the_hash(tiny_run, tmp_path):
    import torch

    from edue.engine.checkpoint import load_checkpoint
    from edue.errors import CheckpointError

    state = torch.load(tiny_run / "best.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1
    torch.save(state, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "altered.pt")
