"""``edue calibrate``: turn a checkpoint's SV into referral decisions with a guarantee.

On a calibration split the model never trained on (``val`` by default), every image is
predicted once; per structure the model's SV, the experts' SV and the soft Dice against
the experts' soft vote are kept. The training split is predicted as well (at most
:data:`MAX_TRAIN_IMAGES` images), for the candidate thresholds and the
distribution-shift gate. Then, per structure:

* the referral threshold: Learn-then-Test over candidate thresholds fixed from the
  training images' SV, so that among the images *not* referred the share of poor
  segmentations (soft Dice below the structure's level) is at most ``alpha`` with
  probability ``1 − delta`` (:func:`edue.metrics.referral.learn_then_test`);
* the map of the SV onto the experts' SV (isotonic) with its empirical range
  (:class:`edue.metrics.referral.ExpertScale`);

and once per image the distribution-shift gate (:mod:`edue.engine.ood_gate`): a
Gaussian fitted to the training images' pooled encoder features, its threshold set
on the calibration images for a false-alarm rate of ``false_alarm``.

Everything is written to ``calibration.json`` beside the checkpoint (the gate's arrays
to ``calibration_gate.npz``), which ``edue predict`` and ``edue evaluate`` pick up
(:func:`find_calibration`, :meth:`Calibration.load`). A missing, corrupt or foreign
file is one :class:`~edue.errors.EdueError` naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edue.data.case import MultiRaterCase, expert_variance, soft_vote
from edue.engine.checkpoint import load_checkpoint, resolve_checkpoint
from edue.engine.infer import Predictor
from edue.engine.ood_gate import OODGate
from edue.errors import ConfigError, EdueError
from edue.io import write_json
from edue.metrics.qc import DEFAULT_POOR_THRESHOLDS, poor_threshold_for
from edue.metrics.referral import (
    INTERVAL_COVERAGE,
    ExpertScale,
    IsotonicMap,
    ReferralThreshold,
    encode_float,
    learn_then_test,
    percentile_of,
    threshold_grid,
)
from edue.metrics.segmentation import soft_dice

FORMAT = "edue-calibration"
VERSION = 1
CALIBRATION_FILE = "calibration.json"
GATE_FILE = "calibration_gate.npz"
#: Why an image is referred.
REASON_UNCERTAIN = "uncertain segmentation"
REASON_SHIFT = "unlike the training images"
DEFAULT_ALPHA = 0.1
DEFAULT_DELTA = 0.1
DEFAULT_FALSE_ALARM = 0.05
#: Encoder blocks the gate reads, deepest first: the bottleneck and the block before it.
DEFAULT_GATE_BLOCKS = 2
#: Training images predicted at calibration (a seeded random subset beyond this).
MAX_TRAIN_IMAGES = 400
#: The guarantee levels ``edue evaluate`` reports for every method.
REPORTED_ALPHAS = (0.05, 0.1, 0.2)
PROCEDURE = (
    "Learn-then-Test (Angelopoulos, Bates, Candes, Jordan & Lei, 2021): exact binomial "
    "p-values of H_t: P(poor | SV <= t) > alpha over candidate thresholds fixed from the "
    "training images' SV, fixed-sequence testing from the strictest candidate up; "
    "guarantee: with probability >= 1 - delta over the calibration images, at most alpha "
    "of the accepted images are poor, for calibration and new images drawn i.i.d. from "
    "one distribution and a share of poor that does not fall as the threshold rises"
)


@dataclass
class CaseScores:
    """Per-image numbers of one predicted set of cases.

    Attributes:
        case_ids: identifiers ``[N]``.
        sv: the model's SV ``[N, K]``.
        expert_sv: the experts' SV ``[N, K]``.
        soft_dice: soft Dice against the experts' soft vote ``[N, K]``.
        features: pooled encoder features ``[N, F]``, or ``None``.
    """

    case_ids: list[str]
    sv: np.ndarray
    expert_sv: np.ndarray
    soft_dice: np.ndarray
    features: np.ndarray | None


def score_cases(
    predictor: Predictor, cases: Sequence[MultiRaterCase], tap: Sequence[str] | None
) -> CaseScores:
    """Predict ``cases`` (one pass each) and keep their SV, experts' SV, soft Dice and,
    with ``tap``, the pooled features of those modules."""
    ids, sv, expert, dice, features = [], [], [], [], []
    for case, pred, row in predictor.predict_cases_with_features(list(cases), tap=tap):
        masks = torch.from_numpy(np.ascontiguousarray(case.masks))
        ids.append(str(case.case_id))
        sv.append(pred.sv.numpy().astype(np.float64))
        expert.append(expert_variance(masks).flatten(1).sum(1).double().numpy())
        dice.append(soft_dice(pred.mean, soft_vote(masks)).double().numpy())
        features.append(None if row is None else row.numpy().astype(np.float64))
    have = all(f is not None for f in features) and bool(features)
    return CaseScores(
        ids,
        np.stack(sv),
        np.stack(expert),
        np.stack(dice),
        np.stack(features) if have else None,  # type: ignore[arg-type]
    )


@dataclass
class StructureCalibration:
    """The calibration of one structure.

    Attributes:
        name: the structure.
        poor_level: soft Dice below which a segmentation is poor.
        decision: the certified threshold at the calibration's ``alpha``.
        grid: the candidate thresholds ``[G]`` (from the training images' SV).
        sv: calibration images' SV ``[N]``.
        expert_sv: their experts' SV ``[N]``.
        soft_dice: their soft Dice ``[N]``.
        scale: the map to the experts' units.
    """

    name: str
    poor_level: float
    decision: ReferralThreshold
    grid: np.ndarray
    sv: np.ndarray
    expert_sv: np.ndarray
    soft_dice: np.ndarray
    scale: ExpertScale

    def poor(self, level: float | None = None) -> np.ndarray:
        """Which calibration segmentations are poor (below ``level``, default the own)."""
        return self.soft_dice < (self.poor_level if level is None else level)

    def threshold_for(
        self, alpha: float, delta: float, level: float | None = None
    ) -> ReferralThreshold:
        """The certified threshold for another ``alpha`` (or poor level), same data."""
        return learn_then_test(self.sv, self.poor(level), alpha, delta, self.grid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "poor_level": self.poor_level,
            **self.decision.to_dict(),
            "expected_referral_rate": self.decision.referral_rate,
            "poor_rate": float(self.poor().mean()),
            "grid": [encode_float(float(g)) for g in self.grid],
            "isotonic": self.scale.mapping.to_dict(),
            "interval_coverage": self.scale.coverage,
            "calibration": {
                "sv": self.sv.tolist(),
                "expert_sv": self.expert_sv.tolist(),
                "soft_dice": self.soft_dice.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> StructureCalibration:
        """Inverse of :meth:`to_dict` (``KeyError``/``ValueError``/``TypeError`` on bad input)."""
        values = data["calibration"]
        sv = np.asarray(values["sv"], dtype=np.float64)
        expert = np.asarray(values["expert_sv"], dtype=np.float64)
        dice = np.asarray(values["soft_dice"], dtype=np.float64)
        if sv.ndim != 1 or sv.shape != expert.shape or sv.shape != dice.shape or not sv.size:
            raise ValueError(f"'{name}': calibration arrays of unequal or zero length")
        mapping = IsotonicMap.from_dict(data["isotonic"])
        keep = np.isfinite(sv) & np.isfinite(expert)
        scale = ExpertScale(
            mapping,
            sv[keep],
            expert[keep] - mapping(sv[keep]),
            float(data.get("interval_coverage", INTERVAL_COVERAGE)),
        )
        decision = ReferralThreshold(
            threshold=float(data["threshold"]),
            alpha=float(data["alpha"]),
            delta=float(data["delta"]),
            n=int(data["n"]),
            n_accepted=int(data["n_accepted"]),
            n_poor_accepted=int(data["n_poor_accepted"]),
            p_value=float(data["p_value"]),
            referral_rate=float(data["referral_rate"]),
        )
        grid = np.asarray([float(g) for g in data["grid"]], dtype=np.float64)
        return cls(name, float(data["poor_level"]), decision, grid, sv, expert, dice, scale)


@dataclass
class Calibration:
    """Everything ``edue predict`` needs to decide on referral, and how it was made.

    Attributes:
        checkpoint: the checkpoint it was fitted for.
        weights_sha256: that checkpoint's weights hash (checked on use).
        method: the method's name.
        split: the calibration split.
        case_ids: the calibration images.
        alpha: allowed share of poor among accepted images.
        delta: allowed probability that the guarantee fails.
        structures: one :class:`StructureCalibration` per structure, in model order.
        gate: the distribution-shift gate, or ``None`` (no encoder blocks to read).
        gate_scores: the calibration images' gate scores ``[N]`` (empty without gate).
        n_train: training images predicted.
        path: the file it was read from or written to.
    """

    checkpoint: str
    weights_sha256: str
    method: str
    split: str
    case_ids: list[str]
    alpha: float
    delta: float
    structures: list[StructureCalibration]
    gate: OODGate | None
    gate_scores: np.ndarray
    n_train: int
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> tuple[str, ...]:
        """Structure names, in model order."""
        return tuple(s.name for s in self.structures)

    @property
    def poor_levels(self) -> dict[str, float]:
        """Poor soft-Dice level per structure."""
        return {s.name: s.poor_level for s in self.structures}

    def gate_flags(self) -> np.ndarray:
        """Which calibration images the gate flags ``[N]``."""
        if self.gate is None:
            return np.zeros(len(self.case_ids), dtype=bool)
        return self.gate.flags(self.gate_scores)

    def expected_referral(self) -> dict[str, float]:
        """Share of calibration images referred: for any reason, per reason."""
        uncertain = np.zeros(len(self.case_ids), dtype=bool)
        for s in self.structures:
            uncertain |= ~(s.sv <= s.decision.threshold)
        shift = self.gate_flags()
        return {
            "any": float((uncertain | shift).mean()),
            REASON_UNCERTAIN: float(uncertain.mean()),
            REASON_SHIFT: float(shift.mean()),
        }

    def check_model(self, predictor: Predictor, weights_sha256: str | None) -> None:
        """Refuse a calibration fitted for another model.

        Raises:
            EdueError: other weights or other structures (names the calibration file).
        """
        if weights_sha256 is not None and weights_sha256 != self.weights_sha256:
            raise EdueError(
                "was fitted for another checkpoint (its weights differ); run "
                "`edue calibrate` on this checkpoint again",
                self.path,
            )
        if tuple(predictor.structures) != self.names:
            raise EdueError(
                f"calibrates structures {list(self.names)}, the model predicts "
                f"{list(predictor.structures)}",
                self.path,
            )

    def decide(self, sv: Sequence[float], ood_score: float | None) -> dict[str, Any]:
        """The referral decision of one image.

        Args:
            sv: the model's SV per structure ``[K]``.
            ood_score: the gate's score of the image (``None`` when not available).

        Returns:
            ``refer`` and ``reasons`` for the image; ``ood`` (score, threshold, flag);
            per structure (``structures``): ``sv``, ``percentile`` among the
            calibration images, ``threshold``, ``refer``, ``reasons``,
            ``expected_expert_sv`` and ``expected_expert_sv_range``.
        """
        return self.decide_many([sv], [ood_score])[0]

    def decide_many(
        self, sv: Sequence[Sequence[float]] | np.ndarray, ood_scores: Sequence[float | None]
    ) -> list[dict[str, Any]]:
        """The referral decisions of several images at once (:meth:`decide` of each).

        The arithmetic is done per structure over all images together: a batch of
        ``edue predict`` is decided in a handful of array operations.

        Args:
            sv: the model's SV ``[M, K]``.
            ood_scores: the gate's score per image ``[M]`` (``None``: not available).
        """
        values = np.asarray(sv, dtype=np.float64).reshape(len(ood_scores), len(self.structures))
        if self.gate is not None:
            given = np.array([np.nan if s is None else float(s) for s in ood_scores])
            shift = self.gate.flags(given).tolist()
        else:
            shift = [False] * len(ood_scores)
        columns = []
        for k, s in enumerate(self.structures):
            v = values[:, k]
            low, high = s.scale.interval(v)
            columns.append(
                (
                    v.tolist(),
                    percentile_of(v, s.sv).tolist(),
                    s.scale.expected(v).tolist(),
                    low.tolist(),
                    high.tolist(),
                )
            )
        threshold = [encode_float(s.decision.threshold) for s in self.structures]
        gate_threshold = None if self.gate is None else encode_float(self.gate.threshold)
        decisions = []
        for i, score in enumerate(ood_scores):
            per: dict[str, Any] = {}
            reasons: list[str] = []
            for k, s in enumerate(self.structures):
                value, percentile, expected, low_k, high_k = (c[i] for c in columns[k])
                why = [] if value <= s.decision.threshold else [REASON_UNCERTAIN]
                why += [REASON_SHIFT] if shift[i] else []
                per[s.name] = {
                    "sv": value,
                    "percentile": percentile,
                    "threshold": threshold[k],
                    "refer": bool(why),
                    "reasons": why,
                    "expected_expert_sv": expected,
                    "expected_expert_sv_range": [low_k, high_k],
                }
                reasons += [r for r in why if r not in reasons]
            ood: dict[str, Any] = {"available": self.gate is not None and score is not None}
            if self.gate is not None:
                ood.update(
                    score=None if score is None else float(score),
                    threshold=gate_threshold,
                    unlike_training=bool(shift[i]),
                )
            decisions.append(
                {"refer": bool(reasons), "reasons": reasons, "ood": ood, "structures": per}
            )
        return decisions

    # ---------------------------------------------------------------- files
    def to_dict(self, gate_sha256: str | None = None) -> dict[str, Any]:
        """The content of ``calibration.json``."""
        gate: dict[str, Any] | None = None
        if self.gate is not None:
            gate = {
                **self.gate.summary(),
                "file": GATE_FILE,
                "sha256": gate_sha256,
                "calibration_scores": self.gate_scores.tolist(),
                "expected_false_alarm_rate": float(self.gate_flags().mean()),
            }
        return {
            "format": FORMAT,
            "version": VERSION,
            "procedure": PROCEDURE,
            "checkpoint": self.checkpoint,
            "weights_sha256": self.weights_sha256,
            "method": self.method,
            "structures": list(self.names),
            "split": self.split,
            "n_calibration": len(self.case_ids),
            "n_train": self.n_train,
            "alpha": self.alpha,
            "delta": self.delta,
            "poor": self.poor_levels,
            "expected_referral_rate": self.expected_referral(),
            "case_ids": self.case_ids,
            "per_structure": {s.name: s.to_dict() for s in self.structures},
            "ood_gate": gate,
            "notes": self.notes,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``calibration.json`` (and the gate's NPZ beside it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = None
        if self.gate is not None:
            gate_path = path.with_name(GATE_FILE)
            self.gate.save(gate_path)
            digest = _sha256(gate_path)
        write_json(path, self.to_dict(digest))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read ``calibration.json`` (and its gate file).

        Raises:
            EdueError: missing, unreadable, not a calibration file, malformed, or a gate
                file that is missing or altered; the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            raise EdueError("calibration file not found (run `edue calibrate` first)", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdueError(
                f"not a readable calibration file ({type(exc).__name__}: {exc})", path
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdueError("not an edue calibration file (written by `edue calibrate`)", path)
        if data.get("version") != VERSION:
            raise EdueError(
                f"calibration format version {data.get('version')!r}, this edue reads {VERSION}",
                path,
            )
        try:
            names = [str(n) for n in data["structures"]]
            per = data["per_structure"]
            structures = [StructureCalibration.from_dict(n, per[n]) for n in names]
            gate_info = data.get("ood_gate")
            gate, scores = None, np.zeros(0)
            if gate_info is not None:
                gate_path = path.with_name(str(gate_info["file"]))
                if gate_path.is_file() and _sha256(gate_path) != gate_info.get("sha256"):
                    raise EdueError(
                        "does not match the SHA-256 recorded in calibration.json "
                        "(file altered or from another calibration)",
                        gate_path,
                    )
                gate = OODGate.load(gate_path, gate_info)
                scores = np.asarray(gate_info["calibration_scores"], dtype=np.float64)
            calibration = cls(
                checkpoint=str(data["checkpoint"]),
                weights_sha256=str(data["weights_sha256"]),
                method=str(data["method"]),
                split=str(data["split"]),
                case_ids=[str(c) for c in data["case_ids"]],
                alpha=float(data["alpha"]),
                delta=float(data["delta"]),
                structures=structures,
                gate=gate,
                gate_scores=scores,
                n_train=int(data["n_train"]),
                path=path,
                notes=[str(n) for n in data.get("notes", [])],
            )
        except EdueError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EdueError(
                f"malformed calibration file ({type(exc).__name__}: {exc})", path
            ) from None
        if not structures or any(s.sv.size != len(calibration.case_ids) for s in structures):
            raise EdueError("malformed calibration file (arrays and case ids differ)", path)
        return calibration


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_path(checkpoint: str | Path) -> Path:
    """Where the calibration of a checkpoint (file or run folder) lives: beside it."""
    return resolve_checkpoint(checkpoint).parent / CALIBRATION_FILE


def find_calibration(
    checkpoint: str | Path, explicit: str | Path | None = None
) -> Calibration | None:
    """The calibration to use with a checkpoint: ``explicit`` when given (it must
    exist), else ``calibration.json`` beside the checkpoint when there is one.

    Raises:
        EdueError: the file is missing (``explicit``), unreadable or malformed.
    """
    if explicit is not None:
        return Calibration.load(explicit)
    path = calibration_path(checkpoint)
    return Calibration.load(path) if path.exists() else None


def checkpoint_hash(checkpoint: str | Path) -> str | None:
    """The recorded weights hash of a checkpoint."""
    state = load_checkpoint(checkpoint, verify=False)
    value = state.get("weights_sha256")
    return str(value) if value is not None else None


def fit_calibration(
    predictor: Predictor,
    calibration_cases: Sequence[MultiRaterCase],
    train_cases: Sequence[MultiRaterCase],
    poor_levels: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    delta: float = DEFAULT_DELTA,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    checkpoint: str = "",
    weights_sha256: str = "",
    split: str = "val",
    gate_blocks: int = DEFAULT_GATE_BLOCKS,
) -> Calibration:
    """Calibrate a loaded model on cases (see the module docstring); nothing is written.

    Args:
        predictor: the model.
        calibration_cases: images the model never trained on, with their raters.
        train_cases: (some of) its training images, for the candidate thresholds and
            the gate's Gaussian.
        poor_levels: soft Dice below which a structure's segmentation is poor (others:
            :data:`~edue.metrics.qc.DEFAULT_POOR_THRESHOLDS`, else 0.8).
        alpha: allowed share of poor among accepted images, in (0, 1).
        delta: allowed probability that the guarantee fails, in (0, 1).
        false_alarm: the gate's false-alarm rate on images like the calibration ones.
        checkpoint: recorded as the checkpoint calibrated.
        weights_sha256: its weights hash.
        split: recorded as the calibration split's name.
        gate_blocks: the gate reads the pooled outputs of this many encoder blocks,
            deepest first (all of them when larger than their number).

    Raises:
        ConfigError: ``alpha``, ``delta`` or ``false_alarm`` outside (0, 1), no case, or
            ``gate_blocks`` below 1.
    """
    for label, value in (("alpha", alpha), ("delta", delta), ("false alarm rate", false_alarm)):
        if not 0 < value < 1:
            raise ConfigError(f"the {label} must lie strictly between 0 and 1, got {value}")
    if not calibration_cases or not train_cases:
        raise ConfigError("calibration needs calibration images and training images")
    if gate_blocks < 1:
        raise ConfigError(f"the gate reads at least one encoder block, got {gate_blocks}")
    tap = predictor.feature_module_names()[-gate_blocks:] or None
    cal = score_cases(predictor, calibration_cases, tap)
    train = score_cases(predictor, train_cases, tap)
    levels = {**DEFAULT_POOR_THRESHOLDS, **(poor_levels or {})}
    structures = []
    for k, name in enumerate(predictor.structures):
        level = poor_threshold_for(name, levels)
        grid = threshold_grid(train.sv[:, k])
        poor = cal.soft_dice[:, k] < level
        structures.append(
            StructureCalibration(
                name=name,
                poor_level=level,
                decision=learn_then_test(cal.sv[:, k], poor, alpha, delta, grid),
                grid=grid,
                sv=cal.sv[:, k],
                expert_sv=cal.expert_sv[:, k],
                soft_dice=cal.soft_dice[:, k],
                scale=ExpertScale.fit(cal.sv[:, k], cal.expert_sv[:, k]),
            )
        )
    gate, gate_scores, notes = None, np.zeros(0), []
    if tap is not None and cal.features is not None and train.features is not None:
        gate = OODGate.fit(tap, train.features, cal.features, false_alarm)
        gate_scores = gate.score(cal.features)
    else:
        notes.append("no distribution-shift gate: the model has no encoder blocks to read")
    return Calibration(
        checkpoint=checkpoint,
        weights_sha256=weights_sha256,
        method=predictor.name,
        split=split,
        case_ids=cal.case_ids,
        alpha=float(alpha),
        delta=float(delta),
        structures=structures,
        gate=gate,
        gate_scores=gate_scores,
        n_train=len(train.case_ids),
        notes=notes,
    )


def calibrate_checkpoint(
    checkpoint: str | Path,
    poor_levels: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    delta: float = DEFAULT_DELTA,
    split: str = "val",
    false_alarm: float = DEFAULT_FALSE_ALARM,
    out: str | Path | None = None,
    data: str | None = None,
    data_format: str | None = None,
    device: str = "auto",
    max_train: int = MAX_TRAIN_IMAGES,
    all_cases: bool = False,
    gate_blocks: int = DEFAULT_GATE_BLOCKS,
) -> Calibration:
    """``edue calibrate``: calibrate a checkpoint on a split and write the file.

    Args:
        checkpoint: checkpoint file or run folder.
        poor_levels: soft Dice below which a structure's segmentation is poor.
        alpha: allowed share of poor among accepted images.
        delta: allowed probability that the guarantee fails.
        split: the calibration subset of the run's split (never ``train``).
        false_alarm: the gate's false-alarm rate.
        out: the file to write (default: ``calibration.json`` beside the checkpoint).
        data: dataset root of the calibration images (default: the training
            configuration's); the training images always come from the run's own split.
        data_format: reader name of ``data`` (default: the training configuration's).
        device: ``auto``, ``cpu`` or ``cuda``.
        max_train: training images predicted at most.
        all_cases: every case of ``data`` is a calibration image (a dataset the model
            never saw; ``split`` only names it).
        gate_blocks: encoder blocks the gate reads, deepest first.

    Returns:
        The calibration (its ``path`` is the file written).

    Raises:
        ConfigError: ``split`` is ``train``, empty or unknown; a level outside (0, 1).
        CheckpointError: a bad checkpoint.
    """
    from edue.engine.evaluate import split_cases

    if split == "train" and not all_cases:
        raise ConfigError("calibrate on images the model never trained on (not 'train')")
    if all_cases and not data:
        raise ConfigError("--all calibrates on every case of another dataset: give --data")
    if max_train < 2:
        raise ConfigError(f"at least two training images are needed, got {max_train}")
    unknown = [n for n, v in (poor_levels or {}).items() if not 0 <= v <= 1]
    if unknown:
        raise ConfigError(f"poor levels must be soft Dice values in [0, 1]: {unknown}")
    path = resolve_checkpoint(checkpoint)
    predictor = Predictor.from_checkpoint(path, device=device)
    missing = sorted(set(poor_levels or {}) - set(predictor.structures))
    if missing:
        raise ConfigError(
            f"--poor names {missing}, the model predicts {list(predictor.structures)}"
        )
    if data:
        calibration_cases = split_cases(
            predictor, checkpoint, [split], data, data_format, all_cases
        )[split]
        train_cases = split_cases(predictor, checkpoint, ["train"], limits={"train": max_train})
        cases = {split: calibration_cases, "train": train_cases["train"]}
    else:
        cases = split_cases(predictor, checkpoint, [split, "train"], limits={"train": max_train})
    calibration = fit_calibration(
        predictor,
        cases[split],
        cases["train"],
        poor_levels,
        alpha,
        delta,
        false_alarm,
        checkpoint=str(path),
        weights_sha256=checkpoint_hash(path) or "",
        split=f"every case of {data}" if all_cases else split,
        gate_blocks=gate_blocks,
    )
    calibration.save(Path(out) if out else path.parent / CALIBRATION_FILE)
    return calibration


def referral_summary(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many predicted images were referred and why (from their decisions)."""
    decided = [e for e in entries if "refer" in e]
    by_reason = {REASON_UNCERTAIN: 0, REASON_SHIFT: 0}
    by_structure: dict[str, int] = {}
    for entry in decided:
        for reason in entry["reasons"]:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for name, s in entry["structures"].items():
            by_structure[name] = by_structure.get(name, 0) + int(REASON_UNCERTAIN in s["reasons"])
    return {
        "n_images": len(decided),
        "n_referred": sum(bool(e["refer"]) for e in decided),
        "by_reason": by_reason,
        "uncertain_by_structure": by_structure,
    }
