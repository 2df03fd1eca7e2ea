"""Stochastic Segmentation Networks: the low-rank sampling, the Monte-Carlo loss, the
members at prediction, and a training run that loads, predicts and resumes bitwise."""

import json
import math
import warnings

import pytest
import torch

import edue
from edue.cli import main
from edue.config import load_config
from edue.data.case import random_rater
from edue.engine.checkpoint import load_checkpoint
from edue.engine.training.callbacks import TrainingCallback
from edue.engine.training.trainer import train
from edue.methods import BuildRequest, ssn
from tests.conftest import TINY_OVERRIDES


def _packed(mean, log_diag, factor):
    """Packed parameters ``[2 + R, B, K, *sp]`` from their parts."""
    return torch.cat([mean[None], log_diag[None], factor])


# ----------------------------------------------------------------------------- sampling
def test_low_rank_samples_have_the_given_covariance():
    g = torch.Generator().manual_seed(0)
    b, k, n, rank = 1, 2, 3, 2  # 6 logits
    mean = torch.randn(b, k, n, generator=g, dtype=torch.float64)
    log_diag = torch.randn(b, k, n, generator=g, dtype=torch.float64) - 1.0
    factor = torch.randn(rank, b, k, n, generator=g, dtype=torch.float64)
    params = _packed(mean, log_diag, factor)
    dist = ssn.unpack(params)
    w = factor.reshape(rank, -1).T  # [6, R]
    expected = w @ w.T + torch.diag(dist.diagonal.reshape(-1))
    # the torch.distributions object reads the packed layout the same way
    reference = ssn.distribution(params)
    assert isinstance(reference, torch.distributions.LowRankMultivariateNormal)
    torch.testing.assert_close(reference.covariance_matrix[0], expected)

    samples = ssn.sample_logits(dist, 20000, torch.Generator().manual_seed(1))
    assert samples.shape == (20000, b, k, n)
    flat = samples.reshape(20000, -1)
    empirical = torch.cov(flat.T)
    scale = float(expected.diagonal().max())
    assert (empirical - expected).abs().max() < 0.04 * scale
    assert (flat.mean(0) - mean.reshape(-1)).abs().max() < 0.04 * math.sqrt(scale)
    torch.testing.assert_close(dist.variance.reshape(-1), expected.diagonal())


def test_antithetic_pairs_are_symmetric_about_the_mean():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(2 + 3, 2, 2, 4, 4, generator=g)
    dist = ssn.unpack(params)
    samples = ssn.sample_logits(dist, 6, torch.Generator().manual_seed(1), antithetic=True)
    assert samples.shape == (6, 2, 2, 4, 4)
    torch.testing.assert_close(samples[:3] + samples[3:], 2 * dist.mean.expand(3, -1, -1, -1, -1))
    assert not torch.allclose(samples[0], samples[1])
    with pytest.raises(ValueError, match="even"):
        ssn.sample_logits(dist, 5, antithetic=True)


