"""Dataset check: summary values, problems, strict mode, skipping bad cases, the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edue.cli import main
from edue.data.case import MultiRaterCase
from edue.data.check import SkippingSource, check_dataset, check_path
from edue.data.folder import write_folder_dataset
from edue.data.source import ListSource
from edue.errors import DataError


def _case(name: str, cup_outside: bool = False, patient: str = "p1") -> MultiRaterCase:
    masks = np.zeros((3, 2, 8, 8), np.uint8)
    masks[:, 0, 1:7, 1:7] = 1  # disc
    masks[0, 1, 3:5, 3:5] = 1  # rater 1 cup: 4 px
    masks[1, 1, 3:5, 3:4] = 1  # rater 2 cup: 2 px
    if cup_outside:
        masks[2, 1, 0, 0] = 1  # rater 3's cup pixel outside the disc
    image = np.full((3, 8, 8), 0.5, np.float32)
    return MultiRaterCase(
        image,
        masks,
        name,
        ("disc", "cup"),
        patient,
        spacing=(0.1, 0.1),
        meta={"label_values": [0, 128, 255], "raters": ["a", "b", "c"]},
    )


def test_check_summary_and_cup_outside_disc() -> None:
    src = ListSource([_case("c1"), _case("c2", cup_outside=True, patient="p2")])
    report = check_dataset(src)
    assert report.n_cases == 2 and report.patients == {"p1", "p2"}
    assert report.raters == {3: 2} and report.structures == ("disc", "cup")
    assert report.image_sizes == {"3×8×8": 2} and report.spacings == {(0.1, 0.1): 2}
    assert report.label_values == {0, 128, 255}
    assert report.empty_masks["c"] == {"cup": 1} and report.empty_masks["a"] == {}
    # disc: identical raters -> SV 0; cup by hand: c1 has 2 pixels voted (1,1,0) and 2
    # voted (1,0,0), each of unbiased variance 1/3 -> SV 4/3; c2 adds the outside pixel
    # voted (0,0,1) -> 4/3 + 1/3
    assert report.sv["disc"] == (0.0, 0.0, 0.0)
    assert report.sv["cup"] == pytest.approx((4 / 3, 1.5, 5 / 3))
    assert not report.ok and report.bad_indices == [1]
    assert report.problems == ["c2: rater c: cup not inside its disc (1 px outside)"]
    text = report.format()
    assert "raters per case: 3: 2" in text and "PROBLEMS FOUND" in text
    assert "c2: rater c: cup not inside its disc" in text
    with pytest.raises(DataError, match="1 problems found"):
        check_dataset(src, strict=True)


def test_check_catches_unreadable_files_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_folder_dataset([_case("c1"), _case("c2"), _case("c3")], root)
    (root / "c2" / "rater_2.png").write_bytes(b"not a png")
    (root / "c3" / "rater_1.png").unlink()
    (root / "c3" / "rater_3.png").unlink()
    (root / "c3" / "rater_2.png").unlink()
    from edue.data.folder import FolderSource

    src = FolderSource(root)
    report = check_dataset(src)
    assert report.bad_indices == [1, 2]
    assert any(
        p.startswith(str(root / "c2" / "rater_2.png")) and "cannot read" in p
        for p in report.problems
    )
    assert any(p.startswith(str(root / "c3")) and "no rater masks" in p for p in report.problems)
    with pytest.warns(UserWarning, match="skipping 2 of 3 cases"):
        good = SkippingSource(src, report)
    assert good.case_ids == ["c1"] and good.load(0).n_raters == 3


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "ds"
    write_folder_dataset([_case("c1"), _case("c2")], root)
    assert main(["data", "check", str(root), "--format", "folder", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "cases: 2" in out and out.rstrip().endswith("OK")
    (root / "c2" / "image.png").unlink()
    assert main(["data", "check", str(root), "--format", "folder"]) == 0
    assert main(["data", "check", str(root), "--strict", "--option", "format=x"]) == 2
    assert "no image file" in capsys.readouterr().out


def test_check_path_returns_the_report(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_folder_dataset([_case("c1"), _case("c2")], root)
    (root / "c2" / "image.png").unlink()
    report = check_path(root, "folder", {"format": "x", "root": "elsewhere"})
    assert report.n_cases == 2 and report.bad_indices == [1]
    lines = report.lines()
    assert lines[-1] == "PROBLEMS FOUND" and report.format() == "\n".join(lines)
    assert lines[-2].startswith(f"  {root / 'c2'}") and "no image file" in lines[-2]


def test_skipping_source_without_report_drops_unreadable_cases(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_folder_dataset([_case("c1"), _case("c2", cup_outside=True), _case("c3")], root)
    (root / "c3" / "image.png").unlink()
    from edue.data.folder import FolderSource

    src = FolderSource(root)
    with pytest.warns(UserWarning, match="skipping 1 of 3 cases with problems; first: .*c3"):
        good = SkippingSource(src)
    # only unreadable cases go: a cup outside its disc is a check problem, not a load failure
    assert good.case_ids == ["c1", "c2"] and good.skipped == [2]
    assert len(good.problems) == 1 and "no image file" in good.problems[0]
    with pytest.raises(DataError, match="no image file"):
        SkippingSource(src, strict=True)


def test_training_subsets_skip_unreadable_cases_the_same_way(tmp_path: Path) -> None:
    from edue.data.folder import FolderSource
    from edue.data.pipeline import PreparedSource

    root = tmp_path / "ds"
    write_folder_dataset([_case("c1"), _case("c2"), _case("c3")], root)
    (root / "c2" / "rater_2.png").write_bytes(b"not a png")
    src = FolderSource(root)
    subset = PreparedSource(src, [0, 1, 2], size=4, strict=False)
    with pytest.warns(UserWarning, match="skipping 1 of 3 cases with problems; first: .*c2"):
        problems = subset.drop_bad()
    assert len(problems) == 1 and "rater_2.png" in problems[0] and "cannot read" in problems[0]
    assert subset.indices == [0, 2] and subset.case_ids == ["c1", "c3"]
    assert subset.load(1).image.shape == (3, 4, 4)
    with pytest.raises(DataError, match="cannot read"):
        PreparedSource(src, [0, 1, 2], size=None, strict=True).drop_bad()
