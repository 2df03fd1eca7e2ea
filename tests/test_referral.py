"""``edue calibrate`` end to end on the tiny run: the calibration file, the decisions and
gallery of ``edue predict`` on a folder of new images, the referral outcome of ``edue
evaluate`` / ``edue compare``, the gate reading the prediction's own forward pass, and
one clear error for every bad or missing calibration file."""

from __future__ import annotations

import csv
import gc
import json
import re
import shutil
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edue.cli import main
from edue.data.synthetic import FundusConfig, generate_cases
from edue.engine.inference.features import FeatureTap, encoder_block_names
from edue.engine.inference.predictor import Predictor
from edue.engine.referral.calibration import REASON_SHIFT, REASON_UNCERTAIN, Calibration
from edue.engine.referral.gate import OODGate
from edue.errors import EdueError

POOR = ["disc=0.5", "cup=0.3"]


@pytest.fixture(scope="module")
def calibrated_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run, calibrated (calibration.json beside its checkpoint). With
    four calibration images only a false-alarm rate of 1/2 lets the gate flag anything."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(tiny_run, run)
    args = ["calibrate", str(run), "--poor", *POOR, "--alpha", "0.2", "--false-alarm", "0.5"]
    assert main([*args, "--device", "cpu"]) == 0
    return run


