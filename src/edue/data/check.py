"""Checking a dataset before training: read every case and summarise what was found.

``edue data check ROOT --format NAME [--strict]`` prints :func:`check_path`'s report.
Problems are listed one per line as ``file: reason``; with ``strict`` any problem is an
error, otherwise the bad cases can be left out with :class:`SkippingSource` (training
leaves out the cases that fail to load this way).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edue.data.case import MultiRaterCase, expert_sv
from edue.data.source import CaseSource, SubsetSource, open_source
from edue.errors import DataError


@dataclass
class CheckReport:
    """Summary of a dataset check.

    Attributes:
        n_cases: cases listed by the reader.
        patients: distinct patient ids.
        raters: histogram ``{number of raters: number of cases}``.
        structures: structure names.
        image_sizes: ``{"C×H×W": count}`` of images read.
        spacings: ``{spacing: count}`` where known.
        label_values: raw label values seen (from ``case.meta['label_values']``).
        empty_masks: ``{rater: {structure: number of empty masks}}``.
        sv: per structure ``(min, median, max)`` of the expert SV (sum of the
            between-rater variance map).
        problems: one line per problem, ``file: reason``.
        bad_indices: indices of cases that failed to load or had a problem.
    """

    n_cases: int = 0
    patients: set[str] = field(default_factory=set)
    raters: Counter = field(default_factory=Counter)
    structures: tuple[str, ...] = ()
    image_sizes: Counter = field(default_factory=Counter)
    spacings: Counter = field(default_factory=Counter)
    label_values: set[int] = field(default_factory=set)
    empty_masks: dict[str, Counter] = field(default_factory=dict)
    sv: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    bad_indices: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when no problem was found."""
        return not self.problems

    def format(self) -> str:
        """A printable multi-line summary (:meth:`lines` joined)."""
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        """The summary as lines: counts, problems indented, ``OK``/``PROBLEMS FOUND`` last."""

        def counts(c: Counter) -> str:
            return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=str)) or "-"

        read = self.n_cases - len(self.bad_indices)
        lines = [
            f"cases: {self.n_cases} ({read} read without problems), patients: {len(self.patients)}",
            f"structures: {', '.join(self.structures)}",
            f"raters per case: {counts(self.raters)}",
            f"image sizes: {counts(self.image_sizes)}",
            f"spacings: {counts(self.spacings)}",
            f"label values: {sorted(self.label_values) if self.label_values else '-'}",
            "empty masks per rater: "
            + (
                "; ".join(f"{r}: {counts(c) if c else 0}" for r, c in self.empty_masks.items())
                or "-"
            ),
        ]
        lines += [
            f"expert SV {s}: min {a:.4g}, median {b:.4g}, max {c:.4g}"
            for s, (a, b, c) in self.sv.items()
        ]
        if self.raters.get(1):
            lines.append(
                f"note: {self.raters[1]} case(s) have a single rater: their expert "
                "variance is zero, so they carry no disagreement signal"
            )
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  {p}" for p in self.problems]
        lines.append("OK" if self.ok else "PROBLEMS FOUND")
        return lines


def _rater_names(case: MultiRaterCase) -> list[str]:
    raters = case.meta.get("raters")
    if isinstance(raters, list | tuple) and len(raters) == case.n_raters:
        return [str(r) for r in raters]
    return [str(r) for r in range(1, case.n_raters + 1)]


def case_problems(case: MultiRaterCase, where: str) -> list[str]:
    """Problems of a loaded case that its reader does not reject (``file: reason``)."""
    found = []
    try:
        case.validate(where)
    except DataError as exc:
        found.append(str(exc))
    names = _rater_names(case)
    if "disc" in case.structures and "cup" in case.structures:
        disc, cup = case.structures.index("disc"), case.structures.index("cup")
        for r in range(case.n_raters):
            outside = int((case.masks[r, cup] & (1 - case.masks[r, disc])).sum())
            if outside:
                found.append(
                    f"{where}: rater {names[r]}: cup not inside its disc ({outside} px outside)"
                )
    return found


