"""A run folder belongs to one run and one writer.

* A folder that already holds a run (or a dataset) is never silently replaced: writing
  into it is refused with the choices in one line (``--resume`` or ``--overwrite``);
  ``--overwrite`` moves the old one aside to ``<folder>.replaced-<time>``, it deletes
  nothing.
* A lock file (``.edue.lock``: process id, host, command, start time) keeps a second
  writer out while one is at work. A lock left by a process that no longer runs on this
  host is stale: it is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from edue.errors import EdueError

#: files that make a folder a training run
RUN_FILES = ("last.pt", "best.pt", "ensemble.pt", "config.yaml", "log.jsonl")
#: the file that makes a folder a dataset written by ``edue data``
DATASET_FILES = ("dataset.json",)
LOCK_NAME = ".edue.lock"


class FolderInUse(EdueError):
    """The folder holds earlier work, or another process is writing into it."""


def held_files(folder: str | Path, names: Sequence[str] = RUN_FILES) -> list[str]:
    """The files of ``names`` present in ``folder``."""
    folder = Path(folder)
    return [n for n in names if (folder / n).exists()]


def _run_summary(folder: Path) -> str:
    """A few words on the run in ``folder`` (its last epoch, when the log tells)."""
    log = folder / "log.jsonl"
    try:
        lines = log.read_text(encoding="utf-8").strip().splitlines()
        epoch = json.loads(lines[-1]).get("epoch") if lines else None
    except (OSError, ValueError, AttributeError):
        epoch = None
    return f"a run, last logged epoch {epoch}" if epoch is not None else "a run"


def aside_name(folder: Path) -> Path:
    """A free sibling name for moving ``folder`` aside: ``<folder>.replaced-<time>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.replaced-{stamp}-{n}")
    return target


def claim_folder(
    folder: str | Path,
    overwrite: bool,
    kind: str = "run",
    names: Sequence[str] = RUN_FILES,
    resume_hint: bool = True,
) -> Path | None:
    """Make sure nothing earlier is replaced by writing into ``folder``.

    Args:
        folder: the output folder.
        overwrite: move earlier work aside instead of refusing.
        kind: ``run`` or ``dataset`` (for the message).
        names: the files that mark earlier work.
        resume_hint: offer ``--resume`` in the message (runs).

    Returns:
        Where the earlier work was moved (``None``: there was none).

    Raises:
        FolderInUse: the folder holds earlier work and ``overwrite`` is off, or another
            process holds its lock.
    """
    folder = Path(folder)
    found = held_files(folder, names)
    if not found:
        return None
    check_lock(folder)
    if not overwrite:
        what = _run_summary(folder) if kind == "run" else f"a {kind}"
        choices = (
            f"continue it with --resume {folder}, or pass --overwrite to move it aside"
            if resume_hint
            else "pass --overwrite to move it aside"
        )
        raise FolderInUse(
            f"holds {what} ({', '.join(found)}); nothing was changed: {choices} "
            "(it is kept, not deleted), or choose another --out",
            folder,
        )
    target = aside_name(folder)
    folder.rename(target)
    warnings.warn(f"{folder}: the earlier {kind} was moved aside to {target}", stacklevel=2)
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _read_lock(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder(folder: Path) -> dict[str, object] | None:
    """The live process holding ``folder``'s lock (``None``: no lock, or a stale one)."""
    info = _read_lock(folder / LOCK_NAME)
    if info is None:
        return None
    pid, host = info.get("pid"), info.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        return info if pid != os.getpid() and _alive(pid) else None
    return info  # another host's: cannot be checked from here, so it is honoured


def check_lock(folder: str | Path) -> None:
    """Raise when a live process holds ``folder``'s lock.

    Raises:
        FolderInUse: naming the process, its host and since when.
    """
    folder = Path(folder)
    info = _holder(folder)
    if info is not None:
        raise FolderInUse(
            f"another edue process (pid {info.get('pid')} on {info.get('host')}, since "
            f"{info.get('started')}: {info.get('command')}) is writing here; wait for it, or "
            f"remove {LOCK_NAME} if that process is gone",
            folder,
        )


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs (the folder is created).

    A stale lock (its process is gone from this host) is taken over with a warning.

    Raises:
        FolderInUse: a live process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["edue", *sys.argv[1:]])[:300],
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_lock(folder)
            warnings.warn(
                f"{path}: a stale lock (its process is gone) was taken over", stacklevel=3
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(info, handle)
        break
    else:  # pragma: no cover - lost a race twice
        check_lock(folder)
    try:
        yield folder
    finally:
        if (_read_lock(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def is_main_rank() -> bool:
    """Whether this process is rank 0 of a distributed launch (or not distributed)."""
    return os.environ.get("RANK", "0") == "0"