def _fundus_pngs(folder: Path, n: int, seed: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, case in enumerate(generate_cases(n, seed, FundusConfig(size=32, n_raters=2))):
        rgb = np.clip(np.moveaxis(case.image, 0, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
        paths.append(folder / f"fundus{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


def _in_expert_units(entry: dict, sv: float) -> tuple[float, float, float]:
    """The expected experts' SV of a model SV ``sv`` and its 80 % range, from one
    structure's entry of ``calibration.json``: the isotonic map, linear between its knots
    and constant beyond them, plus the 10th and 90th percentiles of the calibration
    images' residuals (with four calibration images all of them are the neighbours),
    clipped at 0."""
    knots = entry["isotonic"]
    cal = entry["calibration"]
    residuals = np.asarray(cal["expert_sv"]) - np.interp(cal["sv"], knots["x"], knots["y"])
    assert len(residuals) == 4
    expected = float(np.interp(sv, knots["x"], knots["y"]))
    low, high = np.quantile(residuals, [0.1, 0.9])
    return expected, max(expected + low, 0.0), max(expected + high, 0.0)


def test_calibrate_writes_thresholds_scale_and_gate(calibrated_run: Path) -> None:
    data = json.loads((calibrated_run / "calibration.json").read_text())
    assert data["format"] == "edue-calibration" and data["split"] == "val"
    assert data["n_calibration"] == 4 and data["n_train"] == 12
    assert data["alpha"] == 0.2 and data["delta"] == 0.1
    assert data["poor"] == {"disc": 0.5, "cup": 0.3}
    assert "Learn-then-Test" in data["procedure"]
    for s in ("disc", "cup"):
        entry = data["per_structure"][s]
        assert len(entry["calibration"]["sv"]) == 4
        assert entry["grid"][-1] == "inf"
        assert entry["threshold"] == "-inf"  # 4 images can never certify alpha 0.2
        assert entry["expected_referral_rate"] == 1.0
        assert np.all(np.diff(entry["isotonic"]["y"]) >= 0)
    gate = data["ood_gate"]
    assert gate["modules"] == ["network.backbone.encoder.1", "network.backbone.encoder.2"]
    assert gate["features"] == 8 + 16 and gate["n_train"] == 12
    assert (calibrated_run / gate["file"]).is_file()
    assert len(gate["calibration_scores"]) == 4
    # rank ceil(5 * 0.5) = 3 of the 4 calibration scores
    assert float(gate["threshold"]) == sorted(gate["calibration_scores"])[2]
    assert data["expected_referral_rate"]["any"] == 1.0


def test_predict_on_new_images_decides_and_draws_the_gallery(
    calibrated_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "new"
    _fundus_pngs(inputs, 3)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(inputs / "noise.png")
    out = tmp_path / "out"
    assert main(["predict", str(calibrated_run), str(inputs), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "predictions.json").read_text())
    entries = {Path(e["input"]).name: e for e in summary["predictions"]}
    assert len(entries) == 4
    calibration = json.loads((calibrated_run / "calibration.json").read_text())
    for entry in entries.values():
        assert entry["refer"] is True  # nothing could be certified on four images
        assert REASON_UNCERTAIN in entry["reasons"]
        for s in ("disc", "cup"):
            decision = entry["structures"][s]
            sv = entry["sv"][s]
            assert decision["sv"] == pytest.approx(sv)
            expected, low, high = _in_expert_units(calibration["per_structure"][s], sv)
            assert decision["expected_expert_sv"] == pytest.approx(expected, rel=1e-9)
            assert decision["expected_expert_sv_range"] == pytest.approx([low, high], rel=1e-9)
            calibration_sv = np.asarray(calibration["per_structure"][s]["calibration"]["sv"])
            assert decision["percentile"] == 100 * np.mean(calibration_sv <= sv)
        assert entry["ood"]["available"] and np.isfinite(entry["ood"]["score"])
    noisy = entries["noise.png"]
    assert noisy["ood"]["unlike_training"] and REASON_SHIFT in noisy["reasons"]
    assert noisy["ood"]["score"] > max(
        e["ood"]["score"] for n, e in entries.items() if n != "noise.png"
    )
    referral = summary["referral"]
    assert referral["n_images"] == 4 and referral["n_referred"] == 4
    n_shift = sum(REASON_SHIFT in e["reasons"] for e in entries.values())
    assert referral["by_reason"] == {REASON_UNCERTAIN: 4, REASON_SHIFT: n_shift}
    assert (
        f"referred 4 of 4 image(s) to a second expert (alpha 0.2): 4 {REASON_UNCERTAIN}" in stdout
    )
    assert f"{n_shift} {REASON_SHIFT}" in stdout
    page = (out / "predictions.html").read_text()
    assert page.count('<div class="card refer"') == 4
    assert page.count("data:image/png;base64,") == 8
    assert 'id="referred-only"' in page and 'src="http' not in page
    # sorted by the expected experts' disagreement, highest first
    order = re.findall(r"<h3>([^<]+)</h3>", page)
    keys = [
        sum(entries[n]["structures"][s]["expected_expert_sv"] for s in ("disc", "cup"))
        for n in order
    ]
    assert keys == sorted(keys, reverse=True)


def test_predict_without_calibration_says_so(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "new"
    _fundus_pngs(inputs, 1)
    out = tmp_path / "out"
    args = ["predict", str(tiny_run), str(inputs), "--out", str(out), "--no-figures"]
    assert main(args) == 0
    assert "no calibration.json beside the checkpoint" in capsys.readouterr().out
    entry = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert set(entry) == {"input", "output", "sv"}
    assert "no referral decision" in (out / "predictions.html").read_text()


def _corrupt(run: Path, how: str) -> Path:
    """Damage the calibration of ``run``; returns the file the error must name."""
    path = run / "calibration.json"
    data = json.loads(path.read_text())
    if how == "garbage":
        path.write_text("{ not json")
    elif how == "foreign":
        path.write_text(json.dumps({"thresholds": [1, 2]}))
    elif how == "malformed":
        del data["per_structure"]["cup"]
        path.write_text(json.dumps(data))
    elif how == "other checkpoint":
        data["weights_sha256"] = "0" * 64
        path.write_text(json.dumps(data))
    elif how == "gate altered":
        gate = run / data["ood_gate"]["file"]
        gate.write_bytes(gate.read_bytes() + b"\0")
        return gate
    elif how == "gate missing":
        gate = run / data["ood_gate"]["file"]
        gate.unlink()
        return gate
    return path


@pytest.mark.parametrize(
    "how, expected",
    [
        ("garbage", "not a readable calibration file"),
        ("foreign", "not an edue calibration file"),
        ("malformed", "malformed calibration file"),
        ("other checkpoint", "was fitted for another checkpoint"),
        ("gate altered", "does not match the SHA-256"),
        ("gate missing", "arrays are missing"),
    ],
)
def test_bad_calibration_beside_the_checkpoint_is_one_clear_error(
    calibrated_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
    expected: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(calibrated_run, run)
    named = _corrupt(run, how)
    inputs = tmp_path / "new"
    _fundus_pngs(inputs, 1)
    assert main(["predict", str(run), str(inputs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"edue: error: {named}: ") and expected in err[0]
    assert not (tmp_path / "out" / "predictions.json").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_missing_calibration_file_is_one_clear_error(
    calibrated_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "nowhere" / "calibration.json"
    target = [str(tmp_path / "in")] if command == "predict" else []
    _fundus_pngs(tmp_path / "in", 1)
    args = [command, str(calibrated_run), *target, "--out", str(tmp_path / "o")]
    assert main([*args, "--calibration", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"edue: error: {missing}: calibration file not found (run `edue calibrate` first)"
    ]


def test_calibrate_refuses_the_training_split(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.json"
    assert main(["calibrate", str(tiny_run), "--split", "train", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never trained on" in err[0]
    assert main(["calibrate", str(tiny_run), "--poor", "rim=0.5", "--out", str(out)]) == 2
    assert "--poor names rim; the model predicts disc, cup" in capsys.readouterr().err
    assert not out.exists()
    # evaluate's --poor-threshold is as strict (it was silently ignored), and the gate
    # reads no more blocks than the encoder has (it was silently clamped)
    for bad in ("liver=0.9", "Disc=0.9"):
        argv = ["evaluate", str(tiny_run), "--out", str(tmp_path / "e"), "--poor-threshold", bad]
        assert main(argv) == 2
        assert "the model predicts disc, cup" in capsys.readouterr().err
    assert main(["calibrate", str(tiny_run), "--gate-blocks", "99", "--out", str(out)]) == 2
    assert "--gate-blocks 99: the model has" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "e" / "metrics.json").exists()


def test_the_gate_reads_the_prediction_s_own_forward_pass(tiny_run: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_run, device="cpu")
    names = encoder_block_names(predictor.method)
    assert names == predictor.feature_module_names()
    assert names == [
        "network.backbone.encoder.0",
        "network.backbone.encoder.1",
        "network.backbone.encoder.2",
    ]
    modules = [dict(predictor.method.named_modules())[n] for n in names]
    passes: list[int] = []
    predictor.method.network.register_forward_hook(lambda *_: passes.append(1))
    images = [c.image for c in generate_cases(3, 1, FundusConfig(size=32, n_raters=2))]
    plain = predictor.predict_batch(images)
    assert len(passes) == 1
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in modules]
    preds, features = predictor.predict_batch_with_features(images, tap=names)
    for handle in handles:
        handle.remove()
    assert len(passes) == 2  # one forward pass for predictions and features together
    assert features is not None and features.shape == (3, 4 + 8 + 16)
    # each block's output, averaged over space, in encoder order
    torch.testing.assert_close(features, torch.cat([o.mean((2, 3)) for o in outputs], 1))
    for a, b in zip(plain, preds, strict=True):
        torch.testing.assert_close(a.members, b.members)
    # plain predictions of other images between two passes that read features change
    # neither: the features are those of the pass's own images, the predictions those
    # of a predictor that never read any
    others = [c.image for c in generate_cases(2, 7, FundusConfig(size=32, n_raters=2))]
    before = predictor.predict_batch(others)
    again, features_again = predictor.predict_batch_with_features(images, tap=names)
    after = predictor.predict_batch(others)
    torch.testing.assert_close(features_again, features, rtol=0, atol=0)
    for a, b in zip(preds, again, strict=True):
        torch.testing.assert_close(a.members, b.members, rtol=0, atol=0)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a.members, b.members, rtol=0, atol=0)
    assert len(passes) == 5


def _channel_means(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The channel means of ``block(x)`` over space, computed directly ``[b, C]``."""
    with torch.no_grad():
        return block(x).mean((2, 3))


@pytest.mark.parametrize("persistent", [False, True])
def test_feature_tap_reads_channel_means_inside_its_context_only(persistent: bool) -> None:
    torch.manual_seed(0)
    block = torch.nn.Conv2d(1, 2, 3, padding=1)
    x, y = torch.randn(3, 1, 5, 4), torch.randn(3, 1, 5, 4)
    untapped = block(x).detach()
    tap = FeatureTap([block], persistent=persistent)
    for images in (x, y, x):  # several passes of one tap, each read on its own (x last)
        with tap:
            inside = block(images)
        block(torch.randn(3, 1, 5, 4))  # outside the context: not read
        torch.testing.assert_close(tap.features(3), _channel_means(block, images))
        assert tap.features(3) is None  # read once: what was kept is released
        with FeatureTap([block]) as fresh:
            block(images)
        torch.testing.assert_close(fresh.features(3), _channel_means(block, images))
    torch.testing.assert_close(inside.detach(), untapped, rtol=0, atol=0)  # x's output as ever
    block(x)
    assert tap.features(3) is None  # nothing read after the last context either


def test_a_closed_tap_reads_nothing_and_is_released_by_the_model() -> None:
    torch.manual_seed(0)
    block = torch.nn.Conv2d(1, 2, 1)
    x = torch.randn(2, 1, 4, 4)
    tap = FeatureTap([block], persistent=True)
    with tap:
        block(x)
    tap.close()
    block(3 * x)  # after closing: not read
    torch.testing.assert_close(tap.features(2), _channel_means(block, x))
    with tap:  # entered again after closing: it reads again
        block(2 * x)
    torch.testing.assert_close(tap.features(2), _channel_means(block, 2 * x))
    tap.close()
    for persistent in (False, True):
        tap = FeatureTap([block], persistent=persistent)
        with tap:
            block(x)
        if persistent:
            tap.close()
        released = weakref.ref(tap)
        del tap
        gc.collect()
        assert released() is None  # the model keeps no hook that holds on to the tap
    # and the model computes what it computed before any tap
    torch.testing.assert_close(block(x), torch.nn.functional.conv2d(x, block.weight, block.bias))


def test_feature_tap_pools_repeated_calls_and_windows() -> None:
    block = torch.nn.Conv2d(1, 2, 1)
    with FeatureTap([block]) as tap:
        block(torch.ones(3, 1, 4, 4))
        block(torch.zeros(3, 1, 4, 4))  # a second sample of the same images: averaged
    expected = (block(torch.ones(1, 1, 4, 4)) + block(torch.zeros(1, 1, 4, 4))).mean((2, 3)) / 2
    torch.testing.assert_close(tap.features(3), expected.detach().expand(3, 2))
    windows = torch.arange(16.0).reshape(4, 1, 2, 2)
    with FeatureTap([block]) as tap:
        block(windows)  # four windows of one image: the mean over all their positions
    torch.testing.assert_close(tap.features(1), _channel_means(block, windows).mean(0, True))
    assert tap.features(1) is None  # read once: what was kept is released
    with FeatureTap([block]) as tap:
        block(torch.ones(4, 1, 2, 2))
    assert tap.features(2) is None  # windows of two images mixed: unknown


def test_gate_score_matches_the_float64_mahalanobis_distance() -> None:
    rng = np.random.default_rng(3)
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    train = rng.multivariate_normal([5.0, -2.0, 40.0], cov, 400)
    gate = OODGate.fit(["a"], train, train[:60], 0.05)
    fit = gate.gaussian
    # the whitening matrix reproduces the precision: W Wᵀ = diag(1/s) P diag(1/s)
    w = fit.whitening()
    np.testing.assert_allclose(w @ w.T, fit.precision / np.outer(fit.scale, fit.scale), rtol=1e-9)
    queries = np.vstack([train[:5], [[5.0, -2.0, 40.0], [9.0, 3.0, 30.0]]])
    reference = fit.distance(queries)
    for given in (queries, torch.as_tensor(queries, dtype=torch.float32)):
        scores = gate.score(given)
        assert scores.dtype == np.float64 and scores.shape == (7,)
        np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-5)
    assert gate.score(queries[-1]).shape == (1,)  # one feature vector
    assert np.isnan(gate.score(np.array([[np.nan, 0.0, 0.0]]))[0])  # never flagged
    assert not gate.flags(gate.score(np.array([[np.nan, 0.0, 0.0]])))[0]
    with pytest.raises(ValueError, match="3 per row"):
        gate.score(np.zeros((2, 4)))


def _least_referral(sv: np.ndarray, poor: np.ndarray, alpha: float) -> float:
    """The least share of images any threshold on ``sv`` refers (accepting ``sv <= t``)
    with at most ``alpha`` of the accepted ones poor; referring all always qualifies."""
    rates = [1.0]
    for t in sv[np.isfinite(sv)]:
        accepted = sv <= t
        if poor[accepted].sum() <= alpha * accepted.sum():
            rates.append(1 - accepted.mean())
    return min(rates)


def _pairwise_auroc(scores: list[float], positive: list[bool]) -> float:
    """The share of (distorted, clean) pairs in which the distorted image scores higher,
    ties counting one half (images without a finite score left out)."""
    pairs = [
        (p, n)
        for p, is_p in zip(scores, positive, strict=True)
        for n, is_n in zip(scores, positive, strict=True)
        if is_p and not is_n and np.isfinite(p) and np.isfinite(n)
    ]
    assert pairs
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs]))


def test_evaluate_and_compare_report_the_referral(
    calibrated_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert (
        main(["evaluate", str(calibrated_run), "--out", str(out), "--ood", "--device", "cpu"]) == 0
    )
    stdout = capsys.readouterr().out
    assert "referral (calibrated on 4 'val' image(s), delta 0.1)" in stdout
    info = json.loads((out / "metrics.json").read_text())
    assert info["referral"]["poor"] == {"disc": 0.5, "cup": 0.3}
    assert info["referral"]["alphas"] == [0.05, 0.1, 0.2]
    m = info["metrics"]
    assert m["qc_threshold/disc"] == 0.5  # the calibration's poor levels
    # the SV figures, recomputed here from the evaluated images' own values
    with (out / "per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    calibration = json.loads((calibrated_run / "calibration.json").read_text())
    for s in ("disc", "cup"):
        sv, expert, dice = (
            np.array([float(r[f"{name}/{s}"]) for r in rows])
            for name in ("model_sv", "expert_sv", "soft_dice")
        )
        poor = dice < {"disc": 0.5, "cup": 0.3}[s]
        for a in ("0.05", "0.1", "0.2"):
            assert m[f"referral_rate/{s}/alpha_{a}"] == 1.0  # four calibration images
            assert np.isnan(m[f"referral_poor_share/{s}/alpha_{a}"])
            oracle = m[f"referral_oracle_rate/{s}/alpha_{a}"]
            assert oracle == pytest.approx(_least_referral(sv, poor, float(a)))
        assert m[f"sv_slope/{s}"] == pytest.approx(np.polyfit(expert, sv, 1)[0])
        assert m[f"sv_mae/{s}"] == pytest.approx(np.mean(np.abs(sv - expert)))
        knots = calibration["per_structure"][s]["isotonic"]
        in_expert_units = np.interp(sv, knots["x"], knots["y"])
        assert m[f"sv_mae_isotonic/{s}"] == pytest.approx(np.mean(np.abs(in_expert_units - expert)))
    ood = json.loads((out / "ood.json").read_text())["results"]["noise@0.5"]
    assert len(ood["gate_score"]) == len(ood["is_distorted"])
    assert ood["auroc_gate"] == pytest.approx(
        _pairwise_auroc(ood["gate_score"], ood["is_distorted"])
    )
    report = tmp_path / "report"
    assert main(["compare", str(out), "--out", str(report)]) == 0
    table = (report / "table.md").read_text()
    assert "### Referral with a guarantee" in table and "α=0.1 referred" in table
    assert "### SV in the experts' units" in table and "OOD gate" in table
    assert (report / "figures" / "referral.png").is_file()
    assert "Referral rate against the guarantee level" in (report / "report.html").read_text()
    assert "referral_rate/disc/alpha_0.1" in (report / "table.csv").read_text()


def test_evaluate_calibrates_in_memory_without_a_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_run), "--out", str(out), "--device", "cpu"]) == 0
    info = json.loads((out / "metrics.json").read_text())
    assert info["referral"]["calibration"] is None and info["referral"]["n_calibration"] == 4
    assert any("not saved" in n for n in info["referral"]["notes"])
    assert not (tiny_run / "calibration.json").exists()
    assert main(["evaluate", str(tiny_run), "--out", str(out), "--no-calibration"]) == 0
    assert json.loads((out / "metrics.json").read_text())["referral"] is None


def test_calibration_round_trips(calibrated_run: Path) -> None:
    calibration = Calibration.load(calibrated_run / "calibration.json")
    decision = calibration.decide([1.0, 2.0], ood_score=1e9)
    assert decision["refer"] and decision["reasons"] == [REASON_UNCERTAIN, REASON_SHIFT]
    assert decision["ood"]["unlike_training"]
    assert calibration.decide([1.0, 2.0], ood_score=None)["ood"]["available"] is False


def test_a_batch_is_decided_as_each_image_alone(calibrated_run: Path) -> None:
    calibration = Calibration.load(calibrated_run / "calibration.json")
    disc, cup = (s.sv for s in calibration.structures)
    sv = np.array([[disc.min(), cup.max()], [np.median(disc), np.nan], [1e9, 0.0]])
    scores: list[float | None] = [0.0, None, 1e9]
    batch = calibration.decide_many(sv, scores)
    alone = [calibration.decide(v.tolist(), s) for v, s in zip(sv, scores, strict=True)]
    assert json.dumps(batch) == json.dumps(alone)  # nan included
    first = batch[0]["structures"]
    assert first["disc"]["percentile"] == 25.0 and first["cup"]["percentile"] == 100.0
    low, high = first["disc"]["expected_expert_sv_range"]
    assert 0 <= low <= high
    second = batch[1]["structures"]["cup"]
    assert second["refer"] and second["reasons"] == [REASON_UNCERTAIN]  # nan SV: refer
    assert np.isnan(second["expected_expert_sv"]) and np.isnan(second["percentile"])
    assert batch[1]["ood"]["available"] is False
    assert batch[2]["ood"]["unlike_training"] and not batch[0]["ood"]["unlike_training"]


def test_a_gate_reading_a_block_the_model_lacks_is_refused(calibrated_run: Path) -> None:
    calibration = Calibration.load(calibrated_run / "calibration.json")
    predictor = Predictor.from_checkpoint(calibrated_run, device="cpu")
    assert predictor.weights_sha256 == calibration.weights_sha256
    calibration.check_model(predictor)  # its own model: accepted
    assert calibration.gate is not None
    calibration.gate = replace(calibration.gate, modules=("network.backbone.nope",))
    with pytest.raises(EdueError, match="calibration.json: .*network.backbone.nope"):
        calibration.check_model(predictor)
    predictor.weights_sha256 = "0" * 64
    with pytest.raises(EdueError, match="fitted for another checkpoint"):
        calibration.check_model(predictor)
