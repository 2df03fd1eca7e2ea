"""The calibration of a checkpoint and the referral decisions it makes.

:class:`Calibration` is what ``edue calibrate`` fits (:mod:`edue.engine.referral.calibrate`) and
``edue predict`` / ``edue evaluate`` use: per structure the certified SV threshold, the
calibration images' SV, experts' SV and soft Dice, the isotonic map to the experts'
units (:class:`StructureCalibration`), and the distribution-shift gate
(:mod:`edue.engine.referral.gate`). It is kept as ``calibration.json`` beside the checkpoint
(the gate's arrays in ``calibration_gate.npz``, checked by SHA-256): :meth:`Calibration.save`,
:meth:`Calibration.load`, :func:`find_calibration`. A missing, corrupt or foreign file is
one :class:`~edue.errors.EdueError` naming it.

:meth:`Calibration.decide_many` turns the SVs and gate scores of a batch of images into
decisions: refer or not, the reasons, and per structure the SV, its percentile among the
calibration images and the expected experts' SV with its range.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edue.engine.checkpoint import resolve_checkpoint
from edue.engine.referral.gate import OODGate
from edue.engine.referral.schema import check_calibration_file
from edue.errors import CheckpointError, EdueError
from edue.io import read_json, write_json
from edue.metrics.expert_units import INTERVAL_COVERAGE, ExpertScale, IsotonicMap, percentile_of
from edue.metrics.risk_control import ReferralThreshold, encode_float, learn_then_test

if TYPE_CHECKING:
    from edue.engine.inference.predictor import Predictor

FORMAT = "edue-calibration"
VERSION = 1
CALIBRATION_FILE = "calibration.json"
GATE_FILE = "calibration_gate.npz"


def gate_file_for(path: str | Path) -> Path:
    """The gate's companion file of a calibration file: ``<stem>_gate.npz`` beside it
    (``calibration.json`` → ``calibration_gate.npz``), so two calibrations in one folder
    keep their own gates."""
    path = Path(path)
    return path.with_name(f"{path.stem}_gate.npz")


#: Why an image is referred.
REASON_UNCERTAIN = "uncertain segmentation"
REASON_SHIFT = "unlike the training images"
PROCEDURE = (
    "Learn-then-Test (Angelopoulos, Bates, Candes, Jordan & Lei, 2021): exact binomial "
    "p-values of H_t: P(poor | SV <= t) > alpha over candidate thresholds fixed from the "
    "training images' SV, fixed-sequence testing from the strictest candidate up; "
    "guarantee: with probability >= 1 - delta over the calibration images, at most alpha "
    "of the accepted images are poor, for calibration and new images drawn i.i.d. from "
    "one distribution and a share of poor that does not fall as the threshold rises"
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

    def check_model(self, predictor: Predictor) -> None:
        """Refuse a calibration fitted for another model.

        Raises:
            EdueError: other weights (by the checkpoint's recorded hash), other
                structures, or a gate reading modules the model lacks (names the
                calibration file).
        """
        recorded = predictor.weights_sha256
        if recorded is not None and recorded != self.weights_sha256:
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
        if self.gate is not None:
            try:
                predictor.check_feature_modules(self.gate.modules)
            except CheckpointError as exc:
                raise EdueError(exc.reason, self.path) from None

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
    def to_dict(self, gate_sha256: str | None = None, gate_file: str = GATE_FILE) -> dict[str, Any]:
        """The content of ``calibration.json`` (``gate_file``: its gate's file name)."""
        gate: dict[str, Any] | None = None
        if self.gate is not None:
            gate = {
                **self.gate.summary(),
                "file": gate_file,
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
        gate_path = gate_file_for(path)
        if self.gate is not None:
            self.gate.save(gate_path)
            digest = _sha256(gate_path)
        write_json(path, self.to_dict(digest, gate_path.name))
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
        data = read_json(path, "a readable calibration file")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdueError("not an edue calibration file (written by `edue calibrate`)", path)
        if data.get("version") != VERSION:
            raise EdueError(
                f"calibration format version {data.get('version')!r}, this edue reads {VERSION}",
                path,
            )
        check_calibration_file(data, path)
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