# ----------------------------------------------------------------------------- the loss
def _fit_contradicting_raters(rank: int, likelihood: str = "mc") -> float:
    """Fit a free distribution over 21 logits to two raters who agree on the first
    third (foreground) and the last (background) and contradict each other on the
    middle third; the loss of the fit (many samples, fixed seed)."""
    n = 21
    rater_a = torch.zeros(n)
    rater_a[: 2 * n // 3] = 1
    rater_b = torch.zeros(n)
    rater_b[: n // 3] = 1
    # two images of the same distribution, each with one of the raters: the draw of
    # the rater is then certain and the loss covers both raters
    batch = {
        "masks": torch.stack([rater_a, rater_b]).reshape(2, 1, 1, 1, n),
        "rater_valid": torch.ones(2, 1, dtype=torch.bool),
    }
    g = torch.Generator().manual_seed(0)
    params = torch.nn.Parameter(
        torch.cat([torch.zeros(1, n), -torch.ones(1, n), 0.1 * torch.randn(rank, n, generator=g)])
    )
    optimizer = torch.optim.Adam([params], lr=0.1)
    draws = torch.Generator().manual_seed(1)
    for _ in range(300):
        packed = params.reshape(2 + rank, 1, 1, 1, n).expand(-1, 2, -1, -1, -1)
        loss, _ = ssn.ssn_loss(packed, batch, 20, draws, likelihood=likelihood)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        packed = params.reshape(2 + rank, 1, 1, 1, n).expand(-1, 2, -1, -1, -1)
        final, parts = ssn.ssn_loss(
            packed, batch, 2000, torch.Generator().manual_seed(2), likelihood="mc"
        )
    assert set(parts) == {"nll", "logit_var"}
    return float(final)


def test_a_low_rank_factor_fits_contradicting_raters_better_than_the_diagonal():
    # trained and scored with the original estimator (the likelihood, 2000 samples)
    diagonal, low_rank = _fit_contradicting_raters(0), _fit_contradicting_raters(1)
    # independent pixels can at best say 1/2 on each of the 7 disputed pixels
    # (7 log 2 / 21 ≈ 0.23 per logit); one factor flips them together (≈ log 2 / 21)
    assert diagonal > 0.18
    assert low_rank < 0.08
    assert low_rank < diagonal - 0.1
    # the paired estimator cannot use the flip: a pair holds both raters, and it must
    # explain one of them; trained with it, the factor gains (almost) nothing
    paired = _fit_contradicting_raters(1, likelihood="paired")
    assert paired > diagonal - 0.05


def test_the_paired_likelihood_scores_each_antithetic_pair_as_one():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 1, 4, 4, generator=g)
    params = _packed(mean, torch.zeros_like(mean), 0.5 * torch.randn(1, 2, 1, 4, 4, generator=g))
    masks = (torch.rand(2, 1, 1, 4, 4, generator=g) > 0.5).float()
    batch = {"masks": masks, "rater_valid": torch.ones(2, 1, dtype=torch.bool)}
    # the same draws as the loss: the rater, then the samples
    draws = torch.Generator().manual_seed(3)
    random_rater(masks, batch["rater_valid"], draws)
    logits = ssn.sample_logits(ssn.unpack(params), 6, draws, antithetic=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, masks[:, 0].expand_as(logits), reduction="none"
    )
    ell = -bce.flatten(2).sum(-1)  # [6, B]
    pairs = (ell[:3] + ell[3:]) / 2
    expected = ((math.log(3) - torch.logsumexp(pairs, 0)) / 16).mean()
    loss, _ = ssn.ssn_loss(params, batch, 6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, expected)
    original = ((math.log(6) - torch.logsumexp(ell, 0)) / 16).mean()
    loss, _ = ssn.ssn_loss(params, batch, 6, torch.Generator().manual_seed(3), likelihood="mc")
    torch.testing.assert_close(loss, original)
    assert float(expected) >= float(original)  # Jensen: a lower bound of the likelihood
    with pytest.raises(ValueError, match="likelihood"):
        ssn.ssn_loss(params, batch, 6, likelihood="exact")


def test_the_loss_is_the_bce_of_the_mean_without_variance():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 2, 8, 8, generator=g)
    params = _packed(mean, torch.full_like(mean, -60.0), torch.zeros(1, 2, 2, 8, 8))
    masks = (torch.rand(2, 1, 2, 8, 8, generator=g) > 0.5).float()
    batch = {"masks": masks, "rater_valid": torch.ones(2, 1, dtype=torch.bool)}
    loss, _ = ssn.ssn_loss(params, batch, 4, torch.Generator().manual_seed(1), epsilon=1e-12)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(mean, masks[:, 0])
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_an_unusable_factor_falls_back_to_the_diagonal():
    mean = torch.zeros(1, 1, 4, 4)
    batch = {"masks": torch.ones(1, 1, 1, 4, 4), "rater_valid": torch.ones(1, 1, dtype=torch.bool)}
    broken = _packed(mean, mean, torch.full((2, 1, 1, 4, 4), float("inf")))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        loss, _ = ssn.ssn_loss(broken, batch, 4, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    huge = _packed(mean, mean - 20, torch.full((2, 1, 1, 4, 4), 1e30))
    with pytest.warns(RuntimeWarning, match="cannot be factorised"):
        dist = ssn.distribution(huge)
    assert isinstance(dist, torch.distributions.Independent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diagonal = ssn.distribution(_packed(mean, mean, torch.zeros(0, 1, 1, 4, 4)))
    assert isinstance(diagonal, torch.distributions.Independent)


# ----------------------------------------------------------------------------- prediction
def _method(dims: int, rank: int = 3, samples: int = 5):
    config = load_config(
        None,
        [
            "method.name=ssn",
            "model.channels=[4, 8, 16]",
            f"method.samples={samples}",
            f"method.ssn_rank={rank}",
            "method.ssn_samples=4",
        ],
    )
    torch.manual_seed(0)
    return ssn.SPEC.build(BuildRequest(config, 3, 2, dims, for_training=False))


@pytest.mark.parametrize("dims, size, rank", [(2, 32, 3), (2, 32, 0), (3, 16, 2)])
def test_predicted_members(dims, size, rank):
    method = _method(dims, rank).eval()
    assert method.n_members == 5 == ssn.SPEC.members(load_config(None, ["method.samples=5"]))
    x = torch.rand(2, 3, *([size] * dims), generator=torch.Generator().manual_seed(1))
    params = method(x)
    assert params.shape == (2 + rank, 2, 2, *([size] * dims))
    state = torch.random.get_rng_state()
    members = method.predict_members(x)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    assert members.shape == (5, 2, 2, *([size] * dims))
    assert members.min() >= 0 and members.max() <= 1
    assert torch.equal(method.predict_members(x), members)  # reproducible
    assert torch.equal(method.members_after_forward(x, params), members)  # no second pass
    assert members.std(0).mean() > 1e-3  # the samples differ
    # an image's members do not depend on the batch it is predicted in
    torch.testing.assert_close(method.predict_members(x[1:]), members[:, 1:])
    variance = method.logit_variance(x)
    assert variance.shape == (2, 2, *([size] * dims))
    assert (variance >= ssn.EPSILON).all()


def test_training_forward_and_loss_backpropagate():
    method = _method(2).train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    masks = (torch.rand(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    batch = {"masks": masks, "rater_valid": torch.tensor([[True, True, False], [True] * 3])}
    loss, parts = method.loss(method(x).float(), batch, torch.Generator().manual_seed(3))
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"nll", "logit_var"}
    heads = method.network
    for head in (heads.mean_head, heads.log_diag_head, heads.factor_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_invalid_arguments_are_refused():
    backbone = _method(2).network.backbone
    with pytest.raises(ValueError, match="even"):
        ssn.SSN(backbone, 2, train_samples=3)
    with pytest.raises(ValueError, match="rank"):
        ssn.SSN(backbone, 2, rank=-1)


# ----------------------------------------------------------------------------- end to end
RUN = [
    *TINY_OVERRIDES,
    "method.name=ssn",
    "method.samples=3",
    "method.ssn_rank=2",
    "method.ssn_samples=4",
    "data.split={train: 8, val: 4, test: 4}",
    "train.checkpoint_every=1",
]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def ssn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssn") / "run"
    assert main(["train", *RUN, "--out", str(out)]) == 0
    return out


def test_a_trained_run_loads_and_predicts(ssn_run):
    lines = [json.loads(x) for x in (ssn_run / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and {"train/nll", "train/logit_var", "val/loss"} <= set(lines[-1])
    predictor = edue.load(str(ssn_run))
    image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    prediction = predictor.predict(image)
    assert prediction.n_members == 3
    assert prediction.members.shape == (3, 2, 40, 40)
    assert torch.isfinite(prediction.members).all()
    again = predictor.predict(image)
    assert torch.equal(again.members, prediction.members)


def test_evaluation_adds_the_ged_of_many_samples(ssn_run):
    from edue.data.synthetic import FundusConfig, generate_case
    from edue.engine.evaluation.evaluate import many_sample_ged
    from edue.metrics.ged import ged_lidc

    predictor = edue.load(str(ssn_run))
    cases = [generate_case(i, seed=5, config=FundusConfig(size=32)) for i in range(2)]
    figures = many_sample_ged(predictor, cases, samples=8)
    assert set(figures) == {f"ged_many/{s}/{q}" for s in ("disc", "cup") for q in ("mean", "std")}
    assert predictor.method.samples == 3  # restored
    # the value is the GED of the first 8 draws of the usual seeded sampler
    predictor.method.samples = 8
    try:
        by_hand = [
            ged_lidc(predictor.predict(c.image).members, torch.from_numpy(c.masks).float())
            for c in cases
        ]
    finally:
        predictor.method.samples = 3
    expected = torch.stack(by_hand).mean(0)
    assert figures["ged_many/disc/mean"] == pytest.approx(float(expected[0]), abs=1e-6)
    assert figures["ged_many/cup/mean"] == pytest.approx(float(expected[1]), abs=1e-6)


def test_resume_after_an_interruption_is_bitwise(ssn_run, tmp_path):
    class StopBeforeFourthStep(TrainingCallback):  # mid-epoch 2 (two steps an epoch)
        def on_step_start(self, trainer, batch):
            if trainer.global_step == 3:
                raise _Stop

    cut = tmp_path / "cut"
    config = load_config(None, [*RUN, f"out_dir={cut}"])
    with pytest.raises(_Stop):
        train(config, callbacks=[StopBeforeFourthStep()])
    cut_state = load_checkpoint(cut / "last.pt")
    assert (cut_state["epoch"], cut_state["step_in_epoch"]) == (1, 1)
    resumed = train(load_config(None, [*RUN, f"out_dir={cut}"]), cut)
    a = load_checkpoint(ssn_run / "last.pt")["model"]
    b = load_checkpoint(resumed / "last.pt")["model"]
    assert a.keys() == b.keys() and any(k.startswith("network.factor_head") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_prediction_samples_in_place_equal_the_differentiable_ones():
    params = torch.randn(2 + 3, 2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    dist = ssn.unpack(params)
    for shared in (True, False):
        with torch.no_grad():  # the in-place path used at prediction
            fast = ssn.sample_logits(dist, 5, torch.Generator().manual_seed(1), shared=shared)
        with torch.enable_grad():
            slow = ssn.sample_logits(dist, 5, torch.Generator().manual_seed(1), shared=shared)
        assert torch.equal(fast, slow)
