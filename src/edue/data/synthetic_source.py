"""The embedded generators (2D fundus-like, 3D PET/CT-like) as case sources."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from edue.data.case import MultiRaterCase
from edue.data.source import CaseSource
from edue.errors import ConfigError


class GeneratedSource(CaseSource):
    """Cases ``start … start + n − 1`` of a seeded generator, made on demand.

    Args:
        generate: ``(index, seed, config) -> MultiRaterCase``.
        config_type: the generator's configuration dataclass.
        prefix: case-id prefix (ids are ``{prefix}-{seed}-{index:05d}``).
        structures: structure names the generator produces.
        spatial_dims: 2 or 3.
        n: number of cases.
        seed: generator seed (the same seed and index always give the same case).
        start: index of the first case.
        cache: keep generated cases in memory.
        options: fields of ``config_type`` (lists from YAML are accepted for tuples).

    Raises:
        ConfigError: an unknown option or an invalid value.
    """

    def __init__(
        self,
        generate: Callable[..., MultiRaterCase],
        config_type: type,
        prefix: str,
        structures: tuple[str, ...],
        spatial_dims: int,
        n: int,
        seed: int,
        start: int,
        cache: bool,
        options: dict[str, Any],
    ) -> None:
        known = sorted(f.name for f in fields(config_type))
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown generator option(s) {unknown} (known: {known})")
        config = config_type(**options)
        self.generator_config = config.check() if hasattr(config, "check") else config
        self.generate = generate
        self.seed, self.start, self.cache = seed, start, cache
        self.case_ids = [f"{prefix}-{seed}-{start + i:05d}" for i in range(n)]
        self.patient_ids = list(self.case_ids)
        self.structures = structures
        self.spatial_dims = spatial_dims
        self._cases: dict[int, MultiRaterCase] = {}

    def load(self, index: int) -> MultiRaterCase:
        if index in self._cases:
            return self._cases[index]
        case = self.generate(self.start + index, self.seed, self.generator_config)
        if self.cache:
            self._cases[index] = case
        return case


class SyntheticSource(GeneratedSource):
    """The 2D fundus-like generator (:mod:`edue.data.synthetic`); options are fields of
    :class:`~edue.data.synthetic.FundusConfig` (``size``, ``n_raters``, …)."""

    def __init__(
        self, n: int = 460, seed: int = 0, start: int = 0, cache: bool = True, **options: Any
    ) -> None:
        from edue.data.synthetic import STRUCTURES, FundusConfig, generate_case

        super().__init__(
            generate_case, FundusConfig, "synth", STRUCTURES, 2, n, seed, start, cache, options
        )


class Synthetic3DSource(GeneratedSource):
    """The 3D PET/CT-like generator (:mod:`edue.data.synthetic3d`); options are fields of
    :class:`~edue.data.synthetic3d.Volume3DConfig` (``size``, ``n_raters``, ``spacing``, …)."""

    def __init__(
        self, n: int = 70, seed: int = 0, start: int = 0, cache: bool = True, **options: Any
    ) -> None:
        from edue.data.synthetic3d import STRUCTURES_3D, Volume3DConfig, generate_volume

        super().__init__(
            generate_volume, Volume3DConfig, "vol", STRUCTURES_3D, 3, n, seed, start, cache, options
        )
