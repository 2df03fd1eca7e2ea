"""The dataset a configuration trains and evaluates on, in one place.

source (:func:`open_configured_source`) → split (:func:`split_indices`) → prepared-case
store (:func:`open_case_store`) → prepared subsets (:class:`PreparedSource`) → random
transforms (:class:`SampleTransforms`) → training dataset (:func:`training_dataset`).

:func:`prepare_data` runs the first four steps and is what training, evaluation, the
study and the demo call; :func:`load_cases` reads whole subsets of a finished run's
split into memory. Everything takes the configuration's ``data`` section (any object
with the fields of :class:`DataSettings`), so this layer never imports the
configuration.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edue.data.cache import Entry, Store, case_nbytes, describe, open_store
from edue.data.case import CaseDataset, MultiRaterCase, collate_cases
from edue.data.check import SkippingSource
from edue.data.source import CaseSource, open_source
from edue.data.transforms import RandomFlip, resize_case
from edue.errors import ConfigError, DataError

SUBSETS = ("train", "val", "test")
GENERATED = ("synthetic", "synthetic3d")  # embedded generators: no root, split by counts


class DataSettings(Protocol):
    """The fields of the configuration's ``data`` section this module reads, read-only
    (``edue.config.DataConfig`` has them; docs/configuration.md explains each)."""

    @property
    def format(self) -> str: ...

    @property
    def root(self) -> str | None: ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def split(self) -> Mapping[str, Any] | str: ...

    @property
    def split_seed(self) -> int: ...

    @property
    def split_file(self) -> str | None: ...

    @property
    def size(self) -> int | None: ...

    @property
    def strict(self) -> bool: ...

    @property
    def cache(self) -> str: ...

    @property
    def cache_dir(self) -> str | None: ...

    @property
    def cache_memory_mb(self) -> int: ...

    @property
    def cache_max_gb(self) -> float | None: ...

    @property
    def patch_size(self) -> Sequence[int] | None: ...

    @property
    def patch_pos_ratio(self) -> float: ...

    @property
    def patches_per_volume(self) -> int: ...

    @property
    def augment(self) -> bool: ...


def open_configured_source(data: DataSettings) -> CaseSource:
    """The whole dataset named by the ``data`` section."""
    if data.format in GENERATED:
        if not isinstance(data.split, dict):
            raise ConfigError(
                f"data.split: generated data needs subset counts, not the preset '{data.split}'"
            )
        total = sum(int(data.split.get(s, 0)) for s in SUBSETS)
        options = dict(data.options)
        options.setdefault("n", total)
        options.setdefault("seed", data.split_seed)
        return open_source(data.format, None, **options)
    if not data.root:
        raise ConfigError(f"data.root is required for format '{data.format}'")
    return open_source(data.format, data.root, **data.options)


def split_indices(data: DataSettings, source: CaseSource) -> dict[str, list[int]]:
    """Indices of each subset: from ``split_file``, a named preset, or a seeded split.

    ``data.split`` holds subset sizes (counts or fractions, split at the patient level)
    or the name of a preset such as ``riga-standard``. Synthetic cases are independent
    draws, so their split takes consecutive ranges.
    """
    from edue.data import splits

    if data.split_file:
        saved = splits.load_split(data.split_file)
        return splits.saved_split_indices(saved, source.case_ids, data.split_file)
    if isinstance(data.split, str):
        return splits.preset_split(data.split, source.case_ids, source.patient_ids)
    if data.format in GENERATED:
        out, start = {}, 0
        for name in SUBSETS:
            count = int(data.split.get(name, 0))
            out[name] = list(range(start, start + count))
            start += count
        return out
    return splits.split_by_patient(source.patient_ids, data.split, seed=data.split_seed)


def split_record(source: CaseSource, indices: dict[str, list[int]]) -> dict[str, Any]:
    """JSON-able record of a split (case ids per subset), saved in the run folder."""
    return {name: [source.case_ids[i] for i in idx] for name, idx in indices.items()}


class PreparedSource(CaseSource):
    """A subset of a source, resized, read through the prepared-case cache, with bad
    cases skipped (or raised).

    Args:
        source: the dataset.
        indices: cases of this subset.
        size: resize 2D cases to ``size × size`` (``None`` keeps them).
        strict: re-raise the first bad case instead of skipping it.
        store: the prepared-case store (:mod:`edue.data.cache`); ``None`` decodes every
            load.
    """

    def __init__(
        self,
        source: CaseSource,
        indices: list[int],
        size: int | None,
        strict: bool,
        store: Store | None = None,
    ) -> None:
        self.source, self.size, self.strict, self.store = source, size, strict, store
        self.indices = list(indices)
        self.case_ids = [source.case_ids[i] for i in self.indices]
        self.patient_ids = [source.patient_ids[i] for i in self.indices]
        self.structures, self.spatial_dims = source.structures, source.spatial_dims

    def decode(self, index: int) -> MultiRaterCase:
        """Read and resize case ``index`` from the source (no cache)."""
        case = self.source.load(self.indices[index])
        if self.size and case.spatial_dims == 2:
            case = resize_case(case, self.size)
        return case

    def load(self, index: int) -> MultiRaterCase:
        if self.store is None:
            return self.decode(index)
        entry = self.store.get(self.case_ids[index]) or self._prepare(index)
        if entry.case is None:
            raise DataError(str(entry.error))
        return entry.case

    def _prepare(self, index: int) -> Entry:
        """Decode one case into the store (a refused case is stored with its reason)."""
        assert self.store is not None
        try:
            entry = Entry(self.decode(index))
        except DataError as exc:
            if self.strict:
                raise
            entry = Entry(None, str(exc))
        self.store.put(self.case_ids[index], entry)
        if entry.case is not None:  # as stored: memory-mapped, or made contiguous
            return self.store.get(self.case_ids[index]) or entry
        return entry

    def prepare(self, description: str = "preparing cases") -> None:
        """Put every case of the subset into the store (one process builds, the others
        wait for it and read), with a progress bar on a terminal."""
        if self.store is None:
            return
        from tqdm.auto import tqdm

        with self.store.building():
            missing = [i for i in range(len(self)) if self.store.get(self.case_ids[i]) is None]
            for index in tqdm(missing, desc=description, leave=False, disable=None):
                self._prepare(index)

    def drop_bad(self) -> list[str]:
        """Try every case once; drop the unreadable ones with a warning (or raise when strict).

        The cases are left out as :class:`~edue.data.check.SkippingSource` does.

        Returns:
            One ``file: reason`` line per dropped case.

        Raises:
            DataError: ``strict`` and a case fails to load.
        """
        self.prepare()
        kept = SkippingSource(self, strict=self.strict)
        if kept.skipped:
            good = [self.indices[i] for i in kept.indices]
            self.__init__(self.source, good, self.size, self.strict, self.store)  # type: ignore[misc]
        return kept.problems


def open_case_store(
    data: DataSettings, source: CaseSource, indices: dict[str, list[int]]
) -> Store | None:
    """The prepared-case store of the ``data`` section (``data.cache``) for these subsets.

    ``auto`` keeps the cases in memory when their estimated size (the first case's
    times the number of cases) fits ``data.cache_memory_mb``, else on disk under
    ``data.cache_dir``.
    """
    if data.cache == "off":
        return None
    total = sum(len(idx) for idx in indices.values())
    first = next((idx[0] for idx in indices.values() if idx), None)
    estimate = 0
    if data.cache == "auto" and first is not None:
        with contextlib.suppress(DataError):  # a bad first case: judged when it is read
            estimate = case_nbytes(PreparedSource(source, [first], data.size, False).decode(0))
    generated = data.format in GENERATED
    description = describe(
        data.format,
        data.root,
        dict(data.options),
        size=data.size,
        generated=[data.split, data.split_seed] if generated else None,
    )
    return open_store(
        data.cache,
        description,
        estimate * total,
        data.cache_memory_mb * 2**20,
        data.cache_dir,
        max_gb=data.cache_max_gb,
    )


def build_datasets(
    data: DataSettings,
    source: CaseSource,
    indices: dict[str, list[int]],
    require_train: bool = True,
) -> dict[str, PreparedSource]:
    """Prepared subsets sharing one prepared-case store (``data.cache``); bad cases are
    dropped with a warning unless ``data.strict``.

    Raises:
        ConfigError: ``require_train`` and the training subset is empty.
    """
    store = open_case_store(data, source, indices)
    subsets = {
        name: PreparedSource(source, idx, data.size, data.strict, store)
        for name, idx in indices.items()
        if idx
    }
    if require_train and "train" not in subsets:
        raise ConfigError("the training split is empty")
    for name, subset in subsets.items():
        subset.prepare(f"preparing {name} cases")
        subset.drop_bad()
    return subsets


class SampleTransforms:
    """Random sample transforms applied in order, whose generators a checkpoint can keep.

    Each transform draws from its own ``generator``; saving and restoring their states
    makes a resumed run crop and flip exactly as an uninterrupted one (with
    ``num_workers = 0``; worker processes hold their own copies).

    Args:
        transforms: callables on a sample dict, each with a ``generator``.
        repeats: with ``repeats > 1`` a call returns that many samples, each from its
            own pass of the transforms over the same loaded sample (several patches per
            loaded volume; :func:`collate_groups` flattens them into one batch).
    """

    def __init__(self, transforms: list[Any], repeats: int = 1) -> None:
        self.transforms = transforms
        self.repeats = repeats
        # a crop first (patch sampling): CaseDataset adds the targets to each patch
        # instead of computing them over the whole case (the flips take either)
        self.defers_targets = bool(transforms) and bool(getattr(transforms[0], "crops", False))

    def _once(self, sample: dict[str, Any]) -> dict[str, Any]:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        if self.repeats == 1:
            return self._once(sample)
        return [self._once(sample) for _ in range(self.repeats)]

    def get_state(self) -> list[torch.Tensor]:
        """Generator states of every transform."""
        return [t.generator.get_state() for t in self.transforms]

    def set_state(self, states: list[torch.Tensor]) -> None:
        """Restore what :meth:`get_state` returned."""
        for transform, state in zip(self.transforms, states, strict=True):
            transform.generator.set_state(state)


def training_transforms(data: DataSettings, seed: int, spatial_dims: int) -> SampleTransforms:
    """Patch sampling (``data.patch_size``) then flips (``data.augment``), seeded by the
    training seed."""
    transforms: list[Any] = []
    if data.patch_size:
        from edue.data.patches import make_patch_transform

        transforms.append(make_patch_transform(data.patch_size, data.patch_pos_ratio, seed))
    if data.augment:
        transforms.append(RandomFlip(spatial_dims, seed + 1))
    repeats = data.patches_per_volume if data.patch_size else 1
    return SampleTransforms(transforms, repeats)


def collate_groups(items: Sequence[dict[str, Any] | list[dict[str, Any]]]) -> dict[str, Any]:
    """:func:`~edue.data.case.collate_cases` over samples, or over groups of samples
    drawn from one case each (several patches per loaded volume), flattened in order."""
    flat = [s for item in items for s in (item if isinstance(item, list) else [item])]
    return collate_cases(flat)


def training_dataset(data: DataSettings, seed: int, subset: PreparedSource) -> CaseDataset:
    """A dataset over a subset with the configured random transforms (seeded by the
    training seed)."""
    transforms = training_transforms(data, seed, subset.spatial_dims)
    return CaseDataset(subset.loaders(), transforms if transforms.transforms else None)


@dataclass
class PreparedData:
    """A configured dataset, split and prepared.

    Attributes:
        source: the whole dataset.
        indices: the source's indices of each subset (empty subsets included).
        subsets: the prepared non-empty subsets (bad cases dropped).
        settings: the ``data`` section it was prepared from.
    """

    source: CaseSource
    indices: dict[str, list[int]]
    subsets: dict[str, PreparedSource]
    settings: DataSettings

    def training_dataset(self, seed: int) -> CaseDataset:
        """The training subset with the configured random transforms, seeded by the
        training seed (:func:`training_dataset`).

        Raises:
            ConfigError: there is no training subset.
        """
        if "train" not in self.subsets:
            raise ConfigError("the training split is empty")
        return training_dataset(self.settings, seed, self.subsets["train"])

    def split_record(self) -> dict[str, Any]:
        """JSON-able record of the split (case ids per subset), saved in the run folder."""
        return split_record(self.source, self.indices)


def prepare_data(
    data: DataSettings,
    subsets: Sequence[str] | None = None,
    *,
    require_train: bool = True,
    all_cases: bool = False,
    limits: Mapping[str, int] | None = None,
) -> PreparedData:
    """Open, split and prepare the dataset of the ``data`` section: the one entry of
    this module.

    Args:
        data: the configuration's ``data`` section.
        subsets: subsets to prepare (default: every subset of the split).
        require_train: fail when the training subset is empty.
        all_cases: every case of the dataset, under the first name of ``subsets``.
        limits: at most this many cases of a subset (a seeded random choice, in order).

    Raises:
        ConfigError: the training subset (``require_train``) or a named subset is empty
            or unknown.
    """
    source = open_configured_source(data)
    if all_cases:
        if not subsets:
            raise ValueError("all_cases needs the name to put the cases under")
        indices = {subsets[0]: list(range(len(source)))}
    else:
        indices = split_indices(data, source)
    chosen = dict(indices)
    if subsets is not None:
        chosen = {}
        for name in subsets:
            if name not in indices or not indices[name]:
                raise ConfigError(f"split '{name}' is empty or unknown (have {sorted(indices)})")
            picked = list(indices[name])
            limit = (limits or {}).get(name)
            if limit is not None and len(picked) > limit:
                keep = np.sort(np.random.default_rng(0).choice(len(picked), limit, replace=False))
                picked = [picked[i] for i in keep]
            chosen[name] = picked
    prepared = build_datasets(data, source, chosen, require_train=require_train)
    return PreparedData(source, indices, prepared, data)


def load_cases(
    data: DataSettings,
    subsets: Sequence[str],
    run_dir: str | Path | None = None,
    root: str | None = None,
    data_format: str | None = None,
    all_cases: bool = False,
    limits: Mapping[str, int] | None = None,
) -> dict[str, list[MultiRaterCase]]:
    """The prepared cases of some subsets of a run's split, in memory.

    Args:
        data: the run's ``data`` section (not modified).
        subsets: subset names, e.g. ``["test"]`` or ``["val", "train"]``.
        run_dir: the run folder; its ``split.json`` gives the split when ``root`` is not
            given.
        root: another dataset root (its own split).
        data_format: another reader name.
        all_cases: every case of the dataset, under the first name of ``subsets``.
        limits: at most this many cases of a subset (a seeded random choice, in order).

    Raises:
        ConfigError: a subset is empty or unknown.
        DataError: every case of a subset was unreadable.
    """
    changes: dict[str, Any] = {}
    if root:
        changes.update(root=root, split_file=None)
    if data_format:
        changes["format"] = data_format
    split_file = Path(run_dir) / "split.json" if run_dir is not None else None
    if not root and not all_cases and split_file is not None and split_file.is_file():
        changes["split_file"] = str(split_file)
    data = copy.deepcopy(data)
    for name, value in changes.items():  # on a copy: the run's settings stay as they are
        setattr(data, name, value)
    prepared = prepare_data(
        data, subsets, require_train=False, all_cases=all_cases, limits=limits
    ).subsets
    out = {
        name: [prepared[name].load(i) for i in range(len(prepared[name]))]
        if name in prepared
        else []
        for name in subsets
    }
    for name, cases in out.items():
        if not cases:
            raise DataError(
                f"every case of split '{name}' was skipped as unreadable (see the warnings "
                "above); nothing to evaluate",
                data.root,
            )
    return out
