"""The browser look-up of the HTML tests: a missing browser skips them with a reason, and
fails them under ``CI=true``, so that CI cannot pass without running them."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM_ENV, chromium_or_skip, find_chromium


def _program(folder: Path, name: str) -> Path:
    """An executable file ``folder/name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_browser_is_found_on_path_by_any_of_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_chromium() is None
    second, first = _program(tmp_path / "b", "google-chrome"), _program(tmp_path / "a", "chromium")
    monkeypatch.setenv("PATH", str(second.parent))
    assert find_chromium() == str(second)
    monkeypatch.setenv("PATH", f"{second.parent}:{first.parent}")
    assert find_chromium() == str(first)  # chromium before google-chrome, wherever it is


def test_the_override_names_the_browser_or_its_absence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = _program(tmp_path / "bin", "chromium")
    monkeypatch.setenv("PATH", str(on_path.parent))
    elsewhere = _program(tmp_path / "opt", "my-chrome")
    monkeypatch.setenv(CHROMIUM_ENV, str(elsewhere))
    assert find_chromium() == str(elsewhere)
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "nonexistent"))
    assert find_chromium() is None  # the one on PATH is not used instead
    (tmp_path / "plain").write_text("not a program")
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "plain"))
    assert find_chromium() is None


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_no_browser_outside_ci_skips_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "nonexistent"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as info:
        chromium_or_skip("lay the page out")
    reason = str(info.value)
    assert reason.startswith("no chromium on PATH") and reason.endswith("to lay the page out")
    assert f"{CHROMIUM_ENV}={tmp_path / 'nonexistent'}" in reason


@pytest.mark.parametrize("ci", ["true", "TRUE", " True "])
def test_no_browser_under_ci_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "nonexistent"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"^CI=true but no chromium on PATH"):
        chromium_or_skip("lay the page out")


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_browser_is_returned_in_and_out_of_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    monkeypatch.setenv(CHROMIUM_ENV, sys.executable)  # any executable stands in
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert chromium_or_skip("lay the page out") == sys.executable
