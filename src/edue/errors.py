"""The project's own error types.

Every problem a user can cause (a bad path, a wrong shape, odd label values, a corrupt
file) is raised as :class:`EdueError` (or a subclass) with a message that names the file
and what was expected. The command line turns these into one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class EdueError(Exception):
    """A problem caused by the input, reported to the user as one clear line.

    Args:
        message: what is wrong and what was expected.
        path: the file or folder concerned, if any; it is prefixed to the message.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class DataError(EdueError):
    """A dataset file is missing, unreadable or inconsistent with the data contract."""


class CheckpointError(EdueError):
    """A checkpoint is missing, corrupt, unsafe or does not match the code."""


class ConfigError(EdueError):
    """A configuration value or override is invalid."""


class TrainingDiverged(EdueError):
    """The loss became non-finite during training."""
