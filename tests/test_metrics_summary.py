"""evaluate_case and EvaluationAccumulator on small seeded multi-rater cases."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from edue.data.case import MultiRaterCase, expert_variance, soft_vote
from edue.metrics import (
    CASE_METRICS,
    EvaluationAccumulator,
    evaluate_case,
    expected_calibration_error,
    ged,
    hausdorff95,
    hungarian_iou,
    image_correlation,
    mean_rater_dice,
    nll,
    pairwise_dice_variance,
    pixel_ncc,
    qc_curve,
    soft_dice,
)
from edue.prediction import Prediction

STRUCTURES = ("disc", "cup")


def _case(index: int, shape: tuple[int, ...] = (32, 32), n_raters: int = 6) -> MultiRaterCase:
    """Nested blobs whose radius varies by rater (more for higher ``index``)."""
    rng = np.random.default_rng(index)
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    distance = np.sqrt((grid**2).sum(0))
    masks = np.zeros((n_raters, 2, *shape), np.uint8)
    spread = 1 + index % 4
    for r in range(n_raters):
        masks[r, 0] = distance < shape[-1] / 3 + rng.integers(-spread, spread + 1)
        masks[r, 1] = distance < shape[-1] / 6 + rng.integers(-spread, spread + 1)
    return MultiRaterCase(
        image=rng.random((3, *shape)).astype(np.float32),
        masks=masks,
        case_id=f"case{index}",
        structures=STRUCTURES,
        rater_probability=masks.mean(0).astype(np.float32) if index % 2 == 0 else None,
    )


def _noisy_prediction(case: MultiRaterCase, n_members: int = 5, seed: int = 0) -> Prediction:
    gen = torch.Generator().manual_seed(seed)
    vote = soft_vote(torch.from_numpy(case.masks))
    noise = 0.2 * torch.randn((n_members, *vote.shape), generator=gen)
    return Prediction((vote.unsqueeze(0) + noise).clamp(0, 1), method="noisy")


def _rater_dice_variance(case: MultiRaterCase, structure: str) -> float:
    """The population variance of the Dice of every pair of raters of ``structure``
    (nonzero: the raters of :func:`_case` disagree)."""
    masks = case.masks[:, STRUCTURES.index(structure)].reshape(case.n_raters, -1) > 0
    dice = [
        2 * (a & b).sum() / (a.sum() + b.sum()) for i, a in enumerate(masks) for b in masks[i + 1 :]
    ]
    assert len(dice) == case.n_raters * (case.n_raters - 1) // 2 and np.var(dice) > 0
    return float(np.var(dice))


def test_perfect_prediction_made_of_the_raters() -> None:
    case = _case(1)
    masks = torch.from_numpy(case.masks)
    row = evaluate_case(Prediction(masks.float()), case)
    extra = [f"member_soft_dice_{i}" for i in range(masks.shape[0])]
    extra += ["sv_variance", "sv_bernoulli", "sv_combined"]
    assert set(row) == {f"{m}/{s}" for m in (*CASE_METRICS, *extra) for s in STRUCTURES}
    for s in STRUCTURES:  # each member (rater) alone against the soft vote; the scores
        for i in range(masks.shape[0]):
            alone = soft_dice(masks[i].float(), soft_vote(masks))[STRUCTURES.index(s)]
            assert row[f"member_soft_dice_{i}/{s}"] == pytest.approx(float(alone), rel=1e-6)
        assert row[f"sv_variance/{s}"] == pytest.approx(row[f"model_sv/{s}"], rel=1e-6)
        assert row[f"sv_combined/{s}"] == pytest.approx(
            row[f"sv_variance/{s}"] + row[f"sv_bernoulli/{s}"], rel=1e-6
        )
    for s in STRUCTURES:
        assert row[f"soft_dice/{s}"] == pytest.approx(1.0)
        assert row[f"hard_dice/{s}"] == pytest.approx(1.0)
        assert row[f"hd95/{s}"] == pytest.approx(0.0)
        assert row[f"brier/{s}"] == pytest.approx(0.0, abs=1e-9)
        assert row[f"model_sv/{s}"] == pytest.approx(row[f"expert_sv/{s}"], rel=1e-5)
        k = STRUCTURES.index(s)  # the raters' variance (N − 1) summed over the image
        expert = np.var(case.masks[:, k].astype(np.float64), axis=0, ddof=1).sum()
        assert expert > 0 and row[f"expert_sv/{s}"] == pytest.approx(expert, rel=1e-5)
        assert row[f"pixel_ncc/{s}"] == pytest.approx(1.0, abs=1e-6)
        assert row[f"ged/{s}"] == pytest.approx(0.0, abs=1e-6)  # LIDC preset
        assert row[f"hungarian_iou/{s}"] == pytest.approx(1.0)
        assert row[f"pairwise_dice_var/{s}"] == pytest.approx(
            _rater_dice_variance(case, s), rel=1e-5
        )
    vote = soft_vote(masks)
    assert row["nll/disc"] == pytest.approx(nll(vote, vote)[0].item(), rel=1e-6)


def test_evaluate_case_equals_the_individual_metrics() -> None:
    case = _case(2)
    prediction = _noisy_prediction(case)
    masks = torch.from_numpy(case.masks)
    row = evaluate_case(prediction, case, hausdorff=False)
    assert not any(key.startswith("hd95") for key in row)
    vote = soft_vote(masks)
    expected = {
        "soft_dice": soft_dice(prediction.mean, vote),
        "rater_dice": mean_rater_dice(prediction.mean, masks),
        "pixel_ncc": pixel_ncc(prediction.uncertainty, expert_variance(masks)),
        "ged": ged(prediction.members, masks, include_self_pairs=True),
        "hungarian_iou": hungarian_iou(prediction.members, masks),
        "pairwise_dice_var": pairwise_dice_variance(prediction),
        "model_sv": prediction.sv,
    }
    for metric, values in expected.items():
        for k, s in enumerate(STRUCTURES):
            assert row[f"{metric}/{s}"] == pytest.approx(values[k].item(), rel=1e-5), metric
    assert 0.5 < row["soft_dice/disc"] < 1.0


def test_evaluate_case_3d_with_spacing_and_shape_check() -> None:
    case = _case(3, shape=(8, 16, 16), n_raters=3)
    case.spacing = (3.0, 1.0, 1.0)
    prediction = _noisy_prediction(case, n_members=2)
    row = evaluate_case(prediction, case)
    reference = soft_vote(torch.from_numpy(case.masks)) > 0.5
    hd = hausdorff95(prediction.mean > 0.5, reference, spacing=(3.0, 1.0, 1.0))
    assert row["hd95/disc"] == pytest.approx(hd[0].item())
    assert math.isfinite(row["ged/cup"])
    wrong = Prediction(torch.rand(2, 2, 8, 16, 15, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="do not match"):
        evaluate_case(wrong, case)


def test_single_member_prediction() -> None:
    case = _case(4)
    member = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    row = evaluate_case(Prediction(member), case, hausdorff=False)
    assert math.isnan(row["pairwise_dice_var/disc"])
    # a single member's uncertainty is the Bernoulli variance p (1 − p), summed
    expected = float((member[0, 0] * (1 - member[0, 0])).sum())
    assert row["model_sv/disc"] == pytest.approx(expected, rel=1e-5)


def test_accumulator_aggregates_rows_calibration_and_qc(tmp_path) -> None:
    acc = EvaluationAccumulator(hausdorff=False, n_boot=200, seed=0)
    cases = [_case(i) for i in range(8)]
    predictions = [_noisy_prediction(c, seed=i) for i, c in enumerate(cases)]
    for prediction, case in zip(predictions, cases, strict=True):
        row = acc.update(prediction, case)
        assert row["case_id"] == case.case_id and row["method"] == "noisy"
    summary = acc.aggregate()
    assert summary["n_cases"] == 8
    soft = acc.column("soft_dice/cup")
    assert summary["soft_dice/cup/mean"] == pytest.approx(soft.mean())
    assert summary["soft_dice/cup/std"] == pytest.approx(soft.std())
    corr = image_correlation(acc.column("model_sv/disc"), acc.column("expert_sv/disc"), 200)
    assert summary["image_spearman/disc"] == pytest.approx(corr["spearman"])
    assert summary["image_spearman/disc/ci_low"] == pytest.approx(corr["spearman_ci"][0])
    qc = qc_curve(acc.column("model_sv/cup"), soft, 0.85)
    # every noisy cup scores below 0.85 soft Dice: all 8 poor, nothing to rank
    assert summary["qc_n_poor/cup"] == qc["n_poor"] == 8
    assert math.isnan(summary["qc_d_auc/cup"]) and math.isnan(qc["d_auc"])
    middle = float(np.median(soft))  # half the images poor: d-AUC defined
    split = EvaluationAccumulator(hausdorff=False, n_boot=10, poor_thresholds={"cup": middle})
    for prediction, case in zip(predictions, cases, strict=True):
        split.update(prediction, case)
    qc = qc_curve(acc.column("model_sv/cup"), soft, middle)
    assert 0 < qc["n_poor"] < 8
    assert split.aggregate()["qc_d_auc/cup"] == pytest.approx(qc["d_auc"])
    assert summary["qc_threshold/disc"] == 0.97

    means = torch.cat([p.mean for p in predictions], 1)
    votes = torch.cat([soft_vote(torch.from_numpy(c.masks)) for c in cases], 1)
    ece = expected_calibration_error(means, votes)
    assert summary["ece_soft_vote/disc"] == pytest.approx(ece[0].item())
    analytic = [i for i, c in enumerate(cases) if c.rater_probability is not None]
    ece_analytic = expected_calibration_error(
        torch.cat([predictions[i].mean for i in analytic], 1),
        torch.cat([torch.from_numpy(cases[i].rater_probability) for i in analytic], 1),
    )
    assert summary["ece_rater_probability/cup"] == pytest.approx(ece_analytic[1].item())

    curves = acc.curves()
    assert curves["qc"]["cup"]["fraction_flagged"].shape == (9,)
    assert curves["reliability_soft_vote"]["disc"]["counts"].shape == (15,)
    assert "reliability_rater_probability" in curves

    path = acc.write_csv(tmp_path / "rows" / "cases.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and rows[0]["case_id"] == "case0"
    assert float(rows[3]["soft_dice/disc"]) == pytest.approx(acc.rows[3]["soft_dice/disc"])


def test_accumulator_guards() -> None:
    acc = EvaluationAccumulator(hausdorff=False)
    with pytest.raises(RuntimeError):
        acc.aggregate()
    case = _case(5)
    case.rater_probability = None
    acc.update(_noisy_prediction(case), case)
    assert not any(key.startswith("ece_rater_probability") for key in acc.aggregate())
    other = _case(6)
    other.structures = ("a", "b")
    with pytest.raises(ValueError, match="structures"):
        acc.update(_noisy_prediction(other), other)
    acc.reset()
    assert acc.n_cases == 0
