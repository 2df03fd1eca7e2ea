"""Converged comparisons: early stopping, the study's resumption, the paired bootstrap,
the size-controlled correlations, the normalised guidance and the deep-supervision
baseline."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from edue.config import load_config
from edue.engine.checkpoint import load_checkpoint
from edue.engine.training.trainer import Trainer, train_or_resume
from edue.losses import edue_loss, guidance_term, head_variance
from edue.methods import build_method
from edue.metrics.disagreement import boundary_length, partial_spearman
from edue.metrics.paired import mean_statistic, paired_difference, spearman_statistic
from tests.conftest import TINY_OVERRIDES


def test_early_stopping_stops_at_the_expected_epoch(tmp_path, monkeypatch):
    scripted = iter([1.0, 0.8, 0.9, 0.85, 0.7, 0.6])  # best at epoch 2, then 2 worse
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val/loss": next(scripted)})
    config = load_config(
        None, [*TINY_OVERRIDES, "train.epochs=6", "train.patience=2", f"out_dir={tmp_path}"]
    )
    trainer = Trainer(config)
    trainer.setup()
    trainer.fit()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    last = load_checkpoint(tmp_path / "last.pt")
    assert (last["epoch"], last["best_epoch"], last["finished"]) == (4, 2, True)
    # a finished run is kept as it is
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("trained again"))
    assert train_or_resume(config) == tmp_path


def test_without_patience_every_epoch_runs(tmp_path, monkeypatch):
    scripted = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val/loss": next(scripted)})
    config = load_config(None, [*TINY_OVERRIDES, "train.epochs=3", f"out_dir={tmp_path}"])
    trainer = Trainer(config)
    trainer.setup()
    trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_paired_bootstrap_covers_a_known_difference_at_its_rate():
    rng = np.random.default_rng(0)
    covered, repeats = 0, 200
    for _ in range(repeats):
        quality = rng.normal(0.8, 0.1, size=(1, 60))  # shared per-image difficulty
        a = quality + 0.05 + rng.normal(0, 0.05, size=(3, 60))
        b = quality + rng.normal(0, 0.05, size=(3, 60))
        result = paired_difference((a,), (b,), mean_statistic, n_boot=300, seed=1)
        covered += result["ci_low"] <= 0.05 <= result["ci_high"]
    # 95 % nominal; 200 repetitions: binomial sd 1.5 %
    assert 0.90 <= covered / repeats <= 0.99


def test_paired_bootstrap_of_spearman_and_its_checks():
    rng = np.random.default_rng(1)
    expert = rng.random((2, 40))
    good = expert + rng.normal(0, 0.05, (2, 40))
    noisy = expert + rng.normal(0, 1.0, (2, 40))
    result = paired_difference(
        (good, expert), (noisy, expert), spearman_statistic, n_boot=200, seed=0
    )
    assert result["ci_low"] > 0 and result["first"] > 0.95 and result["n_images"] == 40
    assert spearman_statistic(np.ones(5), np.arange(5.0)) != spearman_statistic(
        np.ones(5), np.arange(5.0)
    )  # nan for a constant score
    with pytest.raises(ValueError, match="one shape"):
        paired_difference((good,), (noisy[:, :10],))


def test_partial_spearman_against_residuals_of_ranks():
    from scipy.stats import rankdata

    rng = np.random.default_rng(2)
    size = rng.random(80)
    x = size + 0.3 * rng.random(80)
    y = size + 0.3 * rng.random(80)
    rx, ry, rz = rankdata(x), rankdata(y), rankdata(size)
    design = np.stack([np.ones(80), rz], 1)
    res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    expected = np.corrcoef(res_x, res_y)[0, 1]
    assert partial_spearman(x, y, size) == pytest.approx(expected, abs=1e-12)
    # the raw correlation is mostly size: the partial one is much smaller
    assert np.corrcoef(rx, ry)[0, 1] > 0.8 > abs(expected) + 0.5


def test_boundary_length_by_hand():
    square = torch.zeros(1, 6, 6, dtype=torch.bool)
    square[0, 1:5, 1:5] = True  # 16 pixels, 4 inside
    cube = torch.zeros(1, 5, 5, 5, dtype=torch.bool)
    cube[0, 1:4, 1:4, 1:4] = True  # 27 voxels, 1 inside
    full = torch.ones(2, 3, 3, dtype=torch.bool)  # the border counts as outside
    assert boundary_length(square).tolist() == [12.0]
    assert boundary_length(cube).tolist() == [26.0]
    assert boundary_length(full).tolist() == [8.0, 8.0]


def _guidance_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 1, 8, 8, generator=g)
    expert = torch.rand(2, 1, 8, 8, generator=g) * 0.1
    return logits, expert


def test_normalised_guidance_is_the_rmse_over_the_experts_rms():
    logits, expert = _guidance_batch()
    rmse = torch.sqrt(((head_variance(logits) - expert) ** 2).mean() + 1e-8)
    scale = torch.sqrt((expert**2).mean())
    assert float(guidance_term(logits, expert)) == pytest.approx(float(rmse), rel=1e-6)
    normalised = guidance_term(logits, expert, "expert_rms")
    assert float(normalised) == pytest.approx(float(rmse / scale), rel=1e-6)
    squared = guidance_term(logits, expert, "mse")
    assert float(squared) == pytest.approx(float(rmse**2 - 1e-8), rel=1e-5)
    # scaling the experts' variance and the gap alike leaves the normalised term alone
    assert float(guidance_term(logits, expert * 0 + 1e-9, "expert_rms")) == pytest.approx(
        float(torch.sqrt(head_variance(logits).square().mean() + 1e-8) / 1e-3), rel=1e-3
    )  # a batch without disagreement divides by the floor, not by ~0


def test_detached_final_head_gets_no_guidance_gradient():
    logits, expert = _guidance_batch()
    logits.requires_grad_(True)
    guidance_term(logits, expert, detach_final=True).backward()
    assert torch.count_nonzero(logits.grad[-1]) == 0
    # the other heads get the gradient they get without detaching: a head's derivative
    # of the variance does not depend on whether another head is held constant
    attached = logits.detach().clone().requires_grad_(True)
    guidance_term(attached, expert).backward()
    assert torch.count_nonzero(attached.grad[:-1]) > 0
    torch.testing.assert_close(logits.grad[:-1], attached.grad[:-1])


def test_paper_preset_restores_the_published_configuration():
    config = load_config(
        None, ["method.preset=paper", "method.guidance_norm=expert_rms", "method.heads=decoder"]
    )
    assert config.method.guidance_norm == "expert_rms"  # what is set explicitly wins
    paper = load_config(None, ["method.preset=paper"]).method
    assert (paper.guidance_weight, paper.guidance_norm, paper.guidance_detach_final) == (
        5.0,
        "none",
        False,
    )


def test_deep_supervision_trains_like_edue_without_guidance_and_reads_the_final_head():
    torch.manual_seed(0)
    config = load_config(None, [*TINY_OVERRIDES, "method.name=deep_supervision"])
    method = build_method(config, 3, 2, 2)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 2, 8, 8, generator=g)
    soft = torch.rand(2, 2, 8, 8, generator=g)
    batch = {
        "soft_vote": soft,
        "expert_variance": torch.zeros_like(soft),
        "masks": (torch.rand(2, 3, 2, 8, 8, generator=g) > 0.5).float(),
        "rater_valid": torch.ones(2, 3, dtype=torch.bool),
    }
    loss, parts = method.loss(logits, batch)
    expected, _ = edue_loss(logits, batch, label_sampling=False, guidance=False)
    assert float(loss) == float(expected) and "guidance" not in parts
    members = method.members_from_logits(logits)
    assert members.shape == (1, 2, 2, 8, 8)
    assert torch.equal(members[0], torch.sigmoid(logits[-1]))
    heads = build_method(
        load_config(None, [*TINY_OVERRIDES, "method.name=deep_supervision_heads"]), 3, 2, 2
    )
    assert heads.members_from_logits(logits).shape == (2, 2, 2, 8, 8)


STUDY_YAML = """
data: {format: synthetic, options: {size: 32}, split: {train: 8, val: 4, test: 6}}
model: {channels: [4, 8]}
method: {ensemble_size: 2}
train: {epochs: 2, batch_size: 4, device: cpu, threads: 1}
"""


@pytest.mark.slow
def test_a_killed_study_resumes_where_it_stopped(tmp_path):
    (tmp_path / "s.yaml").write_text(STUDY_YAML)
    argv = [
        "study", str(tmp_path / "s.yaml"), "--methods", "edue,plain,deep_supervision,"
        "deep_supervision_heads,deep_ensemble", "--seeds", "0,1", "--out",
        str(tmp_path / "out"), "--n-boot", "50",
    ]  # fmt: skip
    # the first attempt dies (SIGKILL) when the first seed's second method starts
    script = f"""
        import os, signal
        from edue.engine.training import jobs
        original, calls = jobs.train_or_resume, [0]
        def dying(config):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(config)
        jobs.train_or_resume = dying
        from edue.cli import main
        raise SystemExit(main({argv!r}))
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], timeout=600)
    assert killed.returncode == -9
    first = tmp_path / "out" / "seed0" / "edue" / "best.pt"
    stamp = first.stat().st_mtime_ns
    resumed = subprocess.run(
        [sys.executable, "-m", "edue", *argv], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp  # the finished run was kept, not retrained
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["differences"]) == {
        "plain",
        "deep_supervision",
        "deep_supervision_heads",
        "deep_ensemble",
    }
    assert (tmp_path / "out" / "study.md").read_text().startswith("# Study: 5 methods")
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    timing = json.loads((tmp_path / "out" / "timing.json").read_text())
    assert set(timing["seconds_per_image"]) == set(summary["methods"])
    from edue.cli import main

    # another configuration in the same folder is refused (the same one would be extended)
    assert main([*argv, "--seeds", "3", "train.epochs=3"]) == 2
    assert not (tmp_path / "out" / "seed3").exists()


