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
  wait and then read; DataLoader workers read the same files;
* arrays are mapped copy-on-write: a tensor made of one may be written in place (the
  write stays in the process's memory, the file never changes), so PyTorch has no
  read-only buffer to warn about and nothing is copied up front;
* housekeeping: a process that opens a store holds a shared lock on its ``.in_use``
  file for as long as it has it open, and touches its ``last_used`` file (the time of
  last use is that file's modification time). With a size cap (``data.cache_max_gb``),
  once a process has built (or repaired) entries of a store, the least recently used
  *other* whole stores are removed until the cache folder's stores fit the cap again;
  a store that a process has open or is building is never removed.
  ``edue cache list|clear`` (:mod:`edue.data.cache_admin`) shows and removes stores by
  the same rules. Only folders that are recognisably stores (a 64-hex-digit name and a
  ``description.json`` manifest) are ever removed.

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
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from edue._version import __version__
from edue.data.case import MultiRaterCase
from edue.errors import ConfigError
from edue.io import atomic_path, fsync_dir

ARRAYS = ("image", "masks", "rater_probability", "affine")
CACHE_MODES = ("auto", "memory", "disk", "off")
MANIFEST = "description.json"  # what a store's content depends on; marks a folder as a store
LAST_USED = "last_used"  # its modification time is the store's last use
IN_USE = ".in_use"  # shared-locked by every process that has the store open
BUILD_LOCK = ".lock"  # exclusively locked by the process building the store
REMOVING = ".removing"  # suffix of a store being deleted (renamed away first)
_KEY = re.compile(r"[0-9a-f]{64}")
_RECORD = re.compile(r"[0-9a-f]{20}\.json")


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
        """The file's array, memory-mapped copy-on-write (see :meth:`DiskStore.get`)
        without reading its header."""
        return np.memmap(
            str(path), self.dtype, "c", offset=self.offset, shape=self.shape, order=self.order
        )


class DiskStore:
    """Prepared cases as ``.npy`` files under ``folder`` (memory-mapped when read).

    Args:
        folder: the store's folder (``<cache dir>/<key>``).
        description: what the content depends on (written to ``description.json``).
        max_bytes: size cap of the cache folder's stores (``folder.parent``): after
            this process has written entries, :meth:`building` removes the least
            recently used other stores until they fit (``None``: no cap).
    """

    kind = "disk"

    def __init__(
        self, folder: Path, description: dict[str, Any], max_bytes: int | None = None
    ) -> None:
        self.folder = folder
        self.description = description
        self.max_bytes = max_bytes
        self._verified: set[str] = set()  # files whose CRC-32 this process checked
        self._layouts: dict[str, _Layout] = {}  # each file's header, read once
        self._in_use: IO[bytes] | None = None  # the shared lock of :meth:`hold`
        self._written = False  # entries written since the last eviction check

    def __getstate__(self) -> dict[str, Any]:
        # a worker process started by pickling the dataset: the parent holds the store
        return {**self.__dict__, "_in_use": None}

    def hold(self) -> None:
        """Mark the store in use by this process and record the use.

        Takes a shared lock on ``.in_use`` (kept until :meth:`release` or the end of
        the process; forked DataLoader workers share it), which eviction and
        ``edue cache clear`` respect, and touches ``last_used``. A store removed while
        this waited for the lock is made anew.
        """
        if self._in_use is not None:
            return
        path = self.folder / IN_USE
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                handle = open(path, "a+b")  # noqa: SIM115 (kept open: the lock lives with it)
            except FileNotFoundError:  # the folder was renamed away just now: again
                continue
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                current = os.path.samestat(os.fstat(handle.fileno()), path.stat())
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # the store was removed while we waited: open it anew
        self._in_use = handle
        (self.folder / LAST_USED).touch()

    def release(self) -> None:
        """Drop the mark of :meth:`hold` (the store may be removed from now on)."""
        handle = getattr(self, "_in_use", None)  # None too when __init__ did not finish
        if handle is not None:
            handle.close()
            self._in_use = None

    def __del__(self) -> None:
        self.release()  # the store is no longer read by this process

    def _stem(self, case_id: str) -> str:
        return hashlib.sha1(case_id.encode()).hexdigest()[:20]

    def get(self, case_id: str) -> Entry | None:
        """The entry of ``case_id``; ``None`` when absent, truncated or corrupt (the
        caller rebuilds it; a damaged entry is reported with a warning).

        The arrays are memory-mapped copy-on-write, not read-only: ``torch.from_numpy``
        of a read-only array warns (once per process, "The given NumPy array is not
        writable…") because writing to such a tensor would crash, and copying every
        volume up front would undo the mapping. A copy-on-write page is shared with the
        page cache until it is written; a write stays in this process and never
        reaches the file (or the next :meth:`get`, which maps the file afresh).
        """
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
        array = np.load(str(path), mmap_mode="c", allow_pickle=False)
        if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
            raise ValueError(f"{path.name} holds {array.dtype} {array.shape}")
        self._layouts[info["file"]] = _Layout.of(array)
        return array

    def put(self, case_id: str, entry: Entry) -> None:
        """Write an entry: arrays first, the JSON record last (its commit mark)."""
        self._written = True
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
        """Hold the store's lock: one process builds, the others wait, then read.

        Afterwards, when this process wrote entries and the store has a size cap, the
        least recently used other stores are removed until the folder's stores fit it
        (:func:`evict_stores`): eviction happens *after* a build, when the new store's
        size is known, so the folder may pass the cap by one store's size meanwhile.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / MANIFEST
        if not description.is_file():
            with atomic_path(description) as tmp:
                tmp.write_text(json.dumps(self.description, indent=1, default=str))
        with open(self.folder / BUILD_LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fsync_dir(self.folder)
                fcntl.flock(lock, fcntl.LOCK_UN)
        if self._written and self.max_bytes is not None:
            self._written = False
            try:
                evict_stores(self.folder.parent, self.max_bytes, keep=self.folder)
            except OSError as exc:  # housekeeping never stops a run
                warnings.warn(
                    f"data.cache_max_gb: could not check the size of {self.folder.parent} ({exc})",
                    stacklevel=3,
                )


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
    max_gb: float | None = None,
) -> Store | None:
    """The store a configuration asks for, or ``None`` when caching is off.

    Args:
        mode: ``auto`` (memory when the estimate fits the budget, else disk),
            ``memory``, ``disk`` or ``off``.
        description: what the prepared cases depend on (see :func:`describe`).
        estimated_bytes: estimated size of the prepared subset.
        memory_budget_bytes: the most ``auto`` keeps in memory.
        cache_dir: root of disk stores (default :func:`default_cache_dir`).
        max_gb: size cap of the disk stores under ``cache_dir`` in GiB
            (``data.cache_max_gb``; ``None``: no cap); see :meth:`DiskStore.building`.

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
    max_bytes = None if max_gb is None else int(max_gb * 2**30)
    store = DiskStore(folder, description, max_bytes)
    try:
        store.hold()
    except OSError as exc:
        raise ConfigError(f"data.cache_dir: cannot create {folder} ({exc.strerror})") from None
    return store


# ------------------------------------------------------------------------ housekeeping
@dataclass(frozen=True)
class StoreInfo:
    """A disk store found in a cache folder.

    Attributes:
        folder: the store's folder.
        nbytes: bytes of its files.
        n_cases: entries it holds (cases the reader refused included).
        last_used: its last use (seconds since the epoch): ``last_used``'s modification
            time, else the manifest's (a store written before uses were recorded).
        description: its manifest (:func:`describe`).
    """

    folder: Path
    nbytes: int
    n_cases: int
    last_used: float
    description: dict[str, Any]

    @property
    def key(self) -> str:
        """The store's key (its folder's name)."""
        return self.folder.name

    @property
    def format(self) -> str | None:
        """The reader that prepared the cases, if recorded."""
        value = self.description.get("format")
        return None if value is None else str(value)

    @property
    def root(self) -> str | None:
        """The data root the cases came from, if recorded."""
        value = self.description.get("root")
        return None if value is None else str(value)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` when it is recognisably a store, else ``None``.

    A store is a real folder (not a link) with a 64-hex-digit name holding a
    ``description.json`` that is a JSON object naming the edue version and reader.
    """
    if not _KEY.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
        return None
    manifest = folder / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        description = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(description, dict) or not {"edue", "format"} <= description.keys():
        return None
    return description


def folder_usage(folder: Path) -> tuple[int, int]:
    """Bytes of the files under ``folder`` (links not followed) and its entry records."""
    nbytes = n_records = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):  # a temporary file renamed away
                if entry.is_dir(follow_symlinks=False):
                    nbytes += folder_usage(Path(entry.path))[0]
                else:
                    nbytes += entry.stat(follow_symlinks=False).st_size
                    n_records += bool(_RECORD.fullmatch(entry.name))
    return nbytes, n_records


def last_use(folder: Path) -> float:
    """When a store was last opened (``last_used``'s modification time, else the
    manifest's)."""
    for name in (LAST_USED, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            return (folder / name).stat().st_mtime
    return 0.0


def store_info(folder: Path) -> StoreInfo | None:
    """What :func:`list_stores` says of ``folder``; ``None`` when it is no store (or
    vanished meanwhile)."""
    description = read_manifest(folder)
    if description is None:
        return None
    try:
        nbytes, n_cases = folder_usage(folder)
    except FileNotFoundError:  # removed while we looked
        return None
    return StoreInfo(folder, nbytes, n_cases, last_use(folder), description)


def list_stores(root: str | Path) -> list[StoreInfo]:
    """The stores directly under a cache folder, least recently used first; anything
    else there (other files and folders) is left out."""
    root = Path(root)
    found = []
    for folder in sorted(root.iterdir()):
        info = store_info(folder)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda s: (s.last_used, s.key))


def leftovers(root: str | Path) -> list[Path]:
    """Folders of removals that were cut short (``<key>.removing``) under ``root``."""
    return sorted(
        path
        for path in Path(root).iterdir()
        if path.name.endswith(REMOVING)
        and _KEY.fullmatch(path.name[: -len(REMOVING)])
        and path.is_dir()
        and not path.is_symlink()
    )


@contextlib.contextmanager
def _unused(folder: Path, create: bool = True) -> Iterator[bool]:
    """Whether no process has the store open (:meth:`DiskStore.hold`) nor is building
    it; while the block runs, none can start to (non-blocking exclusive locks on the
    lock files, made when missing so that an opener waits on the same file; with
    ``create=False`` a missing lock file counts as free and nothing is written)."""
    with contextlib.ExitStack() as stack:
        for name in (IN_USE, BUILD_LOCK):
            try:
                handle = stack.enter_context(open(folder / name, "a+b" if create else "rb"))
            except FileNotFoundError:
                if create:
                    raise
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                free = False
                break
        else:
            free = True
        yield free


def in_use(folder: Path) -> bool:
    """Whether a process has the store open or is building it now (writes nothing)."""
    with _unused(folder, create=False) as free:
        return not free


def remove_store(folder: Path) -> bool:
    """Delete a store unless it is in use or being built.

    The folder is renamed to ``<key>.removing`` under its locks (a process opening the
    store meanwhile waits, then makes it anew) and deleted afterwards.

    Returns:
        Whether it was removed (``False``: in use, being built, not a store, or
        removed by another process meanwhile).
    """
    if read_manifest(folder) is None:
        return False
    trash = folder.with_name(folder.name + REMOVING)
    try:
        with _unused(folder) as free:
            if not free:
                return False
            if trash.exists():  # an earlier removal of the same key that was cut short
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(folder, trash)
    except FileNotFoundError:  # removed by another process meanwhile
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def describe_store(info: StoreInfo) -> str:
    """``key (format, root, size, last use)`` in a few words (for warnings)."""
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_used))
    where = f", {info.root}" if info.root else ""
    return f"{info.key[:12]} ({info.format}{where}, {info.nbytes / 2**20:.1f} MB, last used {used})"


def evict_stores(root: str | Path, max_bytes: int, keep: Path | None = None) -> list[StoreInfo]:
    """Remove the least recently used stores under ``root`` until they fit ``max_bytes``.

    Stores that a process has open or is building, and ``keep``, are never removed;
    what was removed is named in one warning.

    Args:
        root: the cache folder.
        max_bytes: the most its stores may hold together.
        keep: a store to keep whatever its last use (the one just built).

    Returns:
        The removed stores, least recently used first.
    """
    root = Path(root)
    for path in leftovers(root):
        shutil.rmtree(path, ignore_errors=True)
    stores = list_stores(root)
    total = sum(s.nbytes for s in stores)
    kept = None if keep is None else os.path.realpath(keep)
    removed: list[StoreInfo] = []
    for info in stores:  # least recently used first
        if total <= max_bytes:
            break
        if os.path.realpath(info.folder) != kept and remove_store(info.folder):
            removed.append(info)
            total -= info.nbytes
    if removed or total > max_bytes:
        cap = f"{max_bytes / 2**30:g} GB"
        said = (
            f"removed {len(removed)} least recently used store(s) from {root}: "
            + "; ".join(describe_store(s) for s in removed)
            if removed
            else f"nothing could be removed from {root}"
        )
        over = f" (still {total / 2**30:.2f} GB: the rest is in use)" if total > max_bytes else ""
        warnings.warn(f"cache over data.cache_max_gb = {cap}: {said}{over}", stacklevel=2)
    return removed
