"""The three stages of ``edue predict`` (see :mod:`edue.engine.predict.files`): a reader
thread reading ahead in input order, batches of equal-sized images through the model
on the calling thread, and writer threads behind a bounded backlog."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edue.engine.inference.predictor import Predictor
from edue.engine.predict.writers import (
    FigureWriter,
    output_structures,
    prediction_entry,
    stem_of,
    write_arrays,
)
from edue.errors import DataError
from edue.io import NIFTI_SUFFIXES, read_image, suffix_of
from edue.prediction import Prediction

if TYPE_CHECKING:
    from edue.engine.predict.dicom import DicomSeries
    from edue.engine.referral.calibration import Calibration

#: At most this many input values (channels × pixels or voxels) go through the model in
#: one pass (eight RGB images of 512²); a larger image makes a batch of its own. The
#: read-ahead and the write backlog hold at most twice as many.
MAX_BATCH_VALUES = 8 * 3 * 512 * 512
#: Writer threads: the files of one image and the picture of another at the same time.
DEFAULT_WRITER_THREADS = 2


def _is_nifti(path: Path) -> bool:
    return suffix_of(path) in NIFTI_SUFFIXES


@dataclass
class _Loaded:
    """One input as the reader hands it over: its image, or why it could not be read."""

    index: int
    path: Path
    image: np.ndarray | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    error: BaseException | None = None
    series: DicomSeries | None = None  # a DICOM series read ahead of the pipeline

    @property
    def values(self) -> int:
        """Input values held (0 when unread)."""
        return 0 if self.image is None else int(self.image.size)

    @property
    def array(self) -> np.ndarray:
        """The image read (only for inputs read without error)."""
        assert self.image is not None
        return self.image

    @property
    def volume_files(self) -> bool:
        """Whether the outputs are volumes (NIfTI) rather than 2D maps (PNG): NIfTI
        input and DICOM volumes."""
        if self.series is not None:
            return self.series.spatial_dims == 3
        return _is_nifti(self.path)

    def key(self) -> tuple[bool, tuple[int, ...]]:
        """Images of equal key share a forward pass: same output type and same shape."""
        return self.volume_files, tuple(self.array.shape)


@dataclass
class _Job:
    """The outputs of one prediction, for a writer thread."""

    index: int
    path: Path
    output: str
    arrays: dict[str, np.ndarray]
    names: tuple[str, ...]
    entry: dict[str, Any]
    affine: np.ndarray | None
    values: int
    prediction: Prediction | None = None
    image: np.ndarray | None = None
    volume_files: bool = False
    series: DicomSeries | None = None  # write the DICOM outputs of this series


class _Budget:
    """Bounds what waits between two stages: items and input values.

    One item is always let in, however large, so an image bigger than the budget still
    goes through (alone). :meth:`close` wakes and refuses every waiting producer.
    """

    def __init__(self, items: int, values: int) -> None:
        self._max_items, self._max_values = items, values
        self._items = self._values = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self, values: int) -> bool:
        """Wait for room for one item of ``values``; ``False`` once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._room_for(values))
            if self._closed:
                return False
            self._items += 1
            self._values += values
            return True

    def _room_for(self, values: int) -> bool:
        if self._items == 0:
            return True
        return self._items < self._max_items and self._values + values <= self._max_values

    def release(self, values: int) -> None:
        """Give back the room of one item."""
        with self._cond:
            self._items -= 1
            self._values -= values
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse every further :meth:`acquire` (waiting ones return ``False``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


_END = object()  # the reader has handed over its last input


class _Reader:
    """A thread reading the inputs in order, ahead of the model."""

    def __init__(
        self,
        files: Sequence[Path],
        spatial_dims: int,
        skip_bad: bool,
        batch: int,
        dicom: Mapping[Path, DicomSeries] | None = None,
    ):
        self._files = list(files)
        self._dicom = dict(dicom or {})
        self._spatial_dims = spatial_dims
        self._skip_bad = skip_bad
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._budget = _Budget(2 * batch, 2 * MAX_BATCH_VALUES)
        self._thread = threading.Thread(target=self._run, name="edue-predict-reader", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def _run(self) -> None:
        index = 0
        try:
            for index, path in enumerate(self._files):
                item = _Loaded(index, path, series=self._dicom.get(path))
                try:
                    if item.series is not None:  # read when the inputs were collected
                        item.image = item.series.image
                        item.affine, item.spacing = item.series.affine, item.series.spacing
                    else:
                        # NIfTI tells its own dimensionality; 2D formats follow the model
                        dims = None if _is_nifti(path) else self._spatial_dims
                        item.image, meta = read_image(path, dims)
                        item.affine, item.spacing = meta.affine, meta.spacing
                except Exception as exc:  # handed over in order: the consumer decides
                    item.error = exc
                if not self._budget.acquire(item.values):
                    return  # closed: the consumer has stopped
                self._queue.put(item)
                if item.error is not None and not (
                    self._skip_bad and isinstance(item.error, DataError)
                ):
                    return  # the consumer stops at this one: read nothing after it
        except BaseException as exc:  # a bug here must not look like the end of the inputs
            self._queue.put(_Loaded(index, self._files[index], error=exc))
        finally:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[_Loaded]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            assert isinstance(item, _Loaded)
            self._budget.release(item.values)
            yield item

    def close(self) -> None:
        """Stop reading and wait for the thread."""
        self._budget.close()
        self._thread.join()


class _Writer:
    """Writer threads: the outputs of each prediction, and its picture when asked."""

    def __init__(
        self,
        out: Path,
        threads: int,
        skip_bad: bool,
        figure_writer: FigureWriter | None,
        batch: int,
    ) -> None:
        self._out = out
        self._skip_bad = skip_bad
        self._figure_writer = figure_writer
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="edue-predict-writer")
        self._budget = _Budget(2 * batch, 2 * MAX_BATCH_VALUES)
        self._futures: list[tuple[int, Future[None]]] = []
        self._lock = threading.Lock()
        self.done: dict[int, dict[str, Any]] = {}
        self.failed: dict[int, dict[str, str]] = {}
        self._errors: dict[int, BaseException] = {}

    def submit(self, job: _Job) -> None:
        """Queue one image's outputs (waits while the backlog is full)."""
        if self._budget.acquire(job.values):
            self._futures.append((job.index, self._pool.submit(self._write, job)))

    def _write(self, job: _Job) -> None:
        try:
            write_arrays(
                job.arrays,
                job.names,
                job.path,
                self._out,
                job.affine,
                job.output,
                volume=job.volume_files,
            )
            if job.series is not None:
                from edue.engine.predict.dicom_out import write_dicom_outputs

                job.entry["dicom"] = write_dicom_outputs(
                    job.series,
                    job.arrays["mean"],
                    job.arrays["uncertainty"],
                    job.names,
                    self._out,
                    job.output,
                )
            with self._lock:
                self.done[job.index] = job.entry
            if self._figure_writer is not None:
                assert job.image is not None and job.prediction is not None
                self._figure_writer(job.image, job.prediction, self._out, job.output, job.path.name)
        except DataError as exc:
            with self._lock:
                if self._skip_bad:
                    self.failed[job.index] = {"input": str(job.path), "reason": exc.reason}
                else:
                    self._errors[job.index] = exc
        except BaseException as exc:
            with self._lock:
                self._errors[job.index] = exc
        finally:
            self._budget.release(job.values)

    def first_error(self) -> tuple[int, BaseException] | None:
        """The error of the earliest input whose writing failed so far, if any."""
        with self._lock:
            if not self._errors:
                return None
            index = min(self._errors)
            return index, self._errors[index]

    def close(self, cancel_after: int | None = None) -> None:
        """Finish the queued outputs (those after input ``cancel_after`` are dropped when
        given) and stop the threads."""
        if cancel_after is not None:
            for index, future in self._futures:
                if index > cancel_after:
                    future.cancel()
        self._pool.shutdown(wait=True)
        self._budget.close()


class _Pipeline:
    """Reader thread → model on the calling thread → writer threads (one run)."""

    def __init__(
        self,
        predictor: Predictor,
        out: Path,
        skip_bad: bool,
        figure_writer: FigureWriter | None,
        batch_size: int,
        writer_threads: int,
        calibration: Calibration | None = None,
        dicom: Mapping[Path, DicomSeries] | None = None,
        dicom_out: bool = False,
    ) -> None:
        self.predictor = predictor
        self.dicom = dict(dicom or {})
        self.dicom_out = dicom_out
        self.out = out
        self.skip_bad = skip_bad
        self.figure_writer = figure_writer
        self.batch_size = batch_size
        self.writer_threads = writer_threads
        self.calibration = calibration
        gate = calibration.gate if calibration is not None else None
        self.tap = gate.modules if gate is not None else None
        self.failed: dict[int, dict[str, str]] = {}
        self.at = -1  # the input being handled: errors before it win, outputs after it go

    def run(
        self, files: Sequence[Path], outputs: Sequence[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Predict ``files``; returns the done and failed entries, in input order.

        ``outputs``: the name each file's outputs are written under (default: its stem).

        Raises:
            BaseException: the error of the earliest input that failed (unless
                ``skip_bad`` and a :class:`DataError`), once every thread has stopped.
        """
        self.outputs = list(outputs) if outputs is not None else [stem_of(f) for f in files]
        reader = _Reader(
            files, self.predictor.spatial_dims, self.skip_bad, self.batch_size, self.dicom
        )
        writer = _Writer(
            self.out, self.writer_threads, self.skip_bad, self.figure_writer, self.batch_size
        )
        reader.start()
        try:
            self._consume(reader, writer)
        except BaseException as exc:
            reader.close()
            writer.close(cancel_after=self.at)
            earlier = writer.first_error()
            if isinstance(exc, Exception) and earlier is not None and earlier[0] < self.at:
                raise earlier[1] from None
            raise
        reader.close()
        writer.close()
        first = writer.first_error()
        if first is not None:
            raise first[1]
        failed = {**self.failed, **writer.failed}
        return (
            [writer.done[i] for i in sorted(writer.done)],
            [failed[i] for i in sorted(failed)],
        )

    def _consume(self, reader: _Reader, writer: _Writer) -> None:
        pending: list[_Loaded] = []
        for item in reader:
            self.at = item.index
            failure = writer.first_error()
            if failure is not None:
                self.at = failure[0]
                raise failure[1]
            if item.error is None:
                try:
                    self.predictor.check_image(item.array, str(item.path))
                except DataError as exc:
                    item.error = exc
            if item.error is not None:
                if self.skip_bad and isinstance(item.error, DataError):
                    self._record(item.index, item.path, item.error)
                    continue
                self._predict(pending, writer)  # the inputs before it are all written
                self.at = item.index
                raise item.error
            if pending and not self._fits(pending, item):
                self._predict(pending, writer)
                pending = []
            pending.append(item)
        self._predict(pending, writer)

    def _fits(self, batch: list[_Loaded], item: _Loaded) -> bool:
        values = sum(b.values for b in batch) + item.values
        return (
            len(batch) < self.batch_size
            and batch[0].key() == item.key()
            and self._predicted_at(batch[0]) == self._predicted_at(item)
            and values <= MAX_BATCH_VALUES
        )

    def _predicted_at(self, item: _Loaded) -> tuple[int, ...]:
        """The shape the model predicts an input at (the training grid's, or its own)."""
        return self.predictor.input_shape(item.array.shape[1:], item.spacing)

    def _record(self, index: int, path: Path, exc: DataError) -> None:
        self.failed[index] = {"input": str(path), "reason": exc.reason}

    def _predict(self, batch: list[_Loaded], writer: _Writer) -> None:
        if not batch:
            return
        self.at = batch[0].index
        images, ids = [b.array for b in batch], [stem_of(b.path) for b in batch]
        features = None
        try:
            spacing = batch[0].spacing
            if self.tap is None:
                preds = self.predictor.predict_batch(images, ids, spacing)
            else:  # the gate's features come from the same forward pass
                preds, features = self.predictor.predict_batch_with_features(
                    images, ids, self.tap, spacing
                )
        except DataError as exc:
            if len(batch) > 1:  # which one? one by one, as the serial order would tell
                for item in batch:
                    self._predict([item], writer)
                return
            if not self.skip_bad:
                raise
            self._record(batch[0].index, batch[0].path, exc)
            return
        # the members are copied out of the batch, so each prediction is laid out (and
        # its derived arrays computed) exactly as when predicted alone, and the batch's
        # memory goes as soon as its images are written
        own = [
            Prediction(
                pred.members.contiguous(),
                case_id=pred.case_id,
                method=pred.method,
                structures=pred.structures,
                segmentation=None if pred.segmentation is None else pred.segmentation.contiguous(),
                score=pred.score,
                pixel_scale=pred.pixel_scale,
            )
            for pred in preds
        ]
        arrays = [pred.to_numpy() for pred in own]  # mean, variance, …, SV: cached
        decisions: Sequence[dict[str, Any] | None] = [None] * len(batch)
        if self.calibration is not None:
            scores: list[float | None] = [None] * len(batch)
            gate = self.calibration.gate
            if gate is not None and features is not None:
                scores = [float(s) for s in gate.score(features)]
            sv = np.stack([a["sv"] for a in arrays])  # the batch decided at once
            decisions = self.calibration.decide_many(sv, scores)
        for item, pred, values, decision in zip(batch, own, arrays, decisions, strict=True):
            self.at = item.index
            writer.submit(self._job(item, pred, values, decision))

    def _job(
        self,
        item: _Loaded,
        pred: Prediction,
        arrays: dict[str, np.ndarray],
        decision: dict[str, Any] | None = None,
    ) -> _Job:
        """Everything a writer needs, every tensor computed here on the model's thread.

        With a calibration, the entry also holds the image's referral decision
        (:meth:`Calibration.decide_many`).
        """
        with_figure = self.figure_writer is not None
        output = self.outputs[item.index]
        entry = prediction_entry(pred, item.path, output)
        shape, predicted_at = item.array.shape[1:], self._predicted_at(item)
        if tuple(shape) != predicted_at:  # resampled onto the training grid and back
            entry["resampled"] = {
                "shape": [int(s) for s in shape],
                "spacing": None if item.spacing is None else [float(s) for s in item.spacing],
                "predicted_at": list(predicted_at),
                "pixel_scale": pred.pixel_scale,  # the SV counts predicted-grid pixels
            }
        if decision is not None:
            entry.update(decision)
        if item.series is not None:
            entry["dicom_series"] = {
                "uid": item.series.uid,
                "modality": item.series.modality,
                "instances": len(item.series.files),
                "first_file": str(item.series.files[0]),
            }
        return _Job(
            index=item.index,
            path=item.path,
            output=output,
            arrays=arrays,
            names=output_structures(pred),
            entry=entry,
            affine=item.affine,
            values=item.values,
            prediction=pred if with_figure else None,
            image=item.image if with_figure else None,
            volume_files=item.volume_files,
            series=item.series if self.dicom_out else None,
        )