def test_a_study_folder_can_be_extended_not_changed(tmp_path):
    from edue.config import load_config
    from edue.errors import ConfigError
    from edue.study import _claim_folder

    config = load_config(None, ["train.epochs=3"])
    assert _claim_folder(tmp_path, config, ["edue", "plain"], [0], {}) == (
        ["edue", "plain"],
        [0],
        {},
    )
    # written by an older version: keys added since (with their defaults) are no change
    request = tmp_path / "study-request.json"
    old = json.loads(request.read_text())
    del old["config"]["model"]["backbone"]
    del old["arms"]  # older folders have no arms
    request.write_text(json.dumps(old))
    arm = {"final": {"segmentation": "final"}}
    merged = _claim_folder(tmp_path, config, ["mc_dropout", "edue", "final"], [1, 0], arm)
    # earlier first, then the new
    assert merged == (["edue", "plain", "mc_dropout", "final"], [0, 1], arm)
    assert json.loads(request.read_text())["methods"] == ["edue", "plain", "mc_dropout", "final"]
    # naming only some methods or seeds keeps the others: they are in the folder
    assert _claim_folder(tmp_path, config, ["plain"], [1], {}) == merged
    with pytest.raises(ConfigError, match="holds another study"):
        _claim_folder(
            tmp_path, load_config(None, ["train.epochs=4"]), ["edue", "plain"], [0, 1], {}
        )
    with pytest.raises(ConfigError, match="arm final with other values"):
        _claim_folder(tmp_path, config, ["final"], [0], {"final": {"segmentation": "mean"}})


