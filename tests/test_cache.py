"""The prepared-case cache: keyed by files and options, never trusts a damaged entry,
and changes nothing a run computes."""

import dataclasses
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edue.config import load_config
from edue.data import case as case_module
from edue.data.cache import DiskStore, Entry, MemoryStore, contiguous_case, describe, store_key
from edue.data.case import CaseDataset, case_to_sample
from edue.data.folder import write_folder_dataset
from edue.data.patches import PatchSampler
from edue.data.pipeline import (
    PreparedSource,
    SampleTransforms,
    build_datasets,
    open_configured_source,
    split_indices,
)
from edue.data.synthetic import FundusConfig, generate_cases
from edue.data.synthetic3d import Volume3DConfig, generate_volume
from edue.data.transforms import RandomFlip
from edue.engine.training.trainer import Trainer

SPLIT = "data.split={train: 6, val: 2, test: 2}"


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    cases = generate_cases(10, seed=3, config=FundusConfig(size=32, n_raters=3))
    return write_folder_dataset(cases, tmp_path / "data", name="cache-test")


def _config(root: Path, cache_dir: Path, *extra: str):
    return load_config(
        None,
        [
            "data.format=folder",
            f"data.root={root}",
            SPLIT,
            "data.cache=disk",
            f"data.cache_dir={cache_dir}",
            "model.channels=[4, 8]",
            "train.epochs=1",
            "train.batch_size=3",
            "train.device=cpu",
            *extra,
        ],
    )


def _subsets(config):
    source = open_configured_source(config.data)
    return build_datasets(config.data, source, split_indices(config.data, source))


def _count_decodes(monkeypatch) -> list[str]:
    decoded: list[str] = []
    original = PreparedSource.decode

    def counting(self, index):
        decoded.append(self.case_ids[index])
        return original(self, index)

    monkeypatch.setattr(PreparedSource, "decode", counting)
    return decoded


def _stores(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir())


def test_a_later_run_reads_the_prepared_cases(folder_dataset, tmp_path, monkeypatch):
    decoded = _count_decodes(monkeypatch)
    first = _subsets(_config(folder_dataset, tmp_path / "cache"))
    assert sorted(decoded) == sorted(
        cid for s in first.values() for cid in s.case_ids
    )  # each case decoded exactly once (not again by the check of bad cases)
    decoded.clear()
    again = _subsets(_config(folder_dataset, tmp_path / "cache"))
    assert decoded == []
    case, reference = again["train"].load(0), first["train"].decode(0)
    assert isinstance(case.image, np.memmap)
    np.testing.assert_array_equal(case.image, reference.image)
    np.testing.assert_array_equal(case.masks, reference.masks)
    assert (case.case_id, case.structures) == (reference.case_id, reference.structures)
    assert len(_stores(tmp_path / "cache")) == 1


def test_a_changed_file_or_option_gives_another_store(folder_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _subsets(_config(folder_dataset, cache))
    _subsets(_config(folder_dataset, cache, "data.size=24"))  # another preprocessing
    assert len(_stores(cache)) == 2
    image = next(folder_dataset.rglob("image.png"))
    later = time.time() + 5
    os.utime(image, (later, later))  # same bytes, new modification time
    decoded = _count_decodes(monkeypatch)
    _subsets(_config(folder_dataset, cache))
    assert len(_stores(cache)) == 3 and len(decoded) == 10


def test_description_names_what_the_cases_depend_on(folder_dataset):
    one = describe("folder", str(folder_dataset), {}, size=None)
    assert one["files"] and all(len(f) == 3 for f in one["files"])
    assert store_key(one) == store_key(describe("folder", str(folder_dataset), {}, size=None))
    assert store_key(one) != store_key(describe("folder", str(folder_dataset), {"a": 1}))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(folder_dataset, tmp_path, damage):
    config = _config(folder_dataset, tmp_path / "cache")
    subset = _subsets(config)["train"]
    expected = subset.decode(0)
    (store,) = _stores(tmp_path / "cache")
    stem = DiskStore(store, {})._stem(subset.case_ids[0])
    target = store / f"{stem}.masks.npy"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        target.unlink()
    with pytest.warns(UserWarning, match="cache entry of .* is damaged .*rebuilding it"):
        fresh = _subsets(config)["train"]  # as a new process would read the store
    case = fresh.load(0)
    np.testing.assert_array_equal(case.masks, expected.masks)
    assert DiskStore(store, {}).get(subset.case_ids[0]) is not None  # repaired on disk


def test_a_refused_case_is_remembered(folder_dataset, tmp_path, monkeypatch):
    broken = sorted(p for p in folder_dataset.iterdir() if p.is_dir())[0]
    (next(broken.glob("image.*"))).write_bytes(b"not an image")
    config = _config(folder_dataset, tmp_path / "cache")
    with pytest.warns(UserWarning, match="skipping 1 of"):
        first = _subsets(config)
    decoded = _count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="skipping 1 of"):
        again = _subsets(config)
    assert decoded == []
    assert [s.case_ids for s in again.values()] == [s.case_ids for s in first.values()]


