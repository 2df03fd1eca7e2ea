"""A cache of prepared cases: decode, label-decode, resample and resize once, read many times.

Everything a reader does to a case that does not change from epoch to epoch (decoding
TIFF/NIfTI/pickles, turning grey levels into structures, resampling PET onto the CT grid,
resizing) is done once per case and kept, in memory or on disk as memory-mapped arrays;
random augmentation and patch sampling stay after it.

Why not MONAI's or TorchIO's: MONAI ``CacheDataset`` keeps the output of deterministic
transforms in memory only, and is rebuilt by every run; ``PersistentDataset`` pickles
each item with ``torch.save`` under a hash of the *item*, so a changed file with the same
path is not noticed, an item is loaded whole (no memory mapping, which 3D patch sampling
needs), and a truncated file fails at load time instead of being rebuilt;
``LMDBDataset`` adds a database dependency with the same keying. TorchIO's ``Queue``
samples patches from subjects loaded by workers but caches nothing between epochs. The
multi-rater case contract (a variable number of raters, an optional analytic rater
probability, geometry) also does not fit their dict-of-tensors items without a custom
(de)serialiser. So this module keeps the contract's own arrays as ``.npy`` files:

* a store is a folder named by the SHA-256 of a *description* of what was prepared:
  the reader, its root and options, the preprocessing settings, the edue version and
  the size and modification time of every file under the dataset's root — a changed
  file or option gives another folder;
* one entry per case id: its arrays (``image``, ``masks`` and, when present,
  ``rater_probability`` and ``affine``) and, written last as the commit mark, a JSON
  record with the small fields and each array file's size and CRC-32; a case the
  reader could not load is recorded with its error, so later runs skip it the same way
  without reading it again;
* reading checks sizes on every open and the CRC-32 once per process and file; a
  truncated or corrupt entry is rebuilt from the source with a warning, never trusted;
* writers use temporary files and atomic renames, and a lock file makes one process
  (one rank under DistributedDataParallel, one of several jobs) build while the others
  wait and then read; DataLoader workers read the same files.

The in-memory store holds the same arrays in a dict (copied to worker processes on
fork), for datasets that fit a memory budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edue._version import __version__
from edue.data.case import MultiRaterCase
from edue.errors import ConfigError
from edue.io import atomic_path, fsync_dir

ARRAYS = ("image", "masks", "rater_probability", "affine")
CACHE_MODES = ("auto", "memory", "disk", "off")


def default_cache_dir() -> Path:
    """``$EDUE_CACHE_DIR``, else ``$XDG_CACHE_HOME/edue``, else ``~/.cache/edue``."""
    if os.environ.get("EDUE_CACHE_DIR"):
        return Path(os.environ["EDUE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edue"


def files_fingerprint(root: str | Path | None) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of every file under ``root`` (or of ``root``
    itself when it is a file), sorted; empty when there is no root."""
    if root is None:
        return []
    root = Path(root)
    if root.is_file():
        stat = root.stat()
        return [[root.name, stat.st_size, stat.st_mtime_ns]]
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            with contextlib.suppress(OSError):  # vanished while walking
                stat = path.stat()
                found.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return sorted(found)


def describe(fmt: str, root: str | None, options: dict[str, Any], **settings: Any) -> dict:
    """What a store's content depends on (its key is the hash of this)."""
    return {
        "edue": __version__,
        "format": fmt,
        "root": str(Path(root).resolve()) if root else None,
        "options": options,
        "settings": settings,
        "files": files_fingerprint(root),
    }


def store_key(description: dict[str, Any]) -> str:
    """Hex SHA-256 of a description (canonical JSON)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def case_nbytes(case: MultiRaterCase) -> int:
    """Bytes of a case's arrays."""
    arrays = (getattr(case, name) for name in ARRAYS)
    return sum(int(a.nbytes) for a in arrays if a is not None)


def contiguous_case(case: MultiRaterCase) -> MultiRaterCase:
    """``case`` with C-contiguous arrays (``case`` itself when they already are)."""
    strided: dict[str, Any] = {
        name: np.ascontiguousarray(value)
        for name in ARRAYS
        if (value := getattr(case, name)) is not None and not value.flags.c_contiguous
    }
    return dataclasses.replace(case, **strided) if strided else case


@dataclass
class Entry:
    """What a store holds for one case id: the case, or why the reader refused it."""

    case: MultiRaterCase | None
    error: str | None = None


class MemoryStore:
    """Prepared cases in a dict (nothing survives the process)."""

    kind = "memory"

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def get(self, case_id: str) -> Entry | None:
        """The entry of ``case_id``, or ``None`` when not prepared yet."""
        return self.entries.get(case_id)

    def put(self, case_id: str, entry: Entry) -> None:
        """Keep an entry, its arrays C-contiguous (as the disk store writes them): a
        reader may hand over strided arrays (NIfTI volumes are stored Fortran-ordered),
        which every later load would otherwise copy to make tensors of."""
        if entry.case is not None:
            entry = Entry(contiguous_case(entry.case))
        self.entries[case_id] = entry

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Nothing to coordinate within one process."""
        yield


@dataclass(frozen=True)
class _Layout:
    """Where and how a ``.npy`` file holds its array (what its header says)."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    order: Literal["C", "F"]

    @classmethod
    def of(cls, array: np.memmap) -> _Layout:
        fortran = array.flags.f_contiguous and not array.flags.c_contiguous
        return cls(int(array.offset), array.dtype, tuple(array.shape), "F" if fortran else "C")

    def matches(self, info: dict[str, Any]) -> bool:
        """Whether a record's array (its shape and dtype) is laid out so."""
        return list(self.shape) == info["shape"] and str(self.dtype) == info["dtype"]

    def map(self, path: Path) -> np.memmap:
        """The file's array, memory-mapped read-only without reading its header."""
        return np.memmap(
            str(path), self.dtype, "r", offset=self.offset, shape=self.shape, order=self.order
        )


