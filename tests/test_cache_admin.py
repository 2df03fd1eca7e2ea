"""Cache housekeeping: least-recently-used eviction under ``data.cache_max_gb`` and
``edue cache list|clear``, which never touch a store in use nor anything that is not a
store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from edue.cli import build_parser, cmd_cache
from edue.data.cache import (
    LAST_USED,
    DiskStore,
    Entry,
    describe,
    last_use,
    list_stores,
    open_store,
    remove_store,
)
from edue.data.synthetic import FundusConfig, generate_cases
from edue.errors import ConfigError

DAY = 86400.0
CASES = generate_cases(2, seed=0, config=FundusConfig(size=16, n_raters=2))


def _store(root: Path, tag: str, max_gb: float | None = None, data: Path | None = None):
    """A disk store of two tiny cases, as a run opens and builds it (still held)."""
    description = describe("folder" if data else "synthetic", data and str(data), {"tag": tag})
    store = open_store("disk", description, 0, 0, root, max_gb)
    assert isinstance(store, DiskStore)
    with store.building():
        for case in CASES:
            store.put(case.case_id, Entry(case))
    return store


def _built(root: Path, *tags: str) -> dict[str, DiskStore]:
    """Stores built by runs that have ended (released), in the order of ``tags``."""
    stores = {tag: _store(root, tag) for tag in tags}
    for store in stores.values():
        store.release()
    return stores


def _used_ago(store: DiskStore, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(store.folder / LAST_USED, (then, then))


def _cache(*argv: str) -> int:
    args = build_parser().parse_args(["cache", *argv])
    assert args.func is cmd_cache
    return cmd_cache(args)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) with its size and mtime."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            stat = path.lstat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


def test_a_use_is_recorded_when_a_store_is_opened(tmp_path):
    (store,) = _built(tmp_path, "a").values()
    _used_ago(store, 3)
    assert time.time() - last_use(store.folder) > 2 * DAY
    again = open_store("disk", store.description, 0, 0, tmp_path)
    assert time.time() - last_use(again.folder) < 60
    assert again.get(CASES[0].case_id) is not None


def test_the_least_recently_used_stores_go_first(tmp_path):
    stores = _built(tmp_path, "a", "b", "c")
    size = list_stores(tmp_path)[0].nbytes
    for tag, days in (("a", 3), ("b", 2), ("c", 1)):
        _used_ago(stores[tag], days)
    open_store("disk", stores["a"].description, 0, 0, tmp_path).release()  # a used again
    # room for two and a half stores: with the new one, two of the old ones must go
    with pytest.warns(UserWarning, match="cache over data.cache_max_gb") as caught:
        new = _store(tmp_path, "d", max_gb=2.5 * size / 2**30)
    (warning,) = caught
    message = str(warning.message)
    assert stores["b"].folder.name[:12] in message and stores["c"].folder.name[:12] in message
    assert "\n" not in message
    left = {s.folder for s in list_stores(tmp_path)}
    assert left == {stores["a"].folder, new.folder}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in left)
    assert new.get(CASES[0].case_id) is not None


def test_a_store_open_or_being_built_elsewhere_is_never_evicted(tmp_path):
    stores = _built(tmp_path, "a", "b", "c")
    size = list_stores(tmp_path)[0].nbytes
    for tag, days in (("a", 3), ("b", 2), ("c", 1)):
        _used_ago(stores[tag], days)
    reader = open_store("disk", stores["a"].description, 0, 0, tmp_path)  # another run
    _used_ago(stores["a"], 3)  # …that opened it long ago and still reads it
    builder = DiskStore(stores["b"].folder, stores["b"].description)
    with builder.building(), pytest.warns(UserWarning, match="the rest is in use"):
        # room for one store only: a (open) and b (being built) stay, c goes
        new = _store(tmp_path, "d", max_gb=1.5 * size / 2**30)
    left = {s.folder for s in list_stores(tmp_path)}
    assert left == {stores["a"].folder, stores["b"].folder, new.folder}
    assert not remove_store(stores["a"].folder)
    reader.release()
    assert remove_store(stores["a"].folder)  # free now
    assert not stores["a"].folder.exists()


def test_no_cap_or_room_enough_evicts_nothing(tmp_path, recwarn):
    _built(tmp_path, "a", "b")
    _store(tmp_path, "c")
    _store(tmp_path, "d", max_gb=1.0)
    assert len(list_stores(tmp_path)) == 4 and not recwarn.list


def test_list_prints_one_line_per_store_and_a_total(tmp_path, capsys):
    cache = tmp_path / "cache"
    stores = _built(cache, "a")
    stores["b"] = _store(cache, "b", data=tmp_path / "dataset")  # still open
    _used_ago(stores["a"], 2)
    (cache / "notes.txt").write_text("not a store")
    (cache / "other").mkdir()
    assert _cache("list", "--dir", str(cache)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    first, second, total = lines
    assert first.startswith(stores["a"].folder.name) and "  synthetic  -  " in first
    assert second.startswith(stores["b"].folder.name)
    assert f"  folder  {(tmp_path / 'dataset').resolve()}  " in second
    day = time.strftime("%Y-%m-%d", time.localtime(time.time() - 2 * DAY))
    assert f"last used {day}" in first and second.endswith("(in use)")
    for line in (first, second):
        assert " MB  2 cases  last used " in line
    mb = sum(s.nbytes for s in list_stores(cache)) / 2**20
    assert total == f"total: 2 store(s), {mb:.1f} MB in {cache}"


def test_clear_older_than_removes_only_stores_unused_that_long(tmp_path, capsys):
    stores = _built(tmp_path, "old", "recent", "busy")
    _used_ago(stores["old"], 10)
    _used_ago(stores["recent"], 1)
    busy = open_store("disk", stores["busy"].description, 0, 0, tmp_path)
    _used_ago(stores["busy"], 10)
    size = {s.folder: s.nbytes for s in list_stores(tmp_path)}[stores["old"].folder]
    assert _cache("clear", "--dir", str(tmp_path), "--older-than", "5") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"removed {stores['old'].folder.name}  synthetic")
    assert out[1].startswith(f"kept (in use) {stores['busy'].folder.name}")
    assert out[-1] == f"freed {size / 2**20:.1f} MB (1 store(s))"
    assert not stores["old"].folder.exists()
    assert stores["recent"].folder.is_dir() and stores["busy"].folder.is_dir()
    busy.release()
    assert _cache("clear", "--dir", str(tmp_path)) == 0
    assert "(2 store(s))" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_clear_dry_run_removes_nothing(tmp_path, capsys):
    stores = _built(tmp_path, "a", "b")
    before = _snapshot(tmp_path)
    assert _cache("clear", "--dir", str(tmp_path), "--dry-run") == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out[:2]] == [
        ["would", "remove", s.folder.name] for s in stores.values()
    ]
    assert out[-1].startswith("would free ") and out[-1].endswith("(2 store(s))")
    assert _snapshot(tmp_path) == before


def test_clear_touches_nothing_that_is_not_a_store(tmp_path, capsys):
    home = tmp_path / "home"  # a cache folder pointed at a user's home
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.tex").write_text("precious")
    (home / ".bashrc").write_text("alias ll='ls -l'")
    hexname = "ab" * 32
    (home / hexname).mkdir()  # a store's name, no manifest
    (home / hexname / "data.npy").write_bytes(b"x")
    (home / "description-holder").mkdir()  # a manifest, not a store's name
    (home / "description-holder" / "description.json").write_text('{"edue": 1, "format": 1}')
    (home / ("cd" * 32)).mkdir()  # a store's name and a description.json of something else
    (home / ("cd" * 32) / "description.json").write_text(json.dumps({"title": "mine"}))
    elsewhere = _built(tmp_path / "elsewhere", "a")["a"]  # a real store outside the folder…
    (home / elsewhere.folder.name).symlink_to(elsewhere.folder)  # …linked from inside it
    (home / ("ef" * 32 + ".removing")).symlink_to(home / "Documents")
    store = _built(home, "b")["b"]
    kept = {k: v for k, v in _snapshot(home).items() if not k.startswith(store.folder.name)}
    outside = _snapshot(elsewhere.folder)
    assert _cache("clear", "--dir", str(home)) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(1 store(s))")
    assert not store.folder.exists()
    assert _snapshot(home) == kept and _snapshot(elsewhere.folder) == outside
    assert (home / "Documents" / "thesis.tex").read_text() == "precious"


def test_an_interrupted_removal_is_finished_by_clear(tmp_path, capsys):
    store = _built(tmp_path, "a")["a"]
    store.folder.rename(store.folder.with_name(store.folder.name + ".removing"))
    assert _cache("clear", "--dir", str(tmp_path)) == 0
    assert "of interrupted removals" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["list", "clear"])
def test_a_bad_cache_folder_is_a_config_error(tmp_path, command):
    with pytest.raises(ConfigError, match="does not exist"):
        _cache(command, "--dir", str(tmp_path / "missing"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a folder"):
        _cache(command, "--dir", str(tmp_path / "file"))


def test_negative_days_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--older-than -1: expected a number of days >= 0"):
        _cache("clear", "--dir", str(tmp_path), "--older-than", "-1")


def test_the_default_folder_is_the_cache_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDUE_CACHE_DIR", str(tmp_path / "not-yet"))
    assert _cache("list") == 0 and "no cache folder yet" in capsys.readouterr().out
    assert _cache("clear") == 0 and "freed 0.0 MB (0 store(s))" in capsys.readouterr().out
    monkeypatch.setenv("EDUE_CACHE_DIR", str(tmp_path))
    _built(tmp_path, "a")
    assert _cache("list") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("total: 1 store(s)")