def _summarise(report: CheckReport, case: MultiRaterCase, svs: list[np.ndarray]) -> None:
    report.raters[case.n_raters] += 1
    report.image_sizes["×".join(str(s) for s in case.image.shape)] += 1
    if case.spacing is not None:
        report.spacings[tuple(round(float(s), 4) for s in case.spacing)] += 1
    report.label_values.update(int(v) for v in case.meta.get("label_values", []))  # type: ignore[attr-defined]
    names = _rater_names(case)
    for r in range(case.n_raters):
        per_rater = report.empty_masks.setdefault(str(names[r]), Counter())
        for k, s in enumerate(case.structures):
            if not case.masks[r, k].any():
                per_rater[s] += 1
    svs.append(expert_sv(torch.from_numpy(np.ascontiguousarray(case.masks))).numpy())


def check_dataset(source: CaseSource, strict: bool = False) -> CheckReport:
    """Read every case of ``source`` and summarise it (see :class:`CheckReport`).

    Args:
        source: any case source.
        strict: raise on the first summary with problems instead of returning it.

    Raises:
        DataError: ``strict`` and at least one problem (the message lists them).
    """
    report = CheckReport(n_cases=len(source), structures=tuple(source.structures))
    report.patients = {str(p) for p in source.patient_ids}
    svs: list[np.ndarray] = []
    for i in range(len(source)):
        try:
            case = source.load(i)
        except DataError as exc:
            report.problems.append(str(exc))
            report.bad_indices.append(i)
            continue
        where = str(case.meta.get("source", case.case_id))
        problems = case_problems(case, where)
        if problems:
            report.problems += problems
            report.bad_indices.append(i)
        _summarise(report, case, svs)
    if svs:
        values = np.stack(svs)
        for k, s in enumerate(report.structures):
            col = values[:, k]
            report.sv[s] = (float(col.min()), float(np.median(col)), float(col.max()))
    if strict and not report.ok:
        shown = "\n".join(report.problems[:20])
        more = f"\n... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DataError(f"{len(report.problems)} problems found:\n{shown}{more}")
    return report


def check_path(root: str | Path, fmt: str, options: Mapping[str, Any] | None = None) -> CheckReport:
    """Open the dataset at ``root`` with reader ``fmt`` and check it (:func:`check_dataset`).

    Args:
        root: dataset folder or file.
        fmt: a registered format name.
        options: reader options; ``format`` and ``root`` keys are ignored (the
            arguments name them).

    Returns:
        The report; problems are listed in it, never raised.

    Raises:
        ConfigError: unknown format or reader option.
        DataError: the reader cannot open the dataset at all.
    """
    options = {k: v for k, v in (options or {}).items() if k not in ("format", "root")}
    return check_dataset(open_source(fmt, str(root), **options))


def unreadable_cases(source: CaseSource, strict: bool = False) -> dict[int, str]:
    """Load every case of ``source`` once and collect those that fail.

    Args:
        source: any case source.
        strict: raise the first failure instead of collecting it.

    Returns:
        ``{index: "file: reason"}`` of the cases whose loading raised
        :class:`~edue.errors.DataError`, in index order.

    Raises:
        DataError: ``strict`` and a case fails to load (that case's error).
    """
    bad: dict[int, str] = {}
    for i in range(len(source)):
        try:
            source.load(i)
        except DataError as exc:
            if strict:
                raise
            bad[i] = str(exc)
    return bad


class SkippingSource(SubsetSource):
    """A source without its bad cases, warning how many were left out.

    The bad cases are those of a check report, or, without one, those that fail to
    load (:func:`unreadable_cases`).

    Args:
        source: the source to filter.
        report: a check of ``source`` (:func:`check_dataset`); when ``None`` every case
            is loaded once instead.
        strict: without ``report``, raise the first case that fails to load.

    Attributes:
        skipped: indices (in ``source``) of the cases left out.
        problems: ``file: reason`` lines of those cases.
        report: the check report given, if any.

    Raises:
        DataError: ``strict`` and a case fails to load.
    """

    def __init__(
        self, source: CaseSource, report: CheckReport | None = None, strict: bool = False
    ) -> None:
        if report is not None:
            skipped, problems = sorted(set(report.bad_indices)), list(report.problems)
        else:
            bad = unreadable_cases(source, strict)
            skipped, problems = list(bad), list(bad.values())
        if skipped:
            warnings.warn(
                f"skipping {len(skipped)} of {len(source)} cases with problems; first: "
                f"{problems[0]} (run `edue data check` for the list)",
                stacklevel=2,
            )
        dropped = set(skipped)
        super().__init__(source, [i for i in range(len(source)) if i not in dropped])
        self.skipped, self.problems, self.report = skipped, problems, report
