"""``edue calibrate``: turn a checkpoint's SV into referral decisions with a guarantee.

On a calibration split the model never trained on (``val`` by default), every image is
predicted once; per structure the model's SV, the experts' SV and the soft Dice against
the experts' soft vote are kept. The training split is predicted as well (at most
:data:`MAX_TRAIN_IMAGES` images), for the candidate thresholds and the
distribution-shift gate. Then, per structure:

* the referral threshold: Learn-then-Test over candidate thresholds fixed from the
  training images' SV, so that among the images *not* referred the share of poor
  segmentations (soft Dice below the structure's level) is at most ``alpha`` with
  probability ``1 − delta`` (:func:`edue.metrics.risk_control.learn_then_test`);
* the map of the SV onto the experts' SV (isotonic) with its empirical range
  (:class:`edue.metrics.expert_units.ExpertScale`);

and once per image the distribution-shift gate (:mod:`edue.engine.referral.gate`): a
Gaussian fitted to the training images' pooled encoder features, its threshold set
on the calibration images for a false-alarm rate of ``false_alarm``.

Everything is written to ``calibration.json`` beside the checkpoint (the gate's arrays
to ``calibration_gate.npz``), which ``edue predict`` and ``edue evaluate`` pick up
(:func:`~edue.engine.referral.calibration.find_calibration`,
:meth:`~edue.engine.referral.calibration.Calibration.load`). A missing, corrupt or foreign
file is one :class:`~edue.errors.EdueError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edue.data.case import MultiRaterCase, expert_variance, soft_vote
from edue.data.pipeline import load_cases
from edue.engine.checkpoint import resolve_checkpoint, run_dir_of
from edue.engine.inference.predictor import Predictor
from edue.engine.referral.calibration import (
    CALIBRATION_FILE,
    Calibration,
    StructureCalibration,
)
from edue.engine.referral.gate import OODGate
from edue.errors import ConfigError
from edue.metrics.expert_units import ExpertScale
from edue.metrics.qc import (
    DEFAULT_POOR_THRESHOLDS,
    check_structure_names,
    poor_threshold_for,
)
from edue.metrics.risk_control import learn_then_test, threshold_grid
from edue.metrics.segmentation import soft_dice
from edue.outputs import check_output_file

DEFAULT_ALPHA = 0.1
DEFAULT_DELTA = 0.1
DEFAULT_FALSE_ALARM = 0.05
#: Encoder blocks the gate reads, deepest first: the bottleneck and the block before it.
DEFAULT_GATE_BLOCKS = 2
#: Training images predicted at calibration (a seeded random subset beyond this).
MAX_TRAIN_IMAGES = 400
#: The guarantee levels ``edue evaluate`` reports for every method.
REPORTED_ALPHAS = (0.05, 0.1, 0.2)


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
    blocks = predictor.feature_module_names()
    if gate_blocks < 1 or (blocks and gate_blocks > len(blocks)):
        raise ConfigError(
            f"--gate-blocks {gate_blocks}: the model has {len(blocks)} encoder blocks "
            f"(choose 1 … {len(blocks)})"
        )
    tap = blocks[-gate_blocks:] or None
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
    if tap is None or cal.features is None or train.features is None:
        notes.append("no distribution-shift gate: the model has no encoder blocks to read")
    elif len(train.features) < 2:
        notes.append(
            f"no distribution-shift gate: {len(train.features)} training image(s), a "
            "Gaussian of the features needs at least two"
        )
    else:
        gate = OODGate.fit(tap, train.features, cal.features, false_alarm)
        gate_scores = gate.score(cal.features)
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
    target = check_output_file(Path(out) if out else path.parent / CALIBRATION_FILE)
    predictor = Predictor.from_checkpoint(path, device=device)
    check_structure_names(poor_levels or {}, predictor.structures, "--poor")
    run_dir, settings = run_dir_of(checkpoint), predictor.config.data
    limits = {"train": max_train}
    if data:
        calibration_cases = load_cases(settings, [split], run_dir, data, data_format, all_cases)
        train_cases = load_cases(settings, ["train"], run_dir, limits=limits)
        cases = {split: calibration_cases[split], "train": train_cases["train"]}
    else:
        cases = load_cases(settings, [split, "train"], run_dir, limits=limits)
    calibration = fit_calibration(
        predictor,
        cases[split],
        cases["train"],
        poor_levels,
        alpha,
        delta,
        false_alarm,
        checkpoint=str(path),
        weights_sha256=predictor.weights_sha256 or "",
        split=f"every case of {data}" if all_cases else split,
        gate_blocks=gate_blocks,
    )
    calibration.save(target)
    return calibration
