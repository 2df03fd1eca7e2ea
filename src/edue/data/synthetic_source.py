"""The embedded default dataset as a :class:`~edue.data.source.CaseSource`."""

from __future__ import annotations

from typing import Any

from edue.data.case import MultiRaterCase
from edue.data.source import CaseSource


class SyntheticSource(CaseSource):
    """Cases ``start … start + n − 1`` of the seeded fundus-like generator, made on demand.

    Args:
        n: number of cases.
        seed: generator seed (the same seed and index always give the same case).
        start: index of the first case.
        cache: keep generated cases in memory.
        **options: fields of :class:`~edue.data.synthetic.FundusConfig` (``size``,
            ``n_raters``, …).
    """

    def __init__(
        self, n: int = 460, seed: int = 0, start: int = 0, cache: bool = True, **options: Any
    ) -> None:
        from edue.data.synthetic import FundusConfig

        self.generator_config = FundusConfig(**options)
        self.seed, self.start, self.cache = seed, start, cache
        self.case_ids = [f"synth-{seed}-{start + i:05d}" for i in range(n)]
        self.patient_ids = list(self.case_ids)
        self.structures = ("disc", "cup")
        self.spatial_dims = 2
        self._cases: dict[int, MultiRaterCase] = {}

    def load(self, index: int) -> MultiRaterCase:
        from edue.data.synthetic import generate_case

        if index in self._cases:
            return self._cases[index]
        case = generate_case(self.start + index, self.seed, self.generator_config)
        if self.cache:
            self._cases[index] = case
        return case
