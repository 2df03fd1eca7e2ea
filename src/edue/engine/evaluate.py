"""``edue evaluate``: every metric of one trained method on one dataset split.

Writes into the output folder:

* ``metrics.json`` — aggregated metrics, parameters, inference time, provenance;
* ``per_case.csv`` — one row per case;
* ``curves.json`` — quality-control curves and reliability diagrams;
* ``ood.json`` — the distortion study (pairwise-Dice variance and SV per image at
  0 / 50 / 100 % distortion, and how well each separates distorted from clean);
* ``samples.npz`` — member stacks of a few fixed cases for the comparison panels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase
from edue.data.distortions import distort_dataset
from edue.engine.infer import Predictor
from edue.io import atomic_path, write_json, write_npz
from edue.metrics import EvaluationAccumulator
from edue.metrics.cost import time_per_image
from edue.metrics.ood import pairwise_dice_variance, separation_auroc
from edue.metrics.qc import DEFAULT_POOR_THRESHOLDS
from edue.prediction import Prediction

OOD_KINDS = ("noise", "blur", "hue")
OOD_FRACTIONS = (0.0, 0.5, 1.0)
N_SAMPLES = 4


def measure_inference(predictor: Predictor, image: np.ndarray, repeats: int = 5) -> float:
    """Median seconds of one single-image prediction (after two warm-up passes)."""
    return time_per_image(
        lambda x: predictor.predict(x),  # type: ignore[arg-type]
        image,
        warmup=2,
        repeats=repeats,
        n_images=1,
    )


def ood_study(
    predictor: Predictor,
    cases: Sequence[MultiRaterCase],
    seed: int = 0,
    kinds: Sequence[str] = OOD_KINDS,
) -> dict[str, Any]:
    """Distort 0 / 50 / 100 % of the images and score the members' disagreement.

    Per image: the variance of the pairwise Dice between members (layer / model
    agreement) and SV. Per kind at 50 %: the AUROC with which each separates distorted
    from clean images.
    """
    images = [c.image for c in cases]
    out: dict[str, Any] = {"kinds": list(kinds), "fractions": list(OOD_FRACTIONS), "results": {}}
    for kind in kinds:
        if kind == "hue" and images[0].shape[0] != 3:
            continue
        for fraction in OOD_FRACTIONS:
            result, flags = distort_dataset(images, fraction, kind, seed=seed)
            distorted: list[np.ndarray] = list(result)  # type: ignore[call-overload]
            preds: list[Prediction] = []
            for start in range(0, len(distorted), 16):
                preds += predictor.predict_batch(distorted[start : start + 16])
            agreement = np.stack([pairwise_dice_variance(p.members).numpy() for p in preds])
            sv = np.stack([p.sv.numpy() for p in preds])
            entry: dict[str, Any] = {
                "is_distorted": flags.tolist(),
                "agreement_variance": agreement.tolist(),
                "sv": sv.tolist(),
            }
            if 0 < flags.sum() < len(flags):
                entry["auroc_agreement"] = [
                    separation_auroc(np.nan_to_num(agreement[:, k]), flags)
                    for k in range(agreement.shape[1])
                ]
                entry["auroc_sv"] = [separation_auroc(sv[:, k], flags) for k in range(sv.shape[1])]
            out["results"][f"{kind}@{fraction:g}"] = entry
    return out


def _save_samples(path: Path, cases: list[MultiRaterCase], preds: list[Prediction]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for i, (case, pred) in enumerate(zip(cases, preds, strict=True)):
        arrays[f"{i}/image"] = case.image
        arrays[f"{i}/masks"] = case.masks
        arrays[f"{i}/members"] = pred.members.numpy().astype(np.float16)
        arrays[f"{i}/case_id"] = np.array(case.case_id)
    arrays["structures"] = np.array(list(cases[0].structures))
    write_npz(path, **arrays)


def evaluate_predictor(
    predictor: Predictor,
    cases: Sequence[MultiRaterCase],
    out_dir: str | Path,
    ood: bool = True,
    seed: int = 0,
    hausdorff: bool = True,
    extra: dict[str, Any] | None = None,
    poor_thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Evaluate on ``cases`` and write every output; returns ``metrics.json``'s content.

    ``poor_thresholds`` (structure -> soft Dice) override the quality-control defaults
    of :data:`edue.metrics.qc.DEFAULT_POOR_THRESHOLDS` for the structures they name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = {**DEFAULT_POOR_THRESHOLDS, **(poor_thresholds or {})}
    acc = EvaluationAccumulator(hausdorff=hausdorff, seed=seed, poor_thresholds=thresholds)
    sample_cases: list[MultiRaterCase] = []
    sample_preds: list[Prediction] = []
    started = time.perf_counter()
    for case, pred in predictor.predict_cases(list(cases)):
        acc.update(pred, case)
        if len(sample_cases) < N_SAMPLES:
            sample_cases.append(case)
            sample_preds.append(pred)
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "method": predictor.name,
        "n_members": predictor.method.n_members,
        "n_passes": predictor.n_passes,
        "parameters": predictor.n_parameters(),
        "seconds_per_image": measure_inference(predictor, cases[0].image),
        "evaluation_seconds": seconds,
        "structures": list(cases[0].structures),
        "device": str(predictor.device),
        **(extra or {}),
        "metrics": acc.aggregate(),
    }
    with atomic_path(out / "per_case.csv") as tmp:
        acc.write_csv(tmp)
    write_json(out / "curves.json", acc.curves())
    _save_samples(out / "samples.npz", sample_cases, sample_preds)
    if ood:
        write_json(out / "ood.json", ood_study(predictor, cases, seed=seed))
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    data: str | None = None,
    data_format: str | None = None,
    split: str = "test",
    all_cases: bool = False,
    ood: bool = False,
    poor_thresholds: Mapping[str, float] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a checkpoint on one subset of a dataset; returns ``metrics.json``'s content.

    Args:
        checkpoint: checkpoint file or run folder.
        out_dir: evaluation folder to write.
        data: dataset root (default: the training configuration's).
        data_format: reader name (default: the training configuration's).
        split: subset of the run's split (``split.json`` of the run folder when ``data``
            is not given, else the configured split of ``data``).
        all_cases: evaluate every case of the dataset (``split`` only names the subset).
        ood: also run the distortion study.
        poor_thresholds: quality-control thresholds (structure -> soft Dice).
        device: ``auto``, ``cpu`` or ``cuda``.

    Raises:
        ConfigError: the subset is empty or unknown.
    """
    import copy

    from edue.engine.data import build_datasets, open_configured_source, split_indices
    from edue.errors import ConfigError

    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    config = copy.deepcopy(predictor.config)
    if data:
        config.data.root = data
        config.data.split_file = None
    if data_format:
        config.data.format = data_format
    source = open_configured_source(config)
    run_dir = Path(checkpoint).parent if Path(checkpoint).is_file() else Path(checkpoint)
    if all_cases:
        indices = {split: list(range(len(source)))}
    else:
        if not data and (run_dir / "split.json").is_file():
            config.data.split_file = str(run_dir / "split.json")
        indices = split_indices(config, source)
    if split not in indices or not indices[split]:
        raise ConfigError(f"split '{split}' is empty or unknown (have {sorted(indices)})")
    subset = build_datasets(config, source, {split: indices[split]}, require_train=False)[split]
    cases = [subset.load(i) for i in range(len(subset))]
    return evaluate_predictor(
        predictor,
        cases,
        out_dir,
        ood=ood,
        extra={"checkpoint": str(checkpoint), "split": split},
        poor_thresholds=poor_thresholds,
    )


def parse_poor_thresholds(items: Sequence[str]) -> dict[str, float]:
    """``["GTVp=0.7", ...]`` -> ``{"GTVp": 0.7}``.

    Raises:
        ConfigError: an item is not ``NAME=NUMBER`` with the number in [0, 1].
    """
    from edue.errors import ConfigError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name.strip() or not 0.0 <= number <= 1.0:
            raise ConfigError(
                f"--poor-threshold '{item}': expected STRUCTURE=DICE with DICE in [0, 1]"
            )
        out[name.strip()] = number
    return out