def test_auto_keeps_small_data_in_memory_and_large_on_disk(folder_dataset, tmp_path):
    small = _subsets(_config(folder_dataset, tmp_path / "c", "data.cache=auto"))
    assert isinstance(small["train"].store, MemoryStore)
    large = _subsets(
        _config(folder_dataset, tmp_path / "c", "data.cache=auto", "data.cache_memory_mb=0")
    )
    assert isinstance(large["train"].store, DiskStore)
    off = _subsets(_config(folder_dataset, tmp_path / "c", "data.cache=off"))
    assert off["train"].store is None


def _trained_weights(config) -> dict[str, torch.Tensor]:
    trainer = Trainer(config)
    trainer.setup()
    trainer.fit()
    return trainer.method.state_dict()


@pytest.mark.slow
def test_cached_and_uncached_training_give_identical_weights(folder_dataset, tmp_path):
    weights = {
        mode: _trained_weights(
            _config(
                folder_dataset,
                tmp_path / "cache",
                f"data.cache={mode}",
                "data.augment=true",
                f"out_dir={tmp_path / mode}",
            )
        )
        for mode in ("off", "memory", "disk")
    }
    for mode in ("memory", "disk"):
        assert weights[mode].keys() == weights["off"].keys()
        assert all(torch.equal(weights[mode][k], weights["off"][k]) for k in weights["off"])


def test_the_memory_store_keeps_contiguous_arrays():
    # NIfTI readers hand over Fortran-ordered volumes: stored as they come, every load
    # would copy them again to make tensors
    case = generate_volume(0, seed=1, config=Volume3DConfig(size=16, n_raters=3))
    strided = dataclasses.replace(case, masks=np.asfortranarray(case.masks))
    assert not strided.masks.flags.c_contiguous
    store = MemoryStore()
    store.put("a", Entry(strided))
    kept = store.get("a").case
    assert kept.masks.flags.c_contiguous and kept.image.flags.c_contiguous
    np.testing.assert_array_equal(kept.masks, case.masks)
    assert (kept.case_id, kept.structures, kept.spacing) == (
        case.case_id,
        case.structures,
        case.spacing,
    )
    assert contiguous_case(case) is case  # nothing to do: no copy


def _patch_transforms(ratio: float = 0.67) -> SampleTransforms:
    return SampleTransforms([PatchSampler([8, 10, 12], ratio, seed=3), RandomFlip(3, 4)], repeats=3)


def test_patch_targets_are_computed_on_the_patches_with_the_same_values(monkeypatch):
    cases = [
        generate_volume(i, seed=0, config=Volume3DConfig(size=20, n_raters=3)) for i in range(3)
    ]
    cases[1] = dataclasses.replace(cases[1], masks=np.asfortranarray(cases[1].masks))
    reference = _patch_transforms()  # the targets of the whole case, then cropped
    expected = [reference(case_to_sample(c)) for _ in range(3) for c in cases]
    shapes: list[tuple] = []
    original = case_module.soft_vote

    def recording(masks):
        shapes.append(tuple(masks.shape[2:]))
        return original(masks)

    monkeypatch.setattr(case_module, "soft_vote", recording)
    dataset = CaseDataset(cases, _patch_transforms())
    assert dataset.transform.defers_targets
    got = [dataset[i] for _ in range(3) for i in range(len(cases))]
    assert set(shapes) == {(8, 10, 12)}  # never over a whole volume
    for patches, reference_patches in zip(got, expected, strict=True):
        for patch, ref in zip(patches, reference_patches, strict=True):
            assert patch.keys() == ref.keys()
            for key, value in ref.items():
                if isinstance(value, torch.Tensor):  # bitwise, dtype included
                    assert patch[key].dtype == value.dtype and torch.equal(patch[key], value), key
                else:
                    assert patch[key] == value


