"""Reading the evaluation folders written by ``edue evaluate`` for the comparison report.

``metrics.json`` is required: a missing, unreadable or malformed one raises
:class:`~edue.errors.EdueError` naming the folder. Every other file (``per_case.csv``,
``curves.json``, ``ood.json``, ``samples.npz``) is optional: when it is missing or
unreadable the run keeps ``None`` in its place and a note explains why, so the report
can skip the sections that need it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edue import result_keys as rk
from edue.errors import EdueError
from edue.io import read_json

if TYPE_CHECKING:  # pragma: no cover
    from edue.prediction import Prediction
from edue.methods.registry import get_method, method_label, method_names
from edue.report.roles import method_with_role


@dataclass
class SampleCase:
    """One case of ``samples.npz``: the image, its rater masks and the method's members.

    Attributes:
        case_id: identifier shared across runs.
        image: ``[C, *spatial]``.
        masks: ``[R, K, *spatial]``.
        members: ``[S, K, *spatial]`` float32.
        segmentation: ``[K, *spatial]`` float32 where the method gives its segmentation
            apart from the members (``None``: their mean).
        score: the uncertainty map of the prediction (``Prediction.score``).
    """

    case_id: str
    image: np.ndarray
    masks: np.ndarray
    members: np.ndarray
    segmentation: np.ndarray | None = None
    score: str = "variance"

    def prediction(self) -> Prediction:
        """The :class:`~edue.prediction.Prediction` these arrays hold."""
        import torch

        from edue.prediction import Prediction

        return Prediction(
            torch.from_numpy(self.members.astype(np.float32)),
            segmentation=None
            if self.segmentation is None
            else torch.from_numpy(self.segmentation.astype(np.float32)),
            score=self.score,
        )


@dataclass(eq=False)
class RunResult:
    """Everything ``edue evaluate`` wrote for one method.

    Attributes:
        folder: the evaluation folder.
        method: method name (``metrics.json`` ``method``).
        label: display name (its ``label`` when set, else a readable method name).
        structures: structure names.
        info: the whole ``metrics.json``.
        metrics: its flat ``metrics`` dict (floats, nan for missing values).
        per_case: columns of ``per_case.csv`` as float arrays, or ``None``.
        curves: ``curves.json``, or ``None``.
        ood: ``ood.json``, or ``None``.
        samples: ``samples.npz`` cases in file order, or ``None``.
        notes: why an optional file was not used.
    """

    folder: Path
    method: str
    label: str
    structures: tuple[str, ...]
    info: dict[str, Any]
    metrics: dict[str, float]
    per_case: dict[str, np.ndarray] | None = None
    curves: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    samples: list[SampleCase] | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> float:
        """A metric by key (``"soft_dice/disc/mean"``), nan when absent or not a number."""
        return as_float(self.metrics.get(key))

    @property
    def n_members(self) -> int:
        """Members of the prediction (heads, ensemble members or MC samples)."""
        return int(self.info.get("n_members") or 1)

    @property
    def passes(self) -> int:
        """Forward passes per image: ``n_passes`` when recorded, else from the method."""
        if "n_passes" in self.info:
            return int(self.info["n_passes"])
        one_pass = self.method not in method_names() or get_method(self.method).one_pass
        return 1 if one_pass else self.n_members

    @property
    def seconds_per_image(self) -> float:
        """Median single-image inference time in seconds (nan when not recorded)."""
        return as_float(self.info.get("seconds_per_image"))

    @property
    def parameters(self) -> float:
        """Trainable parameters (nan when not recorded)."""
        return as_float(self.info.get("parameters"))

    @property
    def converged(self) -> bool | None:
        """Whether the weights come from training with early stopping on the validation
        loss (``None``: the evaluation does not record its training)."""
        training = self.info.get("training")
        if not isinstance(training, dict):
            return None
        return bool(training.get("patience"))

    @property
    def budget(self) -> str:
        """The training budget behind the weights, in words."""
        training = self.info.get("training")
        if not isinstance(training, dict):
            return "training budget not recorded"
        most, patience = training.get("max_epochs"), training.get("patience")
        epoch = training.get("weights_epoch")
        at = f", weights of epoch {epoch}" if epoch is not None else ""
        if patience:
            return f"early stopping (patience {patience}, at most {most} epochs{at})"
        return f"a fixed {most} epochs without early stopping{at}"


def as_float(value: object) -> float:
    """``float(value)``, nan for anything that is not a number (``None``, text)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _read_metrics(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    if not folder.is_dir():
        raise EdueError(
            "evaluation folder not found (expected the output of `edue evaluate`)", folder
        )
    if not path.is_file():
        raise EdueError(
            "no metrics.json in this evaluation folder (run `edue evaluate` first)", folder
        )
    info = read_json(path, "a readable metrics.json", folder)
    if not isinstance(info, dict) or not isinstance(info.get("metrics"), dict):
        raise EdueError(
            "metrics.json has no 'metrics' table (not written by `edue evaluate`?)", folder
        )
    if not isinstance(info.get("method"), str) and not isinstance(info.get("label"), str):
        raise EdueError("metrics.json names no 'method'", folder)
    return info


def _structures(info: dict[str, Any]) -> tuple[str, ...]:
    names = info.get("structures")
    if isinstance(names, list) and names:
        return tuple(str(s) for s in names)
    return tuple(rk.structures(info["metrics"], rk.SOFT_DICE))


def _read_per_case(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError("no rows")
    columns: dict[str, np.ndarray] = {}
    for key in rows[0]:
        if key in ("case_id", "method"):
            continue
        columns[key] = np.array([as_float(row.get(key)) for row in rows], dtype=np.float64)
    return columns


def _read_samples(path: Path) -> list[SampleCase]:
    cases = []
    with np.load(path, allow_pickle=False) as data:
        indices = sorted({int(k.split("/")[0]) for k in data.files if k.endswith("/members")})
        for i in indices:
            cases.append(
                SampleCase(
                    case_id=str(data[f"{i}/case_id"]) if f"{i}/case_id" in data.files else str(i),
                    image=np.asarray(data[f"{i}/image"], dtype=np.float32),
                    masks=np.asarray(data[f"{i}/masks"]),
                    members=np.asarray(data[f"{i}/members"], dtype=np.float32),
                    segmentation=np.asarray(data[f"{i}/segmentation"], dtype=np.float32)
                    if f"{i}/segmentation" in data.files
                    else None,
                    score=str(data[f"{i}/score"]) if f"{i}/score" in data.files else "variance",
                )
            )
    return cases


def _optional(run: RunResult, name: str, reader: Any) -> Any:
    """Read an optional file with ``reader``; on failure note why and return ``None``."""
    path = run.folder / name
    if not path.is_file():
        run.notes.append(f"{run.label}: no {name} — the sections that need it skip this method")
        return None
    try:
        return reader(path)
    except Exception as exc:  # a corrupt optional file must not stop the report
        run.notes.append(f"{run.label}: {name} is unreadable ({type(exc).__name__}: {exc})")
        return None


def load_run(folder: str | Path) -> RunResult:
    """Read one evaluation folder.

    Raises:
        EdueError: the folder or its ``metrics.json`` is missing, unreadable or malformed.
    """
    folder = Path(folder)
    if folder.name == "metrics.json" and folder.is_file():  # the file itself was given
        folder = folder.parent
    info = _read_metrics(folder)
    method = str(info.get("method") or info.get("label"))
    label = info.get("label")
    if not isinstance(label, str) or not label or label == method:
        label = method_label(method)
    metrics = {str(k): as_float(v) for k, v in info["metrics"].items()}
    run = RunResult(
        folder=folder,
        method=method,
        label=label,
        structures=_structures(info),
        info=info,
        metrics=metrics,
    )
    run.per_case = _optional(run, "per_case.csv", _read_per_case)
    run.curves = _optional(run, "curves.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
    run.ood = _optional(run, "ood.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
    run.samples = _optional(run, "samples.npz", _read_samples)
    return run


def load_runs(folders: Sequence[str | Path]) -> list[RunResult]:
    """Read several evaluation folders; a repeated label gets ``#2``, ``#3``… appended."""
    if not folders:
        raise EdueError("no evaluation folders given to compare")
    runs = [load_run(f) for f in folders]
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} #{seen[run.label]}"
    return runs


def all_structures(runs: Sequence[RunResult]) -> tuple[str, ...]:
    """Union of the runs' structures, in first-seen order."""
    return tuple(dict.fromkeys(s for run in runs for s in run.structures))


def find_method(runs: Sequence[RunResult], method: str) -> RunResult | None:
    """The first run of ``method``, if any."""
    return next((run for run in runs if run.method == method), None)


def find_role(runs: Sequence[RunResult], role: str) -> RunResult | None:
    """The first run of the registered method playing ``role`` (``subject``,
    ``ensemble_reference``, ``one_pass_reference``), if any."""
    spec = method_with_role(role)
    return find_method(runs, spec.name) if spec else None


def ood_key(kind: str, fraction: float) -> str:
    """Key of one distortion setting in ``ood.json`` ``results`` (``"noise@0.5"``)."""
    return rk.ood_condition(kind, fraction)


def ood_kinds(runs: Sequence[RunResult]) -> tuple[str, ...]:
    """Distortion kinds present in any run's ``ood.json``, in first-seen order."""
    kinds = [
        key.split("@")[0]
        for run in runs
        if run.ood is not None
        for key in run.ood.get("results", {})
    ]
    return tuple(dict.fromkeys(kinds))


def ood_auroc(
    run: RunResult, kind: str, score: str, structure: str, fraction: float = 0.5
) -> float:
    """AUROC with which ``score`` (``"agreement"`` or ``"sv"``) separates distorted images.

    nan when the run has no such entry (no ``ood.json``, kind not run, structure absent).
    """
    if run.ood is None or structure not in run.structures:
        return math.nan
    entry = run.ood.get("results", {}).get(ood_key(kind, fraction), {})
    values = entry.get(f"auroc_{score}")
    k = run.structures.index(structure)
    if not isinstance(values, list) or k >= len(values):
        return math.nan
    return as_float(values[k])


def referral_alphas(runs: Sequence[RunResult]) -> tuple[float, ...]:
    """The guarantee levels any run's referral outcome was computed for, ascending."""
    return rk.alphas(key for run in runs for key in run.metrics)


def has_referral(run: RunResult) -> bool:
    """Whether ``edue evaluate`` computed the referral outcome of this run."""
    return bool(rk.alphas(run.metrics))


def ood_gate_auroc(run: RunResult, kind: str, fraction: float = 0.5) -> float:
    """AUROC with which the distribution-shift gate separates distorted images (nan when
    the run's ``ood.json`` has no gate score)."""
    if run.ood is None:
        return math.nan
    entry = run.ood.get("results", {}).get(ood_key(kind, fraction), {})
    return as_float(entry.get("auroc_gate"))
