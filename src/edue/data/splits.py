"""Seeded, patient-level dataset splits, named presets, and split files.

Every split assigns whole patients to subsets: two slices (or crops, or images) of one
patient never land in different subsets. A split is ``{subset: [case indices]}``; it is
saved as JSON listing *case ids* per subset so that a run can be reproduced exactly
on another machine.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edue.data.registry import split_preset
from edue.errors import ConfigError, DataError
from edue.io import write_json

SPLIT_FORMAT = "edue-split"


def _shuffled_patients(patient_ids: Sequence[str], seed: int) -> list[str]:
    unique = sorted({str(p) for p in patient_ids})
    order = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in order]


def _indices_by_patient(
    patient_ids: Sequence[str], groups: dict[str, list[str]]
) -> dict[str, list[int]]:
    where = {p: name for name, members in groups.items() for p in members}
    split: dict[str, list[int]] = {name: [] for name in groups}
    for i, p in enumerate(patient_ids):
        split[where[str(p)]].append(i)
    return split


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Patients per subset: largest remainders, at least one for each positive fraction."""
    weights = np.asarray(fractions, dtype=float)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"split fractions must be non-negative with a positive sum: {fractions}")
    exact = weights / weights.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((weights > 0) & (counts == 0)):  # take from the largest subset
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def split_by_patient(
    patient_ids: Sequence[str],
    fractions: Sequence[float] | Mapping[str, float] | None = (0.7, 0.1, 0.2),
    seed: int = 0,
    counts: Sequence[int] | None = None,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, list[int]]:
    """Split cases into subsets by patient, reproducibly.

    Args:
        patient_ids: one patient id per case.
        fractions: share of *patients* per subset (normalised); ignored with ``counts``.
            A mapping ``{name: value}`` (as in ``data.split``) also sets the names; its
            values are fractions when all are ≤ 1, else numbers of patients (used as
            proportions, with a warning, when they need more patients than exist).
        seed: random seed; the same seed and ids always give the same split.
        counts: number of patients per subset instead of fractions (the last subset
            takes any remainder when the counts add up to fewer patients).
        names: subset names, one per fraction or count.

    Returns:
        ``{name: [case indices]}`` (indices in increasing order).
    """
    patients = _shuffled_patients(patient_ids, seed)
    n = len(patients)
    if isinstance(fractions, Mapping):
        names, values = list(fractions), [float(v) for v in fractions.values()]
        fractions = values
        if counts is None and max(values, default=0) > 1:
            if sum(values) <= n:
                counts = [int(v) for v in values]
            else:
                warnings.warn(
                    f"split sizes {dict(zip(names, values, strict=True))} need "
                    f"{int(sum(values))} patients but there are {n}: using them "
                    "as proportions",
                    stacklevel=2,
                )
    if counts is not None:
        sizes = [int(c) for c in counts]
        if sum(sizes) > n or min(sizes) < 0:
            raise ConfigError(f"split counts {sizes} need {sum(sizes)} patients, have {n}")
        sizes[-1] += n - sum(sizes)
    else:
        sizes = _allocate(n, fractions or (0.7, 0.1, 0.2))
    if len(sizes) != len(names):
        raise ConfigError(f"{len(sizes)} subset sizes but {len(names)} names {list(names)}")
    bounds = np.cumsum([0, *sizes])
    groups = {name: patients[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}
    return _indices_by_patient(patient_ids, groups)


def kfold_by_patient(
    patient_ids: Sequence[str], k: int, fold: int, seed: int = 0, val_fraction: float = 0.1
) -> dict[str, list[int]]:
    """Fold ``fold`` of a patient-level k-fold cross-validation.

    Patients are shuffled once (by ``seed``) and cut into ``k`` folds; fold ``fold`` is
    the test set, and ``val_fraction`` of the remaining patients (at least one when
    positive) form the validation set.

    Returns:
        ``{"train", "val", "test"}`` → case indices.
    """
    patients = _shuffled_patients(patient_ids, seed)
    if not 2 <= k <= len(patients):
        raise ConfigError(f"k must be between 2 and the number of patients ({len(patients)})")
    if not 0 <= fold < k:
        raise ConfigError(f"fold must be in [0, {k}), got {fold}")
    folds = np.array_split(np.arange(len(patients)), k)
    in_test = set(folds[fold].tolist())
    test = [patients[i] for i in sorted(in_test)]
    rest = [p for i, p in enumerate(patients) if i not in in_test]
    n_val = 0 if val_fraction <= 0 else max(1, round(val_fraction * len(rest)))
    n_val = min(n_val, len(rest) - 1)
    groups = {"train": rest[n_val:], "val": rest[:n_val], "test": test}
    return _indices_by_patient(patient_ids, groups)


# --------------------------------------------------------------------------- presets
def preset_split(
    name: str, case_ids: Sequence[str], patient_ids: Sequence[str]
) -> dict[str, list[int]]:
    """A named split of the given cases, as declared by a reader.

    Presets are registered with :func:`edue.data.registry.register_split_preset` (RIGA
    declares ``riga-standard``: train BinRushed + MESSIDOR, test Magrabia).

    Args:
        name: a registered preset (see :func:`edue.data.registry.split_preset_names`).
        case_ids: one id per case.
        patient_ids: one patient id per case.

    Returns:
        ``{subset: [case indices]}``.

    Raises:
        ConfigError: unknown preset.
        DataError: the preset cannot place a case.
    """
    return split_preset(name)(case_ids, patient_ids)


def assert_patient_disjoint(split: dict[str, list[int]], patient_ids: Sequence[str]) -> None:
    """Raise :class:`DataError` if a patient appears in two subsets."""
    owner: dict[str, str] = {}
    for name, indices in split.items():
        for i in indices:
            p = str(patient_ids[i])
            if owner.setdefault(p, name) != name:
                raise DataError(f"patient '{p}' is in both '{owner[p]}' and '{name}'")


# --------------------------------------------------------------------------- files
def save_split(path: str | Path, split: dict[str, list[int]], case_ids: Sequence[str]) -> None:
    """Write a split as JSON ``{"format": "edue-split", "version": 1, name: [case ids]}``.

    The subsets are top-level keys, as in the split record of a run folder, so either
    file can be given as ``data.split_file``. Written atomically.
    """
    if {"format", "version"} & set(split):
        raise ConfigError("subsets may not be named 'format' or 'version'")
    subsets = {name: [str(case_ids[i]) for i in idx] for name, idx in split.items()}
    write_json(path, {"format": SPLIT_FORMAT, "version": 1, **subsets})


def load_split(path: str | Path) -> dict[str, list[str]]:
    """Read a split file (:func:`save_split`, or a run's split record): ``{name: [ids]}``."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("split file not found", path) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot parse split JSON ({exc})", path) from None
    if isinstance(spec, dict) and isinstance(spec.get("subsets"), dict):
        spec = spec["subsets"]  # nested form
    subsets = (
        {k: v for k, v in spec.items() if k not in ("format", "version")}
        if isinstance(spec, dict)
        else None
    )
    if not subsets or not all(isinstance(v, list) for v in subsets.values()):
        raise DataError("expected JSON {subset name: [case ids], ...}", path)
    return {str(k): [str(c) for c in v] for k, v in subsets.items()}


def saved_split_indices(
    split: dict[str, list[str]], case_ids: Sequence[str], where: str | Path | None = None
) -> dict[str, list[int]]:
    """Map a loaded split's case ids back to indices of ``case_ids``.

    Raises:
        DataError: a listed case id is not in the dataset.
    """
    position = {str(c): i for i, c in enumerate(case_ids)}
    missing = [c for ids in split.values() for c in ids if c not in position]
    if missing:
        raise DataError(
            f"{len(missing)} case ids of the split are not in the dataset (first: {missing[:3]})",
            where,
        )
    return {name: [position[c] for c in ids] for name, ids in split.items()}