class DiskStore:
    """Prepared cases as ``.npy`` files under ``folder`` (memory-mapped when read).

    Args:
        folder: the store's folder (``<cache dir>/<key>``).
        description: what the content depends on (written to ``description.json``).
    """

    kind = "disk"

    def __init__(self, folder: Path, description: dict[str, Any]) -> None:
        self.folder = folder
        self.description = description
        self._verified: set[str] = set()  # files whose CRC-32 this process checked
        self._layouts: dict[str, _Layout] = {}  # each file's header, read once

    def _stem(self, case_id: str) -> str:
        return hashlib.sha1(case_id.encode()).hexdigest()[:20]

    def get(self, case_id: str) -> Entry | None:
        """The entry of ``case_id``; ``None`` when absent, truncated or corrupt (the
        caller rebuilds it; a damaged entry is reported with a warning)."""
        record_path = self.folder / f"{self._stem(case_id)}.json"
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("case_id") != case_id:
                raise ValueError("record of another case")
            if record.get("error") is not None:
                return Entry(None, str(record["error"]))
            arrays = {name: self._array(info) for name, info in record["arrays"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(
                f"{record_path}: cache entry of '{case_id}' is damaged ({exc}); "
                "rebuilding it from the source",
                stacklevel=2,
            )
            return None
        case = MultiRaterCase(
            image=arrays["image"],
            masks=arrays["masks"],
            case_id=case_id,
            structures=tuple(record["structures"]),
            patient_id=record["patient_id"],
            spacing=tuple(record["spacing"]) if record["spacing"] is not None else None,
            affine=arrays.get("affine"),
            rater_probability=arrays.get("rater_probability"),
            meta=record["meta"],
        )
        return Entry(case)

    def _array(self, info: dict[str, Any]) -> np.ndarray:
        path = self.folder / info["file"]
        size = path.stat().st_size
        if size != info["bytes"]:
            raise ValueError(f"{path.name} holds {size} bytes, {info['bytes']} were written")
        if info["file"] not in self._verified:
            if zlib.crc32(path.read_bytes()) != info["crc32"]:
                raise ValueError(f"{path.name} does not match its checksum")
            self._verified.add(info["file"])
        layout = self._layouts.get(info["file"])
        if layout is not None and layout.matches(info):
            # header read before: map the data straight away (parsing a .npy header
            # and resolving the path cost more than mapping a small case)
            return layout.map(path)
        array = np.load(str(path), mmap_mode="r", allow_pickle=False)
        if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
            raise ValueError(f"{path.name} holds {array.dtype} {array.shape}")
        self._layouts[info["file"]] = _Layout.of(array)
        return array

    def put(self, case_id: str, entry: Entry) -> None:
        """Write an entry: arrays first, the JSON record last (its commit mark)."""
        stem = self._stem(case_id)
        record: dict[str, Any] = {"case_id": case_id, "error": entry.error}
        case = entry.case
        if case is not None:
            record.update(
                structures=list(case.structures),
                patient_id=case.patient_id,
                spacing=list(case.spacing) if case.spacing is not None else None,
                meta=json.loads(json.dumps(case.meta, default=_plain)),
                arrays={},
            )
            for name in ARRAYS:
                value = getattr(case, name)
                if value is not None:
                    record["arrays"][name] = self._write_array(f"{stem}.{name}.npy", value)
        with atomic_path(self.folder / f"{stem}.json") as tmp:
            tmp.write_text(json.dumps(record), encoding="utf-8")

    def _write_array(self, name: str, value: np.ndarray) -> dict[str, Any]:
        array = np.ascontiguousarray(value)
        with atomic_path(self.folder / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        data = (self.folder / name).read_bytes()
        self._verified.add(name)
        return {
            "file": name,
            "bytes": len(data),
            "crc32": zlib.crc32(data),
            "shape": list(array.shape),
            "dtype": str(array.dtype),
        }

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Hold the store's lock: one process builds, the others wait, then read."""
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "description.json"
        if not description.is_file():
            with atomic_path(description) as tmp:
                tmp.write_text(json.dumps(self.description, indent=1, default=str))
        with open(self.folder / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fsync_dir(self.folder)
                fcntl.flock(lock, fcntl.LOCK_UN)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


Store = MemoryStore | DiskStore


def open_store(
    mode: str,
    description: dict[str, Any],
    estimated_bytes: int,
    memory_budget_bytes: int,
    cache_dir: str | Path | None = None,
) -> Store | None:
    """The store a configuration asks for, or ``None`` when caching is off.

    Args:
        mode: ``auto`` (memory when the estimate fits the budget, else disk),
            ``memory``, ``disk`` or ``off``.
        description: what the prepared cases depend on (see :func:`describe`).
        estimated_bytes: estimated size of the prepared subset.
        memory_budget_bytes: the most ``auto`` keeps in memory.
        cache_dir: root of disk stores (default :func:`default_cache_dir`).

    Raises:
        ConfigError: unknown mode, or a cache folder that cannot be created.
    """
    if mode not in CACHE_MODES:
        raise ConfigError(f"data.cache = {mode!r}: expected one of {', '.join(CACHE_MODES)}")
    if mode == "off":
        return None
    if mode == "memory" or (mode == "auto" and estimated_bytes <= memory_budget_bytes):
        return MemoryStore()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / store_key(description)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data.cache_dir: cannot create {folder} ({exc.strerror})") from None
    return DiskStore(folder, description)
