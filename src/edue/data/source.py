"""Case sources: anything that can list and load multi-rater cases, chosen by name.

A reader of an on-disk layout is a :class:`CaseSource`: it knows its case and patient
identifiers cheaply and loads a case on demand. Readers are registered under a format
name (:mod:`edue.data.registry`) so a configuration can pick one with
``data.format: NAME``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from edue.data.case import MultiRaterCase
from edue.data.registry import reader
from edue.data.registry import reader_names as reader_names
from edue.data.registry import register_reader as register_reader
from edue.errors import ConfigError


class CaseSource:
    """Base class of a dataset reader.

    Subclasses set ``self.case_ids`` (list of str), ``self.patient_ids`` (same length)
    and ``self.structures`` and implement :meth:`load`.
    """

    case_ids: list[str]
    patient_ids: list[str]
    structures: tuple[str, ...]
    spatial_dims: int = 2

    def __len__(self) -> int:
        return len(self.case_ids)

    def load(self, index: int) -> MultiRaterCase:
        """Read case ``index`` from disk (raises :class:`~edue.errors.DataError`)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[MultiRaterCase]:
        for i in range(len(self)):
            yield self.load(i)

    def subset(self, indices: Sequence[int]) -> SubsetSource:
        """A view on some cases of this source."""
        return SubsetSource(self, list(indices))

    def loaders(self) -> list[Callable[[], MultiRaterCase]]:
        """Zero-argument callables, one per case, for :class:`~edue.data.case.CaseDataset`."""
        return [_Loader(self, i) for i in range(len(self))]


class _Loader:
    """Picklable deferred ``source.load(index)`` (works with DataLoader workers)."""

    def __init__(self, source: CaseSource, index: int) -> None:
        self.source, self.index = source, index

    def __call__(self) -> MultiRaterCase:
        return self.source.load(self.index)


class SubsetSource(CaseSource):
    """Some cases of another source, in the given order."""

    def __init__(self, parent: CaseSource, indices: list[int]) -> None:
        self.parent, self.indices = parent, indices
        self.case_ids = [parent.case_ids[i] for i in indices]
        self.patient_ids = [parent.patient_ids[i] for i in indices]
        self.structures = parent.structures
        self.spatial_dims = parent.spatial_dims

    def load(self, index: int) -> MultiRaterCase:
        return self.parent.load(self.indices[index])


class ListSource(CaseSource):
    """Cases already in memory."""

    def __init__(self, cases: Sequence[MultiRaterCase]) -> None:
        if not cases:
            raise ConfigError("dataset is empty")
        self.cases = list(cases)
        self.case_ids = [c.case_id for c in cases]
        self.patient_ids = [str(c.patient_id) for c in cases]
        self.structures = cases[0].structures
        self.spatial_dims = cases[0].spatial_dims

    def load(self, index: int) -> MultiRaterCase:
        return self.cases[index]


def open_source(fmt: str, root: str | None = None, **options: Any) -> CaseSource:
    """Open a dataset by format name.

    Args:
        fmt: a registered format (see :func:`~edue.data.registry.reader_names`).
        root: dataset folder or file (unused by ``synthetic``).
        **options: reader-specific options from the configuration.

    Raises:
        ConfigError: unknown format.
        DataError: the reader found a problem on disk.
    """
    factory = reader(fmt)
    return factory(root, **options) if root is not None else factory(**options)  # type: ignore[no-any-return]
