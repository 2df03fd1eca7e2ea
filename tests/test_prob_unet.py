"""The Probabilistic U-Net: its KL, its combination layers, its rater-sampled loss, its
seeded prior samples, and a tiny run that trains, loads, predicts and resumes bitwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edue.config import load_config
from edue.engine.checkpoint import load_checkpoint
from edue.engine.training.callbacks import TrainingCallback
from edue.methods import prob_unet
from edue.methods.prob_unet import Combination, ProbUNet, kl_diagonal_gaussians
from edue.methods.registry import BuildRequest, get_method, method_specs
from edue.nets.unet import UNet
from tests.conftest import TINY_OVERRIDES


def _method(spatial_dims: int = 2, samples: int = 4, **kwargs) -> ProbUNet:
    torch.manual_seed(0)
    backbone = UNet(spatial_dims, 3, 0, (4, 8, 16))
    return ProbUNet(backbone, 3, 2, (4, 8), samples=samples, **kwargs)


def _image(spatial_dims: int = 2, batch: int = 2, size: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, *([size] * spatial_dims), generator=gen)


# ------------------------------------------------------------------------------ the KL
def test_kl_is_zero_for_equal_gaussians_and_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    mu, log_sigma = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    assert torch.allclose(kl_diagonal_gaussians(mu, log_sigma, mu, log_sigma), torch.zeros(3))
    other = kl_diagonal_gaussians(mu + 0.1, log_sigma, mu, log_sigma - 0.2)
    assert other.shape == (3,) and (other > 0).all()
    q = torch.distributions.Normal(mu + 0.1, log_sigma.exp())
    p = torch.distributions.Normal(mu, (log_sigma - 0.2).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(other, expected, atol=1e-5)


def test_kl_matches_the_closed_form_by_hand():
    # axis 1: Q = N(1, 0.5²), P = N(0, 1): log 2 + (0.25 + 1) / 2 − 1/2
    # axis 2: Q = N(0, 2²),   P = N(1, 1): −log 2 + (4 + 1) / 2 − 1/2
    mu_q, sigma_q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 2.0]])
    mu_p, sigma_p = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    kl = kl_diagonal_gaussians(mu_q, sigma_q.log(), mu_p, sigma_p.log())
    assert kl.item() == pytest.approx((math.log(2) + 0.125) + (-math.log(2) + 2.0), abs=1e-6)


# ---------------------------------------------------------------------- combination
def test_combination_equals_convolutions_of_the_tiled_concatenation():
    torch.manual_seed(0)
    comb = Combination(2, feature_channels=5, latent_dim=3, out_channels=2, layers=3)
    gen = torch.Generator().manual_seed(1)
    features, z = torch.randn(2, 5, 6, 7, generator=gen), torch.randn(4, 2, 3, generator=gen)
    expected = []
    for sample in z:
        h = torch.cat([features, sample[:, :, None, None].expand(-1, -1, 6, 7)], dim=1)
        for i, layer in enumerate(comb.layers):
            h = F.conv2d(h, layer.weight, layer.bias)
            h = F.relu(h) if i < len(comb.layers) - 1 else h
        expected.append(h)
    assert len(comb.layers) == 3
    assert torch.allclose(comb(features, z), torch.stack(expected), atol=1e-5)


# --------------------------------------------------------------------------- the loss
def _batch(image: torch.Tensor, raters: torch.Tensor, valid: list[bool]) -> dict:
    """A batch of one image whose raters' masks are ``raters [R, K, *sp]``."""
    return {
        "image": image,
        "masks": raters[None].float(),
        "rater_valid": torch.tensor([valid]),
    }


def test_log_sigma_is_bounded_so_the_kl_stays_finite():
    method = _method()
    with torch.no_grad():
        method.prior.project.bias.fill_(-1e4)  # an encoder driven far out
    _mu, log_sigma = method.prior(_image(batch=2))
    assert torch.all(log_sigma.abs() <= prob_unet.LOG_SIGMA_BOUND)
    kl = prob_unet.kl_diagonal_gaussians(
        torch.zeros_like(log_sigma), log_sigma.abs(), _mu, log_sigma
    )
    assert torch.isfinite(kl).all()
    # the bound keeps the gradient that pulls a runaway log σ back (straight through)
    raw = torch.tensor([-50.0, 0.5, 50.0], requires_grad=True)
    out = prob_unet.bounded(raw)
    assert out.tolist() == [-prob_unet.LOG_SIGMA_BOUND, 0.5, prob_unet.LOG_SIGMA_BOUND]
    out.sum().backward()
    assert raw.grad is not None and raw.grad.tolist() == [1.0, 1.0, 1.0]


