"""The PET/CT-like volume generator as a :class:`~edue.data.source.CaseSource`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from edue.data.case import MultiRaterCase
from edue.data.source import CaseSource
from edue.errors import ConfigError


class Synthetic3DSource(CaseSource):
    """Cases ``start … start + n − 1`` of the seeded volume generator, made on demand.

    Args:
        n: number of cases.
        seed: generator seed (the same seed and index always give the same case).
        start: index of the first case.
        cache: keep generated cases in memory.
        **options: fields of :class:`~edue.data.synthetic3d.Volume3DConfig` (``size``,
            ``n_raters``, ``spacing``, …); lists from YAML are accepted for tuples.

    Raises:
        ConfigError: an unknown option or an invalid value.
    """

    def __init__(
        self, n: int = 70, seed: int = 0, start: int = 0, cache: bool = True, **options: Any
    ) -> None:
        from edue.data.synthetic3d import STRUCTURES_3D, Volume3DConfig

        known = sorted(f.name for f in fields(Volume3DConfig))
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown synthetic3d option(s) {unknown} (known: {known})")
        self.generator_config = Volume3DConfig(**options).check()
        self.seed, self.start, self.cache = seed, start, cache
        self.case_ids = [f"vol-{seed}-{start + i:05d}" for i in range(n)]
        self.patient_ids = list(self.case_ids)
        self.structures = STRUCTURES_3D
        self.spatial_dims = 3
        self._cases: dict[int, MultiRaterCase] = {}

    def load(self, index: int) -> MultiRaterCase:
        from edue.data.synthetic3d import generate_volume

        if index in self._cases:
            return self._cases[index]
        case = generate_volume(self.start + index, self.seed, self.generator_config)
        if self.cache:
            self._cases[index] = case
        return case
