"""Where the data layer finds its dataset readers and named splits, by name.

A reader module declares here what it provides: a *format* (``data.format: NAME``, a
:class:`~edue.data.source.CaseSource` factory) and, where the dataset has one, a
*split preset* (``data.split: NAME``, see :func:`edue.data.splits.preset_split`).
Targets are ``"module:attribute"`` strings imported on first use, so this module
imports nothing heavy and the generic modules (:mod:`edue.data.source`,
:mod:`edue.data.splits`) need not know any reader.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from edue.errors import ConfigError

SplitPreset = Callable[[Sequence[str], Sequence[str]], dict[str, list[int]]]
"""``(case_ids, patient_ids) -> {subset: [case indices]}``."""

_READERS: dict[str, str] = {
    # format name -> "module:callable" returning a CaseSource for (root, **options)
    "folder": "edue.data.folder:FolderSource",
    "synthetic": "edue.data.synthetic_source:SyntheticSource",
    "synthetic3d": "edue.data.synthetic_source:Synthetic3DSource",
    "riga-discregion": "edue.data.riga:RigaDiscRegionSource",
    "riga-plus": "edue.data.riga:RigaPlusSource",
    "hecktor": "edue.data.hecktor:HecktorSource",
    "lidc-pickle": "edue.data.lidc:LidcPickleSource",
    "lidc-hdf5": "edue.data.lidc:LidcHdf5Source",
    "qubiq": "edue.data.qubiq:QubiqSource",
    "monai-datalist": "edue.data.monai_datalist:MonaiDatalistSource",
    "nnunet-raw": "edue.data.nnunet_raw:NnunetRawSource",
}

_SPLIT_PRESETS: dict[str, str | SplitPreset] = {
    # preset name -> "module:callable" (or the callable) of type SplitPreset
    "riga-standard": "edue.data.riga:riga_standard_split",
}


def _resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(target):
        return target
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def register_reader(name: str, target: str) -> None:
    """Register a reader ``"module:callable"`` under a format name."""
    _READERS[name] = target


def reader_names() -> list[str]:
    """Names of the registered formats."""
    return sorted(_READERS)


def reader(name: str) -> Callable[..., Any]:
    """The factory of format ``name``: ``(root, **options)`` or ``(**options)`` → source.

    Raises:
        ConfigError: unknown format.
    """
    if name not in _READERS:
        raise ConfigError(f"unknown data format '{name}' (known: {', '.join(reader_names())})")
    return _resolve(_READERS[name])


def register_split_preset(name: str, target: str | SplitPreset) -> None:
    """Register a named split: a :data:`SplitPreset` or its ``"module:callable"``."""
    _SPLIT_PRESETS[name] = target


def split_preset_names() -> list[str]:
    """Names of the registered split presets."""
    return sorted(_SPLIT_PRESETS)


def split_preset(name: str) -> SplitPreset:
    """The split preset registered as ``name``.

    Raises:
        ConfigError: unknown preset.
    """
    if name not in _SPLIT_PRESETS:
        raise ConfigError(
            f"unknown split preset '{name}' (known: {', '.join(split_preset_names())})"
        )
    return _resolve(_SPLIT_PRESETS[name])