def test_the_loss_reconstructs_one_valid_rater_drawn_by_the_generator(monkeypatch):
    monkeypatch.setattr(prob_unet, "LOG_SIGMA_BOUND", 100.0)  # room for log σ = −30
    method = _method().eval()
    with torch.no_grad():  # a posterior of (almost) no spread: the loss tells the rater
        project = method.posterior.project
        project.weight[method.latent_dim :] = 0.0
        project.bias[method.latent_dim :] = -30.0
    image = _image(batch=1)
    ones, zeros = torch.ones(2, 16, 16), torch.zeros(2, 16, 16)
    raters = torch.stack([ones, zeros, torch.full((2, 16, 16), 0.5)])  # the third: padding
    with torch.no_grad():
        alone = [
            method.loss(torch.empty(0), _batch(image, raters, only))[0].item()
            for only in ([True, False, False], [False, True, False])
        ]
        assert alone[0] != pytest.approx(alone[1], rel=1e-3)
        drawn = []
        for seed in range(12):
            gen = torch.Generator().manual_seed(seed)
            value = method.loss(torch.empty(0), _batch(image, raters, [True, True, False]), gen)
            drawn.append(value[0].item())
    which = [0 if v == pytest.approx(alone[0], rel=1e-5) else 1 for v in drawn]
    assert all(v == pytest.approx(alone[w], rel=1e-5) for v, w in zip(drawn, which, strict=True))
    assert set(which) == {0, 1}  # the seed changes the rater; padding is never drawn


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_loss_is_rec_plus_scaled_kl_and_reaches_every_weight(spatial_dims):
    method = _method(spatial_dims, kl_weight=2.0)
    image = _image(spatial_dims, size=16 if spatial_dims == 2 else 8)
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 3, 2, *image.shape[2:], generator=gen) > 0.5).float()
    batch = {"image": image, "masks": masks, "rater_valid": torch.ones(2, 3, dtype=torch.bool)}
    logits = method(image)
    assert logits.shape == (1, 2, 2, *image.shape[2:])
    loss, parts = method.loss(logits, batch, gen)
    assert set(parts) == {"rec", "kl"} and parts["kl"] > 0
    elements = 2 * math.prod(image.shape[2:])  # K · P
    assert loss.item() == pytest.approx(parts["rec"] + 2.0 * parts["kl"] / elements, rel=1e-5)
    assert method._kept is None  # the graph does not outlive the step
    loss.backward()
    params = list(method.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert all(p.grad.abs().sum() > 0 for p in method.posterior.parameters())  # type: ignore[union-attr]


# --------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_members_are_seeded_prior_samples(spatial_dims):
    method = _method(spatial_dims, samples=5).eval()
    image = _image(spatial_dims, size=16 if spatial_dims == 2 else 8)
    assert method.n_members == 5
    state = torch.get_rng_state()
    members = method.predict_members(image)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert members.shape == (5, 2, 2, *image.shape[2:])
    assert members.min() >= 0 and members.max() <= 1
    assert torch.equal(members, method.predict_members(image))  # reproducible
    assert (members - members[:1]).abs().flatten(1).amax(1)[1:].min() > 0  # all differ
    # an image's members do not depend on the batch it is in
    assert torch.allclose(method.predict_members(image[1:]), members[:, 1:], atol=1e-6)


def test_members_after_forward_reuse_the_forward():
    method = _method().eval()
    image = _image()
    with torch.no_grad():
        logits = method(image)
        assert logits.shape == (1, 2, 2, 16, 16)
        members = method.members_after_forward(image, logits)
    assert method._kept is None
    assert torch.allclose(members, method.predict_members(image), atol=1e-6)


def test_registered_builder_and_its_errors():
    config = load_config(
        None, ["method.name=prob_unet", "model.channels=[4, 8]", "method.samples=3"]
    )
    spec = get_method("prob_unet")
    method = spec.build(BuildRequest(config, 3, 2, 2))
    assert isinstance(method, ProbUNet) and method.n_members == spec.members(config) == 3
    assert spec.passes(config) == 1
    others = [s.order for s in method_specs() if s.name != "prob_unet"]
    assert spec.order > max(others)  # listed after the other methods
    with pytest.raises(ValueError, match="fcomb_layers must be at least 1") as error:
        _method(fcomb_layers=0)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- end to end
EXTRA = [
    "method.name=prob_unet",
    "method.samples=3",
    "data.split={train: 8, val: 2, test: 2}",
    "train.checkpoint_every=1",
    "train.deterministic=true",
]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    from edue.cli import main

    out = tmp_path_factory.mktemp("prob_unet_run")
    assert main(["train", *TINY_OVERRIDES, *EXTRA, "--out", str(out)]) == 0
    return out


def test_a_tiny_run_trains_loads_and_predicts(reference_run):
    import edue

    predictor = edue.load(str(reference_run))
    assert predictor.method.name == "prob_unet"
    prediction = predictor.predict(_image(batch=1, size=32)[0])
    assert prediction.n_members == 3
    assert prediction.members.shape == (3, 2, 32, 32)
    assert torch.isfinite(prediction.members).all()
    again = predictor.predict(_image(batch=1, size=32)[0])
    assert torch.equal(prediction.members, again.members)


def test_resume_after_an_interruption_is_bitwise(reference_run, tmp_path):
    from edue.engine.training.trainer import train

    def config(out):
        return load_config(None, [*TINY_OVERRIDES, *EXTRA, f"out_dir={out}"])

    class StopBeforeThirdStep(TrainingCallback):  # the first step of epoch 2
        def on_step_start(self, trainer, batch):
            if trainer.global_step == 2:
                raise _Stop

    with pytest.raises(_Stop):
        train(config(tmp_path / "cut"), callbacks=[StopBeforeThirdStep()])
    resumed = train(config(tmp_path / "cut"), tmp_path / "cut")
    a = load_checkpoint(reference_run / "last.pt")["model"]
    b = load_checkpoint(resumed / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_validation_follows_the_prior_that_prediction_samples():
    method = _method().eval()
    image = _image(batch=1)
    raters = torch.stack([torch.ones(2, 16, 16), torch.zeros(2, 16, 16)])
    batch = _batch(image, raters, [True, False])
    with torch.no_grad():
        logits = method(image)  # the prior's mean latent
        value, parts = method.validation_loss(logits, batch, torch.Generator().manual_seed(0))
        expected = F.binary_cross_entropy_with_logits(logits[0], raters[0][None])
        elbo, _ = method.loss(method(image), batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(value, expected)
    assert set(parts) == {"rec"}
    assert float(elbo) != pytest.approx(float(value))  # not the posterior's ELBO
