"""Multi-rater datasets: the case contract, readers by name, splits and transforms.

The public names below are imported on first use (``import edue.data`` itself loads
nothing heavy), so ``from edue.data import open_source`` costs only what that name needs.

* Case contract (:mod:`~edue.data.case`): :class:`MultiRaterCase` (``image [C, *sp]``,
  ``masks [R, K, *sp]``), :class:`CaseDataset`, the expert soft vote, variance and SV.
* Sources (:mod:`~edue.data.source`, :mod:`~edue.data.registry`): :class:`CaseSource`,
  :func:`open_source` by format name, :func:`register_reader` and
  :func:`register_split_preset` for new readers; :class:`FolderSource` and
  :func:`write_folder_dataset` for the project's own folder format.
* Checks (:mod:`~edue.data.check`): :func:`check_dataset`, :func:`check_path`,
  :class:`SkippingSource`.
* Splits (:mod:`~edue.data.splits`): patient-level seeded splits, k-fold, presets,
  split files.
* Transforms (:mod:`~edue.data.transforms`, :mod:`~edue.data.patches`,
  :mod:`~edue.data.distortions`): resizing, flips, patch sampling and the OOD
  study's distortions.
* Generators (:mod:`~edue.data.synthetic`, :mod:`~edue.data.synthetic3d`): the embedded
  fundus-like images and PET/CT-like volumes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE: dict[str, str] = {
    # case contract
    "MultiRaterCase": "case",
    "CaseDataset": "case",
    "binary_rater_masks": "case",
    "case_to_sample": "case",
    "collate_cases": "case",
    "expert_sv": "case",
    "expert_variance": "case",
    "soft_vote": "case",
    "validate_arrays": "case",
    # sources and the registry of readers and split presets
    "CaseSource": "source",
    "ListSource": "source",
    "SubsetSource": "source",
    "open_source": "source",
    "reader_names": "registry",
    "register_reader": "registry",
    "register_split_preset": "registry",
    "split_preset_names": "registry",
    "FolderSource": "folder",
    "write_folder_dataset": "folder",
    # checks
    "CheckReport": "check",
    "SkippingSource": "check",
    "check_dataset": "check",
    "check_path": "check",
    "unreadable_cases": "check",
    # splits
    "assert_patient_disjoint": "splits",
    "kfold_by_patient": "splits",
    "load_split": "splits",
    "preset_split": "splits",
    "save_split": "splits",
    "split_by_patient": "splits",
    "saved_split_indices": "splits",
    # transforms and distortions
    "RandomFlip": "transforms",
    "resize_case": "transforms",
    "resize_image": "transforms",
    "make_patch_transform": "patches",
    "DISTORTIONS": "distortions",
    "distort": "distortions",
    "distort_dataset": "distortions",
    "gaussian_blur": "distortions",
    "gaussian_noise": "distortions",
    "hue_shift": "distortions",
    # generators
    "FundusConfig": "synthetic",
    "generate_case": "synthetic",
    "generate_cases": "synthetic",
    "Volume3DConfig": "synthetic3d",
    "generate_volume": "synthetic3d",
    "generate_volumes": "synthetic3d",
}

__all__ = [
    "CaseDataset",
    "CaseSource",
    "CheckReport",
    "DISTORTIONS",
    "FolderSource",
    "FundusConfig",
    "ListSource",
    "MultiRaterCase",
    "RandomFlip",
    "SkippingSource",
    "SubsetSource",
    "Volume3DConfig",
    "assert_patient_disjoint",
    "binary_rater_masks",
    "case_to_sample",
    "check_dataset",
    "check_path",
    "collate_cases",
    "distort",
    "distort_dataset",
    "expert_sv",
    "expert_variance",
    "gaussian_blur",
    "gaussian_noise",
    "generate_case",
    "generate_cases",
    "generate_volume",
    "generate_volumes",
    "hue_shift",
    "kfold_by_patient",
    "load_split",
    "make_patch_transform",
    "open_source",
    "preset_split",
    "reader_names",
    "register_reader",
    "register_split_preset",
    "resize_case",
    "resize_image",
    "save_split",
    "saved_split_indices",
    "soft_vote",
    "split_by_patient",
    "split_preset_names",
    "unreadable_cases",
    "validate_arrays",
    "write_folder_dataset",
]

if TYPE_CHECKING:  # pragma: no cover
    from edue.data.case import (
        CaseDataset,
        MultiRaterCase,
        binary_rater_masks,
        case_to_sample,
        collate_cases,
        expert_sv,
        expert_variance,
        soft_vote,
        validate_arrays,
    )
    from edue.data.check import (
        CheckReport,
        SkippingSource,
        check_dataset,
        check_path,
        unreadable_cases,
    )
    from edue.data.distortions import (
        DISTORTIONS,
        distort,
        distort_dataset,
        gaussian_blur,
        gaussian_noise,
        hue_shift,
    )
    from edue.data.folder import FolderSource, write_folder_dataset
    from edue.data.patches import make_patch_transform
    from edue.data.registry import (
        reader_names,
        register_reader,
        register_split_preset,
        split_preset_names,
    )
    from edue.data.source import CaseSource, ListSource, SubsetSource, open_source
    from edue.data.splits import (
        assert_patient_disjoint,
        kfold_by_patient,
        load_split,
        preset_split,
        save_split,
        saved_split_indices,
        split_by_patient,
    )
    from edue.data.synthetic import FundusConfig, generate_case, generate_cases
    from edue.data.synthetic3d import Volume3DConfig, generate_volume, generate_volumes
    from edue.data.transforms import RandomFlip, resize_case, resize_image


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'edue.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"edue.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