def test_the_foreground_of_a_volume_is_found_once(monkeypatch):
    sample = case_to_sample(
        generate_volume(0, seed=2, config=Volume3DConfig(size=16, n_raters=3)), targets=False
    )
    sampler = PatchSampler(8, pos_ratio=1.0, seed=0)
    calls = []
    original = torch.nonzero

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "nonzero", counting)
    for _ in range(4):  # several patches of one loaded volume
        sampler(sample)
    assert len(calls) == 1 and sampler.last_draw.positive
    sample["masks"].zero_()  # changed in place: found again (and now empty)
    sampler(sample)
    assert len(calls) == 2 and not sampler.last_draw.positive
    # what a DataLoader worker receives holds no volume (the masks alone are 24 kB): the
    # size of a fresh sampler's pickle and its last draw; and it draws as the original
    shipped = pickle.dumps(sampler)
    assert len(shipped) < len(pickle.dumps(PatchSampler(8, pos_ratio=1.0, seed=0))) + 100
    copy = pickle.loads(shipped)
    copy(sample)
    sampler(sample)
    assert copy.last_draw == sampler.last_draw


def test_a_disk_entry_read_again_skips_the_npy_header(tmp_path, monkeypatch):
    case = generate_volume(0, seed=3, config=Volume3DConfig(size=16, n_raters=2))
    store = DiskStore(tmp_path / "store", {})
    store.folder.mkdir()
    store.put("a", Entry(case))
    loads = []
    original = np.load

    def counting(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(np, "load", counting)
    first = store.get("a").case
    n_arrays = len(loads)
    again = store.get("a").case
    assert n_arrays >= 2 and len(loads) == n_arrays  # mapped from the known layout
    for name in ("image", "masks", "affine"):
        assert isinstance(getattr(again, name), np.memmap)
        np.testing.assert_array_equal(getattr(again, name), getattr(case, name))
        np.testing.assert_array_equal(getattr(first, name), getattr(case, name))
    smaller = dataclasses.replace(
        case, image=case.image[:, :8].copy(), masks=case.masks[..., :8, :, :].copy()
    )
    store.put("a", Entry(smaller))  # rewritten with other shapes: its header is read again
    reread = store.get("a").case
    assert len(loads) > n_arrays
    np.testing.assert_array_equal(reread.image, smaller.image)
    np.testing.assert_array_equal(reread.masks, smaller.masks)


def test_disk_arrays_make_tensors_without_a_warning_and_keep_the_file(tmp_path):
    # mapped copy-on-write: writable, so torch.from_numpy does not warn about a
    # read-only buffer, and a write into the tensor never reaches the file
    case = generate_volume(0, seed=3, config=Volume3DConfig(size=16, n_raters=2))
    store = DiskStore(tmp_path / "store", {})
    store.folder.mkdir()
    store.put("a", Entry(case))
    files = {p.name: p.read_bytes() for p in store.folder.iterdir()}
    for _ in range(2):  # header parsed, then mapped from the known layout
        loaded = store.get("a").case
        for name in ("image", "masks", "affine"):
            array = getattr(loaded, name)
            assert isinstance(array, np.memmap) and array.flags.writeable, name
        masks = torch.from_numpy(loaded.masks)
        masks.fill_(7)  # in place, as a transform may
        sample = case_to_sample(loaded)
        assert torch.all(sample["masks"] == 7)
    np.testing.assert_array_equal(store.get("a").case.masks, case.masks)
    assert {p.name: p.read_bytes() for p in store.folder.iterdir()} == files


WARNINGS_ARE_ERRORS = """
import sys
import torch
from edue.config import load_config
from edue.data.case import case_to_sample
from edue.data.pipeline import build_datasets, open_configured_source, split_indices
from edue.data.pipeline import training_dataset

config = load_config(None, sys.argv[1:])
source = open_configured_source(config.data)
for _ in range(2):  # the run that builds the store, then one that reads it
    subsets = build_datasets(config.data, source, split_indices(config.data, source))
    assert type(subsets["train"].store).__name__ == "DiskStore"
    training_dataset(config.data, config.train.seed, subsets["train"])[0]
    case = subsets["val"].load(0)
    case_to_sample(case)
    torch.from_numpy(case.masks), torch.from_numpy(case.image)
print("clean")
"""


def test_disk_mode_loads_cases_with_warnings_as_errors(tmp_path):
    # a fresh interpreter: PyTorch gives its non-writable-array warning once per process
    import subprocess
    import sys

    overrides = [
        "data.format=synthetic",
        "data.options={size: 16}",
        "data.split={train: 2, val: 1, test: 0}",
        "data.cache=disk",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.augment=true",
    ]
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", WARNINGS_ARE_ERRORS, *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr[-2000:]
