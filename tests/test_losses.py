import math

import pytest
import torch
import torch.nn.functional as F

from edue.losses import edue_loss, guidance_rmse, head_variance, summed_heads_bce


def _batch(soft, expert_var, masks, valid):
    return {"soft_vote": soft, "expert_variance": expert_var, "masks": masks, "rater_valid": valid}


def test_head_variance_hand_computed():
    # two heads with probabilities 0.5 and sigmoid(ln 3) = 0.75 → unbiased variance 0.03125
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(2, 1, 1, 1)
    assert abs(head_variance(logits).item() - 0.03125) < 1e-7


def test_guidance_rmse_hand_computed():
    a = torch.tensor([0.0, 0.1, 0.2, 0.3])
    b = torch.tensor([0.1, 0.1, 0.0, 0.3])
    expected = math.sqrt((0.01 + 0 + 0.04 + 0) / 4)
    assert abs(guidance_rmse(a, b).item() - expected) < 1e-6


def test_edue_loss_matches_formula_without_sampling():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 1, 4, 4)
    soft = torch.rand(2, 1, 4, 4)
    ev = torch.rand(2, 1, 4, 4) * 0.25
    masks = (torch.rand(2, 3, 1, 4, 4) > 0.5).float()
    valid = torch.ones(2, 3, dtype=torch.bool)
    total, parts = edue_loss(
        logits,
        _batch(soft, ev, masks, valid),
        aux_weight=0.3,
        label_sampling=False,
        guidance=True,
        guidance_weight=5.0,
    )
    bce = [F.binary_cross_entropy_with_logits(h, soft) for h in logits]
    var = torch.sigmoid(logits).var(0, unbiased=True)
    rmse = torch.sqrt(((var - ev) ** 2).mean())
    expected = bce[2] + 0.3 * (bce[0] + bce[1]) + 5.0 * rmse
    assert abs(total.item() - expected.item()) < 1e-5
    assert abs(parts["guidance"] - rmse.item()) < 1e-5


def test_guidance_switch_removes_term():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 1, 4, 4, generator=g)
    expert_var = torch.rand(1, 1, 4, 4, generator=g) * 0.25
    batch = _batch(
        torch.rand(1, 1, 4, 4, generator=g),
        expert_var,
        torch.ones(1, 2, 1, 4, 4),
        torch.ones(1, 2, dtype=torch.bool),
    )
    weight = 2.5
    with_g, parts_g = edue_loss(
        logits, batch, label_sampling=False, guidance=True, guidance_weight=weight
    )
    without, parts = edue_loss(
        logits, batch, label_sampling=False, guidance=False, guidance_weight=weight
    )
    assert "guidance" not in parts
    assert set(parts_g) == {"bce_final", "bce_aux", "guidance"}
    # by hand: unbiased variance across the 3 heads, then the RMSE against the experts
    p = torch.sigmoid(logits.double())
    head_var = ((p - p.mean(0)) ** 2).sum(0) / (p.shape[0] - 1)
    rmse = math.sqrt(((head_var - expert_var.double()) ** 2).mean().item())
    assert rmse > 0.05  # the term is not negligible: dropping it must show
    assert with_g.item() - without.item() == pytest.approx(weight * rmse, abs=1e-5)
    assert parts_g["guidance"] == pytest.approx(rmse, abs=1e-6)
    # without guidance the loss is exactly the BCE terms
    assert without.item() == pytest.approx(parts["bce_final"] + 0.3 * parts["bce_aux"], abs=1e-6)
    assert parts["bce_final"] == parts_g["bce_final"] and parts["bce_aux"] == parts_g["bce_aux"]


def test_label_sampling_draws_different_raters_across_iterations():
    # rater r's mask is constant r-valued → the aux BCE reveals which rater was drawn
    masks = torch.stack([torch.full((1, 1, 1), float(r > 0)) for r in range(2)])[None]
    masks = masks.repeat(1, 1, 1, 1, 1)  # [B=1, R=2, K=1, 1, 1]
    logits = torch.zeros(2, 1, 1, 1, 1)
    logits[0] = 3.0  # aux head: predicts 1 → low BCE against rater 1, high against rater 0
    batch = _batch(
        torch.full((1, 1, 1, 1), 0.5),
        torch.zeros(1, 1, 1, 1),
        masks,
        torch.ones(1, 2, dtype=torch.bool),
    )
    g = torch.Generator().manual_seed(0)
    values = {
        round(edue_loss(logits, batch, generator=g, guidance=False)[1]["bce_aux"], 4)
        for _ in range(30)
    }
    # both raters were drawn, and the aux BCE is exactly that of one rater's mask
    expected = {
        round(
            F.binary_cross_entropy_with_logits(logits[0], torch.full_like(logits[0], t)).item(), 4
        )
        for t in (0.0, 1.0)
    }
    assert values == expected


def test_gradient_finite_when_variances_match():
    logits = torch.zeros(3, 1, 1, 2, 2, requires_grad=True)
    batch = _batch(
        torch.full((1, 1, 2, 2), 0.5),
        torch.zeros(1, 1, 2, 2),
        torch.ones(1, 2, 1, 2, 2),
        torch.ones(1, 2, dtype=torch.bool),
    )
    total, _ = edue_loss(logits, batch, label_sampling=False)
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_layer_ensembles_loss_sums_heads():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 1, 1, 3, 3, generator=g)
    soft = torch.rand(1, 1, 3, 3, generator=g)
    total, _ = summed_heads_bce(logits, {"soft_vote": soft})
    expected = sum(F.binary_cross_entropy_with_logits(h, soft) for h in logits)
    assert abs(total.item() - expected.item()) < 1e-5