def test_a_study_runs_arms_and_reuses_the_weights_of_read_out_variants(tmp_path):
    from edue.errors import ConfigError
    from edue.study import parse_arm, run_config, run_study

    config = load_config(None, [*TINY_OVERRIDES, "train.epochs=1"])
    arms = dict(
        parse_arm(a)
        for a in (
            "final:segmentation=final",
            "separate:uncertainty_heads=separate,segmentation=final",
            "paper:preset=paper",
        )
    )
    assert arms["separate"] == {"uncertainty_heads": "separate", "segmentation": "final"}
    assert run_config(config, "paper", arms).method.guidance_weight == 5.0  # the preset
    with pytest.raises(ConfigError, match="arm bad"):
        run_config(config, "bad", {"bad": {"segmentation": "median"}})
    for text in ("", "x:y", ":segmentation=final"):
        with pytest.raises(ConfigError, match="--arm"):
            parse_arm(text)
    with pytest.raises(ConfigError, match="--subject"):
        run_study(config, ["plain"], [0], tmp_path / "x", n_boot=20, subject="nope")
    summary = run_study(
        config, ["plain", "edue"], [0], tmp_path / "s", n_boot=20, arms=arms, subject="separate"
    )
    assert summary["methods"] == ["plain", "edue", "final", "separate", "paper"]
    assert summary["subject"] == "separate"
    assert set(summary["differences"]) == {"plain", "edue", "final", "paper"}
    seed = tmp_path / "s" / "seed0"
    edue, final = (
        load_checkpoint(seed / "edue" / "best.pt"),
        load_checkpoint(seed / "final" / "best.pt"),
    )
    assert final["config"]["method"]["segmentation"] == "final"
    for key, value in edue["model"].items():  # read differently, not trained again
        assert torch.equal(value, final["model"][key])
    assert not (seed / "final" / "log.jsonl").exists() and (seed / "paper" / "log.jsonl").exists()
    metrics = json.loads((seed / "final" / "eval" / "metrics.json").read_text())
    assert metrics["label"] == "final" and metrics["training"]["max_epochs"] == 1
    text = (tmp_path / "s" / "study.md").read_text()
    assert "* separate: uncertainty_heads=separate, segmentation=final" in text
    assert "Subject of the paired differences: separate." in text
    # per-head Dice and every image-level score are in the per-case table
    header = (seed / "edue" / "eval" / "per_case.csv").read_text().splitlines()[0]
    assert "member_soft_dice_0/disc" in header and "sv_combined/cup" in header
