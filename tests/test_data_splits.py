"""Patient-level splits, presets and split files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edue.data.splits import (
    assert_patient_disjoint,
    kfold_by_patient,
    load_split,
    preset_split,
    save_split,
    saved_split_indices,
    split_by_patient,
)
from edue.errors import ConfigError, DataError

PATIENTS = [f"p{i // 3}" for i in range(60)]  # 20 patients, 3 slices each


def _patients_of(split: dict[str, list[int]], ids: list[str]) -> dict[str, set[str]]:
    return {k: {ids[i] for i in v} for k, v in split.items()}


def test_split_by_patient_fractions_and_seed() -> None:
    split = split_by_patient(PATIENTS, (0.7, 0.1, 0.2), seed=3)
    groups = _patients_of(split, PATIENTS)
    assert [len(groups[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert sorted(i for v in split.values() for i in v) == list(range(60))
    assert split == split_by_patient(PATIENTS, (0.7, 0.1, 0.2), seed=3)
    assert split != split_by_patient(PATIENTS, (0.7, 0.1, 0.2), seed=4)
    counts = split_by_patient(PATIENTS, counts=[10, 5, 3], seed=0)
    assert [len(_patients_of(counts, PATIENTS)[k]) for k in ("train", "val", "test")] == [10, 5, 5]
    with pytest.raises(ConfigError):
        split_by_patient(PATIENTS, counts=[30, 1, 1])


def test_split_from_config_mapping() -> None:
    by_fraction = split_by_patient(PATIENTS, {"train": 0.5, "test": 0.5}, seed=2)
    assert set(by_fraction) == {"train", "test"}
    assert [len(_patients_of(by_fraction, PATIENTS)[k]) for k in ("train", "test")] == [10, 10]
    by_count = split_by_patient(PATIENTS, {"train": 12, "val": 3, "test": 5}, seed=2)
    assert [len(_patients_of(by_count, PATIENTS)[k]) for k in ("train", "val", "test")] == [
        12,
        3,
        5,
    ]
    with pytest.warns(UserWarning, match="as proportions"):
        scaled = split_by_patient(PATIENTS, {"train": 300, "val": 60, "test": 100}, seed=2)
    assert [len(_patients_of(scaled, PATIENTS)[k]) for k in ("train", "val", "test")] == [13, 3, 4]
    assert_patient_disjoint(scaled, PATIENTS)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    patients=st.lists(st.integers(0, 12), min_size=1, max_size=80),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=4).filter(lambda f: sum(f) > 0),
    seed=st.integers(0, 2**16),
)
def test_no_patient_in_two_subsets(patients: list[int], fractions: list[float], seed: int) -> None:
    ids = [f"pat{p}" for p in patients]
    names = [f"s{i}" for i in range(len(fractions))]
    split = split_by_patient(ids, fractions, seed=seed, names=names)
    assert_patient_disjoint(split, ids)
    assert sorted(i for v in split.values() for i in v) == list(range(len(ids)))
    seen: dict[str, str] = {}
    for name, indices in split.items():
        for i in indices:
            assert seen.setdefault(ids[i], name) == name


def test_kfold_covers_every_patient_once() -> None:
    tested: list[str] = []
    for fold in range(5):
        split = kfold_by_patient(PATIENTS, k=5, fold=fold, seed=1, val_fraction=0.25)
        assert_patient_disjoint(split, PATIENTS)
        groups = _patients_of(split, PATIENTS)
        assert len(groups["test"]) == 4 and len(groups["val"]) == 4 and len(groups["train"]) == 12
        tested += sorted(groups["test"])
    assert sorted(tested) == sorted(set(PATIENTS))
    with pytest.raises(ConfigError):
        kfold_by_patient(PATIENTS, k=5, fold=5)


def test_disjoint_check_catches_leak() -> None:
    with pytest.raises(DataError, match="patient 'p0'"):
        assert_patient_disjoint({"train": [0], "test": [1]}, PATIENTS)


def test_riga_standard_preset() -> None:
    cases = ["BinRushed-a", "MESSIDOR-b", "Magrabia-c", "x"]
    patients = ["BinRushed", "MESSIDOR", "Magrabia", "MagrabiaMale"]
    assert preset_split("riga-standard", cases, patients) == {"train": [0, 1], "test": [2, 3]}
    with pytest.raises(DataError, match="RIGA site"):
        preset_split("riga-standard", ["a"], ["b"])
    with pytest.raises(ConfigError, match="unknown split preset"):
        preset_split("nope", cases, patients)


def test_readers_register_their_own_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    from edue.data import registry

    monkeypatch.setattr(registry, "_SPLIT_PRESETS", dict(registry._SPLIT_PRESETS))
    assert "riga-standard" in registry.split_preset_names()

    def by_first_letter(cases: list[str], patients: list[str]) -> dict[str, list[int]]:
        return {"a": [i for i, c in enumerate(cases) if c.startswith("a")]}

    registry.register_split_preset("first-letter", by_first_letter)
    assert preset_split("first-letter", ["ab", "b", "ac"], ["1", "2", "3"]) == {"a": [0, 2]}
    registry.register_split_preset("lazy", "edue.data.riga:riga_standard_split")
    assert preset_split("lazy", ["x"], ["Magrabia"]) == {"train": [], "test": [0]}
    with pytest.raises(ConfigError, match="known: first-letter, lazy, riga-standard"):
        preset_split("nope", [], [])


def test_save_and_load_split(tmp_path: Path) -> None:
    case_ids = [f"case{i}" for i in range(60)]
    split = split_by_patient(PATIENTS, seed=7)
    path = tmp_path / "split.json"
    save_split(path, split, case_ids)
    loaded = load_split(path)
    assert loaded == {k: [case_ids[i] for i in v] for k, v in split.items()}
    written = json.loads(path.read_text())
    assert written["format"] == "edue-split" and written["train"] == loaded["train"]
    # a run's split record (top-level subsets) and the nested form are read too
    path.write_text(json.dumps({"train": ["case1"], "test": ["case2"]}))
    assert load_split(path) == {"train": ["case1"], "test": ["case2"]}
    path.write_text(json.dumps({"subsets": {"val": ["case3"]}}))
    assert load_split(path) == {"val": ["case3"]}
    save_split(path, split, case_ids)
    # reordered dataset: indices follow the ids, not the positions
    reordered = list(reversed(case_ids))
    back = saved_split_indices(loaded, reordered, path)
    assert {k: [reordered[i] for i in v] for k, v in back.items()} == loaded
    with pytest.raises(DataError, match="not in the dataset"):
        saved_split_indices(loaded, case_ids[:10], path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot parse"):
        load_split(path)
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "missing.json")
