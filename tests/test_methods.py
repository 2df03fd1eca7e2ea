import pytest
import torch

from edue.config import load_config
from edue.methods import EDUE, LayerEnsembles, MCDropout, build_method
from edue.nets.heads import MultiHeadNet
from edue.nets.unet import UNet

METHODS = ["edue", "layer_ensembles", "mc_dropout", "plain", "deep_ensemble"]


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_unet_shapes_2d_3d(spatial_dims, size):
    torch.manual_seed(0)
    net = UNet(spatial_dims, in_channels=2, out_channels=3, channels=(4, 8, 16))
    x = torch.zeros(2, 2, *([size] * spatial_dims))
    assert net(x).shape == (2, 3, *([size] * spatial_dims))
    assert net.block_names == ["encoder.0", "encoder.1", "encoder.2", "decoder.0", "decoder.1"]


def test_unet_odd_sizes_are_padded():
    torch.manual_seed(0)
    net = UNet(2, 1, 1, (4, 8, 16))
    assert net(torch.zeros(1, 1, 30, 22)).shape == (1, 1, 30, 22)


def test_heads_attach_to_any_named_block():
    torch.manual_seed(0)
    backbone = UNet(2, 3, 0, (4, 8, 16))
    net = MultiHeadNet(backbone, ["encoder.1", "decoder.1"], 2, 2, 3)
    out = net(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert out.shape == (2, 2, 2, 32, 32)  # [S, B, K, H, W], all at full resolution
    with pytest.raises(ValueError, match="no blocks named"):
        MultiHeadNet(backbone, ["nope"], 2, 2, 3)


def test_heads_work_on_a_foreign_backbone():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1),
    )
    net = MultiHeadNet(backbone, ["0", "2"], 1, 2, 1)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert net(x).shape == (2, 1, 1, 16, 16)


# per method: the loss parts it reports and the members it predicts with the overrides below
# (channels [4, 8, 16]: 2 decoder blocks, 5 blocks in all)
EXPECTED = {
    # the default: segmentation heads (deep supervision) and separate uncertainty heads
    "edue": ({"seg_bce_final", "seg_bce_aux", "unc_bce_final", "unc_bce_aux", "unc_guidance"}, 2),
    "layer_ensembles": ({"bce_heads_mean"}, 4),  # 5 heads, the first skipped
    "mc_dropout": ({"bce"}, 3),
    "plain": ({"bce"}, 1),
    "deep_ensemble": ({"bce"}, 2),  # trains one plain member, predicts with 2
}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_predicts_members(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    cfg = load_config(
        None,
        [
            f"method.name={name}",
            "model.channels=[4, 8, 16]",
            "method.skip_first=1",
            "method.mc_samples=3",
            "method.ensemble_size=2",
        ],
    )
    method = build_method(cfg, 3, 2, 2, for_training=True)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    logits = method(x)
    batch = {
        "soft_vote": torch.rand(2, 2, 32, 32, generator=gen),
        "expert_variance": torch.rand(2, 2, 32, 32, generator=gen),
        "masks": (torch.rand(2, 3, 2, 32, 32, generator=gen) > 0.5).float(),
        "rater_valid": torch.ones(2, 3, dtype=torch.bool),
    }
    loss, parts = method.loss(logits, batch, torch.Generator().manual_seed(0))
    loss.backward()
    part_names, n_members = EXPECTED[name]
    assert torch.isfinite(loss) and set(parts) == part_names
    m = cfg.method
    recombined = {
        "edue": lambda: (
            parts["seg_bce_final"]
            + m.aux_weight * parts["seg_bce_aux"]
            + parts["unc_bce_final"]
            + m.aux_weight * parts["unc_bce_aux"]
            + m.guidance_weight * parts["unc_guidance"]
        ),
        "layer_ensembles": lambda: logits.shape[0] * parts["bce_heads_mean"],
    }.get(name, lambda: parts["bce"])()
    assert loss.item() == pytest.approx(recombined, rel=1e-5)
    # every trainable weight is reached by the loss
    params = [p for p in method.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    predictor = build_method(cfg, 3, 2, 2, for_training=False).eval()
    assert predictor.n_members == n_members
    stack = predictor.predict_members(x)
    assert stack.shape == (predictor.stack_size, 2, 2, 32, 32)
    members, _ = predictor.split_stack(stack)
    assert members.shape == (n_members, 2, 2, 32, 32)
    assert stack.min() >= 0 and stack.max() <= 1


def test_edue_has_one_head_per_decoder_block():
    torch.manual_seed(0)
    method = EDUE(UNet(2, 3, 0, (4, 8, 16, 32)), 2)
    assert method.n_members == 3
    assert method.network.block_names == ["decoder.0", "decoder.1", "decoder.2"]


def test_layer_ensembles_skips_first_heads():
    torch.manual_seed(0)
    method = LayerEnsembles(UNet(2, 3, 0, (4, 8, 16)), 2, skip_first=2).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert method.predict_all_heads(x).shape[0] == 5
    assert torch.allclose(method.predict_members(x), method.predict_all_heads(x)[2:])


def test_mc_dropout_keeps_batchnorm_in_eval_and_is_reproducible():
    torch.manual_seed(0)
    method = MCDropout(UNet(2, 3, 2, (4, 8, 16), dropout=0.5), samples=4).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = method.predict_members(x), method.predict_members(x)
    assert torch.equal(a, b)  # seeded dropout masks
    assert a.var(0).max() > 0  # samples differ
    norms = [m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    assert all(not m.training for m in method.modules())  # dropout restored to eval
