"""`edue train` and `edue evaluate` on every dataset format, through the configuration alone.

Each test writes a tiny fake copy in the exact layout (the same writers the reader
tests use), trains one epoch and evaluates the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edue.cli import main
from tests.test_data_hecktor import multi_annotator  # noqa: F401 - fixture
from tests.test_data_lidc import lidc_pickle  # noqa: F401 - fixture
from tests.test_data_qubiq import _prostate
from tests.test_data_riga import _discregion, _riga_plus

COMMON = [
    "model.channels=[4, 8]",
    "train.epochs=1",
    "train.batch_size=2",
    "train.device=cpu",
    "data.split={train: 1.0}",
    "method.name=edue",
]


def _train_and_evaluate(
    tmp_path: Path, fmt: str, root: Path, extra: list[str], n_cases: int
) -> dict:
    """Train one epoch, evaluate every case (``--all``): all ``n_cases`` of the fake copy."""
    run = tmp_path / "run"
    args = ["train", *COMMON, f"data.format={fmt}", f"data.root={root}", *extra, "--out", str(run)]
    assert main(args) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--out", str(out), "--all", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "edue" and metrics["metrics"]["n_cases"] == n_cases
    assert (run / "best.pt").is_file() and (out / "per_case.csv").is_file()
    return metrics


def test_riga_discregion(tmp_path):
    _discregion(tmp_path / "riga")
    metrics = _train_and_evaluate(
        tmp_path, "riga-discregion", tmp_path / "riga", ["data.size=32"], n_cases=3
    )
    assert metrics["structures"] == ["disc", "cup"]


def test_riga_plus(tmp_path):
    _riga_plus(tmp_path / "rigaplus")
    metrics = _train_and_evaluate(
        tmp_path, "riga-plus", tmp_path / "rigaplus", ["data.size=32"], n_cases=3
    )
    assert metrics["structures"] == ["disc", "cup"]


def test_hecktor_2d(tmp_path, multi_annotator):  # noqa: F811
    metrics = _train_and_evaluate(
        tmp_path, "hecktor", multi_annotator, ["data.options={mode: 2d}", "data.size=16"], 5
    )
    assert metrics["structures"] == ["GTVp", "GTVn"]


def test_hecktor_3d(tmp_path, multi_annotator):  # noqa: F811
    metrics = _train_and_evaluate(
        tmp_path, "hecktor", multi_annotator, ["data.options={mode: 3d}"], n_cases=2
    )
    assert metrics["structures"] == ["GTVp", "GTVn"]


def test_lidc_pickle(tmp_path, lidc_pickle):  # noqa: F811
    metrics = _train_and_evaluate(tmp_path, "lidc-pickle", lidc_pickle[0], [], n_cases=3)
    assert metrics["structures"] == ["nodule"]


@pytest.mark.parametrize("options", ["{task: prostate}"])
def test_qubiq(tmp_path, options):
    _prostate(tmp_path / "qubiq")
    metrics = _train_and_evaluate(
        tmp_path, "qubiq", tmp_path / "qubiq", [f"data.options={options}"], n_cases=2
    )
    assert metrics["structures"] == ["task01", "task02"]
