"""EDUE's read-outs and head layouts: where the segmentation comes from, separate
uncertainty heads whose gradient is stopped or scaled at the shared network, and the
image-level scores."""

import pytest
import torch

from edue.config import load_config
from edue.engine.inference.predictor import Predictor
from edue.methods import build_method
from edue.nets.heads import scale_gradient
from edue.prediction import Prediction

BASE = ["model.channels=[4, 8, 16]", "model.norm=instance"]


def _method(*overrides: str, training: bool = True):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_method(load_config(None, [*BASE, *overrides]), 3, 2, 2, for_training=training)


def _batch(seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    masks = (torch.rand(2, 4, 2, 32, 32, generator=gen) > 0.5).float()
    batch = {
        "soft_vote": masks.mean(1),
        "expert_variance": masks.var(1),
        "masks": masks,
        "rater_valid": torch.ones(2, 4, dtype=torch.bool),
    }
    return x, batch


def _predictions(method, x):  # type: ignore[no-untyped-def]
    stack = method.eval().predict_members(x)
    assert stack.shape[0] == method.stack_size
    out = []
    for i in range(x.shape[0]):
        members, segmentation = method.split_stack(stack[:, i])
        out.append(Prediction(members, segmentation=segmentation, score=method.score))
    return out


@pytest.mark.parametrize("heads", ["shared", "separate"])
def test_the_segmentation_source_changes_only_the_segmentation(heads):
    mean = _method(f"method.uncertainty_heads={heads}", "method.segmentation=mean")
    final = _method(f"method.uncertainty_heads={heads}", "method.segmentation=final")
    final.load_state_dict(mean.state_dict())  # the same weights, read two ways
    x, _ = _batch()
    logits = mean.eval()(x)
    for a, b in zip(_predictions(mean, x), _predictions(final, x), strict=True):
        assert torch.equal(a.members, b.members)
        assert torch.equal(a.variance, b.variance) and torch.equal(a.uncertainty, b.uncertainty)
        assert torch.equal(a.sv, b.sv)
        assert not torch.allclose(a.mean, b.mean)
    s = mean.n_members
    segmentation_heads = torch.sigmoid(logits[:s])  # shared: the heads; separate: the first set
    assert torch.allclose(_predictions(final, x)[0].mean, segmentation_heads[-1, 0])
    assert torch.allclose(_predictions(mean, x)[0].mean, segmentation_heads[:, 0].mean(0))
    weighted = _method(f"method.uncertainty_heads={heads}", "method.segmentation=weighted")
    weighted.load_state_dict(mean.state_dict())
    w = torch.full((s,), 0.3)
    w[-1] = 1.0
    expected = torch.einsum("s,s...->...", w / w.sum(), segmentation_heads[:, 0])
    pred = _predictions(weighted, x)[0]
    assert torch.allclose(pred.mean, expected, atol=1e-6)
    assert torch.equal(pred.variance, _predictions(mean, x)[0].variance)


def _backbone_grads(method, x, batch):  # type: ignore[no-untyped-def]
    method.train()
    method.zero_grad()
    loss, _ = method.loss(method(x), batch, torch.Generator().manual_seed(0))
    loss.backward()
    return {
        name: p.grad.clone()
        for name, p in method.named_parameters()
        if name.startswith("network.backbone.")
    }


def test_stopped_uncertainty_heads_leave_the_trunk_trained_as_deep_supervision():
    separate = _method("method.uncertainty_heads=separate", "method.uncertainty_gradient=0")
    deep = _method("method.name=deep_supervision")
    # the backbone and the segmentation heads are created first: same weights, same seed
    shared = {k: v for k, v in separate.state_dict().items() if k in deep.state_dict()}
    assert set(shared) == set(deep.state_dict())
    for key, value in deep.state_dict().items():
        assert torch.equal(value, shared[key]), key
    x, batch = _batch()
    mine, reference = _backbone_grads(separate, x, batch), _backbone_grads(deep, x, batch)
    assert mine.keys() == reference.keys() and mine
    for name, grad in reference.items():
        torch.testing.assert_close(mine[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # the uncertainty heads do learn (from the EDUE loss)
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in separate.network.second_heads.parameters()
    )
    # a scaled gradient reaches the trunk: the trunk's gradients then differ
    scaled = _method("method.uncertainty_heads=separate", "method.uncertainty_gradient=0.5")
    scaled.load_state_dict(separate.state_dict())
    differs = _backbone_grads(scaled, x, batch)
    assert any(not torch.allclose(differs[n], g) for n, g in reference.items())


def test_scale_gradient_scales_only_the_backward():
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    for scale in (0.0, 0.25, 1.0):
        x.grad = None
        y = scale_gradient(x, scale)
        assert torch.equal(y, x)
        ((3 * y).sum() + x.sum()).backward()  # a second, unscaled path: gradient 1
        assert torch.allclose(x.grad, torch.full_like(x, 3 * scale + 1))


def test_separate_heads_report_both_losses_and_predict_their_members():
    method = _method("method.uncertainty_heads=separate")
    x, batch = _batch()
    logits = method(x)
    assert logits.shape[0] == 2 * method.n_members
    loss, parts = method.loss(logits, batch, torch.Generator().manual_seed(0))
    assert set(parts) == {
        "seg_bce_final",
        "seg_bce_aux",
        "unc_bce_final",
        "unc_bce_aux",
        "unc_guidance",
    }
    m = load_config(None, BASE).method
    recombined = (
        parts["seg_bce_final"]
        + m.aux_weight * parts["seg_bce_aux"]
        + parts["unc_bce_final"]
        + m.aux_weight * parts["unc_bce_aux"]
        + m.guidance_weight * parts["unc_guidance"]
    )
    assert loss.item() == pytest.approx(recombined, rel=1e-5)
    stack = method.eval().predict_members(x)
    assert stack.shape == (method.n_members + 1, 2, 2, 32, 32)
    members, segmentation = method.split_stack(stack)
    unc = torch.sigmoid(method(x)[method.n_members :])
    assert torch.allclose(members, unc)
    assert segmentation is not None and segmentation.shape == (2, 2, 32, 32)


@pytest.mark.parametrize("score", ["variance", "bernoulli", "combined"])
def test_image_level_scores(score):
    gen = torch.Generator().manual_seed(3)
    members = torch.rand(3, 2, 8, 8, generator=gen)
    pred = Prediction(members, score=score)
    variance = members.var(0, unbiased=True)
    bernoulli = members.mean(0) * (1 - members.mean(0))
    expected = {"variance": variance, "bernoulli": bernoulli, "combined": variance + bernoulli}
    torch.testing.assert_close(pred.uncertainty, expected[score])
    torch.testing.assert_close(pred.sv, expected[score].flatten(1).sum(1))
    v, b = pred.uncertainty_sums()
    torch.testing.assert_close(v, variance.flatten(1).sum(1))
    torch.testing.assert_close(b, bernoulli.flatten(1).sum(1))
    with pytest.raises(ValueError, match="score"):
        Prediction(members, score="entropy")
    with pytest.raises(ValueError, match="segmentation"):
        Prediction(members, segmentation=torch.zeros(2, 4, 4))


def test_the_predictor_reads_a_separate_head_checkpoint(tiny_run, tmp_path):
    from edue.config import config_from_dict
    from edue.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(tiny_run / "best.pt")
    state["config"]["method"].update(uncertainty_heads="separate", segmentation="final")
    info = state["data"]
    method = build_method(
        config_from_dict(state["config"]),
        int(info["in_channels"]),
        len(info["structures"]),
        int(info["spatial_dims"]),
    )
    state["model"] = method.state_dict()
    for key in ("weights_sha256", "format", "edue_version"):
        state.pop(key, None)
    predictor = Predictor.from_checkpoint(save_checkpoint(tmp_path / "separate.pt", state))
    image = torch.rand(int(info["in_channels"]), 32, 32, generator=torch.Generator().manual_seed(0))
    pred = predictor.predict(image.numpy())
    assert pred.n_members == method.n_members and pred.segmentation is not None
    assert pred.mean.shape == pred.variance.shape == (len(info["structures"]), 32, 32)
    method.eval()
    stack = method.predict_members(image[None])
    torch.testing.assert_close(pred.mean, stack[-1, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred.members, stack[:-1, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        (f"method.name={name}",)
        for name in (
            "edue",
            "deep_supervision",
            "deep_supervision_heads",
            "plain",
            "layer_ensembles",
            "mc_dropout",
            "deep_ensemble",
        )
    ]
    + [
        ("method.name=edue", "method.uncertainty_heads=separate", "method.segmentation=final"),
        ("method.name=edue", "method.uncertainty_heads=separate", "method.segmentation=mean"),
        ("method.name=edue", "method.segmentation=final"),
    ],
    ids=lambda o: ",".join(x.split("=")[1] for x in o),
)
def test_every_method_predicts_the_stack_it_declares(overrides):
    """The sliding window reshapes by ``stack_size``: it must be what is predicted."""
    method = _method(
        *overrides,
        "method.skip_first=1",
        "method.mc_samples=3",
        "method.ensemble_size=2",
        training=False,
    ).eval()
    x, _ = _batch()
    stack = method.predict_members(x)
    assert stack.shape[0] == method.stack_size
    members, segmentation = method.split_stack(stack)
    assert members.shape[0] == method.n_members
    assert (segmentation is None) == (method.stack_size == method.n_members) or (
        "method.segmentation=final" in overrides
    )
