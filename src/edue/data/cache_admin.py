"""``edue cache list|clear``: the disk stores of the prepared-case cache.

``list`` prints one line per store (its key, the reader and data root it records, its
size, cases and last use) and a total; ``clear`` removes stores — all of them, or those
not used for ``--older-than DAYS`` — and says what it freed (``--dry-run``: what it
would free). Only folders that are recognisably stores are considered (see
:func:`edue.data.cache.read_manifest`); a store that a process has open or is building
is kept and named. Nothing outside the cache folder is touched.

The command line (``edue.cli``) prints what these functions return; importing this module
loads nothing heavy, the cache module (NumPy, PyTorch) is imported when a command runs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edue.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edue.data.cache import StoreInfo

DAY = 86400.0


def cache_root(folder: str | Path | None) -> Path | None:
    """The cache folder to work on.

    Args:
        folder: the folder given (``--dir``); ``None``: the default one
            (:func:`edue.data.cache.default_cache_dir`).

    Returns:
        The folder; ``None`` when the default one does not exist yet (no cache).

    Raises:
        ConfigError: ``folder`` was given and does not exist or is not a folder.
    """
    from edue.data.cache import default_cache_dir

    root = Path(folder).expanduser() if folder else default_cache_dir()
    if root.is_dir():
        return root
    if root.exists():
        raise ConfigError(f"cache folder {root} is not a folder")
    if folder:
        raise ConfigError(f"cache folder {root} does not exist")
    return None


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def _date(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def store_line(info: StoreInfo) -> str:
    """One line of ``cache list``: key, reader, data root (``-``: generated data), size,
    cases, last use.

    Args:
        info: the store.
    """
    return "  ".join(
        [
            info.key,
            info.format or "?",
            info.root or "-",
            _mb(info.nbytes),
            f"{info.n_cases} cases",
            f"last used {_date(info.last_used)}",
        ]
    )


def list_lines(root: Path | None) -> list[str]:
    """What ``cache list`` prints: one line per store, least recently used first (those
    a process has open or is building marked ``(in use)``), and a total.

    Args:
        root: the cache folder (``None``: there is none yet).
    """
    from edue.data.cache import default_cache_dir, in_use

    if root is None:
        return [f"no cache folder yet ({default_cache_dir()})"]
    stores = _stores(root)
    total = sum(s.nbytes for s in stores)
    return [
        *(store_line(s) + ("  (in use)" if in_use(s.folder) else "") for s in stores),
        f"total: {len(stores)} store(s), {_mb(total)} in {root}",
    ]


@dataclass
class ClearReport:
    """What ``cache clear`` removed (or would remove) and kept.

    Attributes:
        removed: stores removed (with ``dry_run``: that would be).
        busy: stores kept because a process has them open or is building them.
        leftovers: bytes of interrupted removals deleted (or that would be).
        dry_run: nothing was removed.
    """

    removed: list[StoreInfo] = field(default_factory=list)
    busy: list[StoreInfo] = field(default_factory=list)
    leftovers: int = 0
    dry_run: bool = False

    @property
    def freed(self) -> int:
        """Bytes freed (or that would be)."""
        return sum(s.nbytes for s in self.removed) + self.leftovers

    def lines(self) -> list[str]:
        """What ``cache clear`` prints."""
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} {store_line(s)}" for s in self.removed]
        out += [f"kept (in use) {store_line(s)}" for s in self.busy]
        if self.leftovers:
            out.append(f"{verb} {_mb(self.leftovers)} of interrupted removals")
        done = "would free" if self.dry_run else "freed"
        out.append(f"{done} {_mb(self.freed)} ({len(self.removed)} store(s))")
        return out


def clear_stores(
    root: Path | None,
    older_than_days: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> ClearReport:
    """Remove the stores of a cache folder not used for ``older_than_days`` days.

    Args:
        root: the cache folder (``None``: there is none, nothing to do).
        older_than_days: only stores whose last use is at least this many days ago
            (``None``: every store).
        dry_run: report what would be removed, remove nothing.
        now: the current time (seconds since the epoch; tests).

    Raises:
        ConfigError: ``older_than_days`` is negative or not a number.
    """
    from edue.data.cache import folder_usage, in_use, leftovers, remove_store

    check_days(older_than_days)
    report = ClearReport(dry_run=dry_run)
    if root is None:
        return report
    now = time.time() if now is None else now
    for store in _stores(root):
        if older_than_days is not None and now - store.last_used < older_than_days * DAY:
            continue
        if (not in_use(store.folder)) if dry_run else remove_store(store.folder):
            report.removed.append(store)
        else:
            report.busy.append(store)
    for path in leftovers(root):
        report.leftovers += folder_usage(path)[0]
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
    return report


def check_days(days: float | None) -> None:
    """Raise unless ``days`` is ``None`` or a number of days ≥ 0.

    Raises:
        ConfigError: a negative number or NaN.
    """
    if days is not None and not days >= 0:  # NaN too
        raise ConfigError(f"--older-than {days:g}: expected a number of days >= 0")


def _stores(root: Path) -> list[StoreInfo]:
    from edue.data.cache import list_stores

    try:
        return list_stores(root)
    except OSError as exc:
        raise ConfigError(f"cache folder {root} cannot be read ({exc.strerror})") from None
