"""``predict_files`` as a pipeline: same bytes as one by one, batching, failures, threads."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edue.cli import main
from edue.engine.inference.predictor import Predictor
from edue.engine.predict.files import predict_files, stem_of, write_prediction
from edue.engine.predict.pipeline import _Loaded
from edue.errors import DataError
from edue.io import read_image, write_json
from edue.report.prediction_figures import write_prediction_figure


def _png(path: Path, size: tuple[int, int], seed: int, channels: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    shape = (*size, channels) if channels > 1 else size
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(path)
    return path


def _pngs(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(exist_ok=True)
    return [_png(folder / f"img{i:02d}.png", size, seed=i) for i, size in enumerate(sizes)]


def _contents(folder: Path) -> dict[str, object]:
    """Every file's bytes; an NPZ's member by member (its zip headers carry the time of
    writing, so two writes of the same arrays differ there and only there)."""
    found: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                found[path.name] = [(name, zf.read(name)) for name in zf.namelist()]
        else:
            found[path.name] = path.read_bytes()
    return found


def _one_by_one(checkpoint: str, files: list[Path], out: Path, figures: bool) -> None:
    """The serial path: read, check, predict and write each image in turn."""
    predictor = Predictor.from_checkpoint(checkpoint, device="auto")
    out.mkdir()
    done = []
    for path in files:
        image, meta = read_image(path, predictor.spatial_dims)
        predictor.check_image(image, str(path))
        pred = predictor.predict(image, case_id=stem_of(path))
        entry = write_prediction(pred, path, out, meta.affine)
        shape = image.shape[1:]
        if predictor.input_shape(shape) != shape:
            entry["resampled"] = {
                "shape": list(shape),
                "spacing": None,
                "predicted_at": list(predictor.input_shape(shape)),
                "pixel_scale": pred.pixel_scale,
            }
        done.append(entry)
        if figures:
            write_prediction_figure(image, pred, out, stem_of(path), path.name)
    summary = {
        "checkpoint": checkpoint,
        "method": predictor.name,
        "structures": list(predictor.structures),
        "training_grid": predictor.grid.to_dict(),
        "predictions": done,
        "failed": [],
    }
    write_json(out / "predictions.json", summary)


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edue-predict")]


def test_pipeline_writes_the_bytes_of_the_serial_path(tiny_run, tmp_path):
    files = _pngs(tmp_path / "in", [(24, 24), (24, 24), (30, 20), (24, 24), (17, 33)])
    _one_by_one(str(tiny_run), files, tmp_path / "serial", figures=True)
    result = predict_files(
        str(tiny_run),
        [str(f) for f in files],
        str(tmp_path / "piped"),
        batch_size=1,
        figure_writer=write_prediction_figure,
    )
    assert [d["input"] for d in result.done] == [str(f) for f in files]
    assert _contents(tmp_path / "piped") == _contents(tmp_path / "serial")


def test_batch_sizes_1_and_8_write_the_same_bytes_with_figures(tiny_run_any_size, tmp_path):
    # Sizes of at least 208² here: below that PyTorch computes the first convolutions of
    # a single image with another kernel than those of a batch (last-bit differences).
    sizes = [(224, 224)] * 5 + [(208, 240)] * 2 + [(224, 224)]
    files = [str(f) for f in _pngs(tmp_path / "in", sizes)]
    outs = {}
    for batch_size in (1, 8):
        outs[batch_size] = tmp_path / f"batch{batch_size}"
        predict_files(
            str(tiny_run_any_size),
            files,
            str(outs[batch_size]),
            batch_size=batch_size,
            figure_writer=write_prediction_figure,
        )
    one, eight = _contents(outs[1]), _contents(outs[8])
    assert len(one) == len(files) * 6 + 1  # npz, 4 maps, overlay each; predictions.json
    assert one == eight
    summary = json.loads((outs[8] / "predictions.json").read_text())
    assert [p["input"] for p in summary["predictions"]] == files


def test_mixed_sizes_are_batched_by_runs_of_equal_shape(tiny_run_any_size, tmp_path, monkeypatch):
    sizes = [(24, 24), (24, 24), (24, 24), (20, 28), (20, 28), (24, 24), (24, 24), (16, 16)]
    files = _pngs(tmp_path / "in", sizes)
    np.save(tmp_path / "in" / "img06.npy", read_image(files[6], 2)[0].transpose(1, 2, 0))
    files[6].unlink()
    files[6] = tmp_path / "in" / "img06.npy"  # another 2D type: batched with the PNGs
    batches: list[list[tuple[int, ...]]] = []
    original = Predictor.predict_batch

    def spy(self, images, case_ids=None, spacing=None):
        batches.append([tuple(np.shape(i)) for i in images])
        return original(self, images, case_ids, spacing)

    monkeypatch.setattr(Predictor, "predict_batch", spy)
    out = tmp_path / "out"
    result = predict_files(str(tiny_run_any_size), [str(f) for f in files], str(out), batch_size=2)
    a, b, c = (3, 24, 24), (3, 20, 28), (3, 16, 16)
    assert batches == [[a, a], [a], [b, b], [a, a], [c]]
    assert [d["input"] for d in result.done] == [str(f) for f in files]
    monkeypatch.undo()
    predictor = Predictor.from_checkpoint(tiny_run_any_size)
    for path, size in zip(files, sizes, strict=True):
        arrays = np.load(out / f"{stem_of(path)}.npz")
        assert arrays["mean"].shape == (2, *size)
        alone = predictor.predict(read_image(path, 2)[0])
        np.testing.assert_allclose(arrays["members"], alone.members.numpy(), atol=1e-6)


def test_nifti_and_2d_images_of_equal_shape_are_never_batched_together():
    image = np.zeros((1, 8, 8), np.float32)
    png, nifti = _Loaded(0, Path("a.png"), image), _Loaded(1, Path("b.nii.gz"), image)
    npy = _Loaded(2, Path("c.npy"), image)
    assert png.key() != nifti.key()
    assert png.key() == npy.key()


def test_skip_bad_records_failures_in_input_order(tiny_run, tmp_path):
    files = _pngs(tmp_path / "in", [(24, 24)] * 8)
    files[2].write_bytes(files[2].read_bytes()[:60])  # truncated: the reader fails
    _png(files[4], (24, 24), seed=4, channels=1)  # one channel: the check fails
    np.save(tmp_path / "in" / "img06.npy", np.full((24, 24, 3), np.nan, np.float32))
    files[6].unlink()
    files[6] = tmp_path / "in" / "img06.npy"
    out = tmp_path / "out"
    result = predict_files(str(tiny_run), [str(f) for f in files], str(out), skip_bad=True)
    bad = [2, 4, 6]
    assert [f["input"] for f in result.failed] == [str(files[i]) for i in bad]
    reasons = [f["reason"] for f in result.failed]
    assert "cannot read file" in reasons[0]
    assert "expects 3 channel" in reasons[1]
    assert "NaN or Inf" in reasons[2]
    good = [i for i in range(8) if i not in bad]
    assert [d["input"] for d in result.done] == [str(files[i]) for i in good]
    assert sorted(p.stem for p in out.glob("*.npz")) == [f"img{i:02d}" for i in good]
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["failed"] == result.failed and summary["predictions"] == result.done


def _slow_figure(image, pred, out_dir, stem, title):
    time.sleep(0.05)  # the writers lag behind the model
    (out_dir / f"{stem}_figure.txt").write_text(title)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_bad_input_stops_the_pipeline_cleanly(tiny_run, tmp_path, batch_size):
    files = _pngs(tmp_path / "in", [(24, 24)] * 9)
    files[5].write_bytes(b"\x89PNG\r\n garbage")
    before = set(threading.enumerate())
    out = tmp_path / "out"
    with pytest.raises(DataError, match="cannot read file") as caught:
        predict_files(
            str(tiny_run),
            [str(f) for f in files],
            str(out),
            batch_size=batch_size,
            figure_writer=_slow_figure,
        )
    assert caught.value.path == str(files[5])
    assert not _pipeline_threads()
    assert set(threading.enumerate()) <= before
    # everything before the bad input is written, nothing after it, no summary
    assert sorted(p.stem for p in out.glob("*.npz")) == [f"img{i:02d}" for i in range(5)]
    assert len(list(out.glob("*_figure.txt"))) == 5
    assert not (out / "predictions.json").exists()


def test_a_failing_figure_writer_stops_the_pipeline(tiny_run, tmp_path):
    files = _pngs(tmp_path / "in", [(24, 24)] * 12)

    def failing(image, pred, out_dir, stem, title):
        if stem == "img03":
            raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        predict_files(
            str(tiny_run),
            [str(f) for f in files],
            str(tmp_path / "out"),
            skip_bad=True,  # only DataErrors are skipped
            figure_writer=failing,
        )
    assert not _pipeline_threads()
    assert not (tmp_path / "out" / "predictions.json").exists()
    assert (tmp_path / "out" / "img02.npz").is_file()


def test_batch_size_below_one_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    path = _png(tmp_path / "x.png", (24, 24), seed=0)
    code = main(
        ["predict", str(tiny_run), str(path), "--out", str(tmp_path / "o")] + ["--batch-size", "0"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "batch size" in err[0]
