"""Where a command writes: every output path is checked before any work starts.

A command that would fail on its last step (writing) after minutes of work, or that
would write into its own inputs, is stopped at once with one line naming the path and
what is wrong (:class:`~edue.errors.EdueError`, exit status 2 on the command line).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from edue.errors import EdueError


class OutputError(EdueError):
    """An output path cannot be written, or writing there would harm an input."""


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _probe_writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, then removed: permission bits
    do not tell for root, nor on read-only or virtual file systems)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".edue-probe-", dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    path: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    what: str = "output folder",
    create: bool = True,
) -> Path:
    """Check (and by default create) an output folder before any work.

    Args:
        path: the folder.
        inputs: input files or folders: the output may be neither one of the input
            folders nor inside one (a later run would read its own outputs as inputs).
        what: how the message names the path.
        create: create the folder (and its parents) once checked.

    Returns:
        The resolved folder.

    Raises:
        OutputError: the path or one of its parents is a file, it cannot be created or
            written, or it overlaps an input.
    """
    folder = Path(path).expanduser().resolve()
    blocking = _blocking_file(folder)
    if blocking == folder:
        raise OutputError(f"{what} is an existing file, not a folder", path)
    if blocking is not None:
        raise OutputError(f"{what} cannot be made: {blocking} is a file", path)
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if source.is_dir() and _is_within(folder, source):
            raise OutputError(
                f"{what} is inside the input folder {item}: its outputs would be read as "
                "inputs next time; choose a folder outside the inputs",
                path,
            )
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what} cannot be created ({exc.strerror or exc})", path) from None
        if not _probe_writable(folder):
            raise OutputError(f"{what} is not writable", path)
    else:
        existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if existing is None or not _probe_writable(existing):
            raise OutputError(f"{what} is not writable", path)
    return folder


def check_output_file(path: str | Path, *, what: str = "output file") -> Path:
    """Check that a file can be written at ``path`` (its folder is created).

    Raises:
        OutputError: the path is a folder, a parent is a file, or the folder cannot be
            created or written.
    """
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise OutputError(f"{what} is an existing folder, not a file", path)
    check_output_dir(target.parent, what=f"the folder of the {what}")
    return target
