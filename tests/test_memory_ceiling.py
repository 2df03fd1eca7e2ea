"""Prediction under a memory ceiling (``infer.max_memory_mb``): tiles equal to one pass."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from edue.config import load_config
from edue.engine.inference import memory, receptive_field, tiling
from edue.engine.inference.predictor import Predictor
from edue.errors import DataError
from edue.methods import build_method

INFO_2D = {"in_channels": 3, "structures": ["disc", "cup"], "spatial_dims": 2, "image_size": None}
SHAPE = (203, 157)  # not a multiple of the divisor (4) nor of any tile


def _overrides(method: list[str], dims: int = 2) -> list[str]:
    channels = "[4, 8, 16]" if dims == 2 else "[4, 8]"
    return [f"model.channels={channels}", "model.norm=batch", "method.skip_first=1", *method]


def _predictor(method: list[str], dims: int = 2, budget_mb: int | None = None) -> Predictor:
    """A trained-like predictor: seeded weights, batch norm in eval mode with running
    statistics away from their initial values."""
    extra = [] if budget_mb is None else [f"infer.max_memory_mb={budget_mb}"]
    config = load_config(None, [*_overrides(method, dims), *extra])
    torch.manual_seed(0)
    in_channels = 3 if dims == 2 else 2
    model = build_method(config, in_channels, 2, dims, for_training=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    info = dict(INFO_2D)
    if dims == 3:
        info.update(in_channels=2, spatial_dims=3)
    return Predictor(model, config, info, torch.device("cpu"))


def _with_budget(predictor: Predictor, method: list[str], budget_mb: int, dims: int = 2) -> None:
    """Give ``predictor`` another budget (its measured profile is kept)."""
    predictor.config = load_config(
        None, [*_overrides(method, dims), f"infer.max_memory_mb={budget_mb}"]
    )


def _tiling_budget(
    predictor: Predictor, method: list[str], batch_shape: tuple[int, ...], most: int = 40
) -> tiling.TilePlan:
    """Set the least budget whose plan has at most ``most`` tiles (and several)."""
    for mb in range(1, 4096):
        _with_budget(predictor, method, mb, len(batch_shape) - 2)
        try:
            plan = predictor.memory_plan(batch_shape)
        except DataError:
            continue
        assert plan is not None and len(plan) >= 2, f"no tiles between errors and one pass ({mb})"
        if len(plan) <= most:
            return plan
    raise AssertionError("no budget gives tiles")


def _image(shape: tuple[int, ...] = SHAPE, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((channels, *shape)).astype(np.float32)


METHODS = [
    ["method.name=edue"],
    ["method.name=plain"],
    ["method.name=edue", "method.uncertainty_heads=separate", "method.segmentation=final"],
    ["method.name=mc_dropout", "method.mc_samples=3"],
    ["method.name=deep_ensemble", "method.ensemble_size=2"],
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: "+".join(x.split("=")[1] for x in m))
def test_tiles_equal_the_whole_image_pass(method: list[str]) -> None:
    predictor = _predictor(method)
    # an ensemble's halo sums its members' (conservative): a larger image leaves room for tiles
    shape = (307, 263) if "deep_ensemble" in method[0] else SHAPE
    image = _image(shape)
    whole = predictor.predict(image)  # the default budget: one pass
    assert predictor.memory_plan((1, 3, *shape)) is None
    plan = _tiling_budget(predictor, method, (1, 3, *shape))
    assert plan.halo[0] >= 2 * predictor.size_divisor and plan.halo[0] % predictor.size_divisor == 0
    assert all(t % predictor.size_divisor == 0 for t in plan.tile)
    assert any(s % t for s, t in zip(shape, plan.tile, strict=True))
    tiled = predictor.predict(image)
    assert tiled.members.shape == whole.members.shape == (predictor.method.n_members, 2, *shape)
    torch.testing.assert_close(tiled.members, whole.members, atol=1e-5, rtol=0)
    if whole.segmentation is not None:
        assert tiled.segmentation is not None
        torch.testing.assert_close(tiled.segmentation, whole.segmentation, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled.mean, whole.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled.variance, whole.variance, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled.uncertainty, whole.uncertainty, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled.sv, whole.sv, atol=1e-3, rtol=1e-5)


def test_the_segmentation_map_rides_along_in_the_stack() -> None:
    method = METHODS[2]
    predictor = _predictor(method)
    assert predictor.method.stack_size == predictor.method.n_members + 1
    batch = torch.from_numpy(_image())[None]
    whole = predictor.members(batch)
    _tiling_budget(predictor, method, tuple(batch.shape))
    tiled = predictor.members(batch)
    assert tiled.shape == whole.shape == (predictor.method.stack_size, 1, 2, *SHAPE)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_the_tiled_path_runs_one_pass_per_tile_and_covers_the_image_once() -> None:
    method = ["method.name=edue"]
    predictor = _predictor(method)
    batch = torch.from_numpy(np.stack([_image(seed=0), _image(seed=1)]))
    whole = predictor.members(batch)
    plan = _tiling_budget(predictor, method, tuple(batch.shape))
    covered = torch.zeros(plan.padded, dtype=torch.int64)
    for tile in plan.tiles:
        (k0, k1), (l0, l1) = tile.keep
        covered[k0:k1, l0:l1] += 1
        for (w0, w1), (c0, c1), size in zip(tile.window, tile.keep, plan.padded, strict=True):
            assert w0 % predictor.size_divisor == 0 and w1 % predictor.size_divisor == 0
            assert w0 == max(0, c0 - plan.halo[0]) and w1 == min(size, c1 + plan.halo[0])
    assert bool((covered == 1).all())
    passes: list[tuple[int, ...]] = []
    handle = predictor.method.network.register_forward_hook(
        lambda _m, inputs, _o: passes.append(tuple(inputs[0].shape))
    )
    try:
        tiled = predictor.members(batch)
    finally:
        handle.remove()
    assert len(passes) == len(plan) >= 2
    assert all(p[0] == 2 and math.prod(p[2:]) < math.prod(plan.padded) for p in passes)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_the_gate_features_are_pooled_over_the_tiles() -> None:
    method = ["method.name=edue"]
    predictor = _predictor(method)
    names = predictor.feature_module_names()
    images = [_image(seed=0), _image(seed=1)]
    whole, features = predictor.predict_batch_with_features(images, tap=names)
    _tiling_budget(predictor, method, (2, 3, *SHAPE))
    tiled, tiled_features = predictor.predict_batch_with_features(images, tap=names)
    assert features is not None and tiled_features is not None
    assert tiled_features.shape == features.shape == (2, 4 + 8 + 16)
    torch.testing.assert_close(tiled_features, features, atol=1e-5, rtol=1e-5)
    for a, b in zip(whole, tiled, strict=True):
        torch.testing.assert_close(a.members, b.members, atol=1e-5, rtol=0)


def test_volumes_without_a_sliding_window_are_tiled_too() -> None:
    method = ["method.name=edue"]
    predictor = _predictor(method, dims=3)
    assert predictor.roi_size() is None
    volume = torch.from_numpy(_image((61, 50, 45), channels=2))[None]
    whole = predictor.members(volume)
    plan = _tiling_budget(predictor, method, tuple(volume.shape), most=30)
    assert len(plan.tile) == 3
    tiled = predictor.members(volume)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_a_member_stack_over_the_budget_is_one_line_of_data_error() -> None:
    predictor = _predictor(["method.name=edue"], budget_mb=1)
    with pytest.raises(DataError) as info:
        predictor.predict(_image((600, 500)))
    message = str(info.value)
    assert "\n" not in message
    assert "600×500" in message and "1 MB" in message and "infer.max_memory_mb=" in message
    wanted = int(message.split("infer.max_memory_mb=")[1].split(",")[0])
    _with_budget(predictor, ["method.name=edue"], wanted)
    predictor.memory_plan((1, 3, 600, 500))  # the suggested value is enough for the stack


def test_no_room_for_even_the_smallest_tile_is_a_data_error_too() -> None:
    method = ["method.name=edue"]
    predictor = _predictor(method, budget_mb=20)  # < the fixed allowance
    with pytest.raises(DataError) as info:
        predictor.members(torch.zeros(1, 3, 600, 500))
    message = str(info.value)
    assert "\n" not in message and "smallest tile" in message and "600×500" in message
    wanted = int(message.split("infer.max_memory_mb=")[1].split(",")[0])
    _with_budget(predictor, method, wanted)
    assert predictor.memory_plan((1, 3, 600, 500)) is not None  # tiles fit the value named


def test_small_images_are_never_probed() -> None:
    predictor = _predictor(["method.name=edue"], budget_mb=40)
    passes: list[int] = []
    predictor.method.network.register_forward_hook(lambda *_: passes.append(1))
    predictor.predict(_image((40, 60)))
    # the prediction's own pass only: no probe pass for an image under the probe's size
    assert len(passes) == predictor.n_passes == 1
    assert predictor.network_profile.local  # measuring the network: passes of its own
    assert len(passes) > 1


def test_image_wide_networks_are_not_tiled_but_still_predicted() -> None:
    method = ["method.name=plain", "model.norm=instance"]
    predictor = _predictor(method)
    profile = predictor.network_profile
    assert not profile.local and "InstanceNorm" in profile.reason
    _with_budget(predictor, method, 34)
    with pytest.warns(UserWarning, match="cannot be predicted tile by tile"):
        assert predictor.memory_plan((1, 3, *SHAPE)) is None
    assert predictor.predict(_image()).members.shape == (1, 2, *SHAPE)


def test_the_receptive_field_bound_holds_and_image_wide_layers_are_caught() -> None:
    predictor = _predictor(["method.name=edue"])
    profile = predictor.network_profile
    assert profile.local and profile.bytes_per_pixel > 0 and not profile.unchecked
    # U-Net [4, 8, 16]: encoder 2·(1+2+4), up-convolutions 2+1, decoder 2·(2+1), bilinear
    # up-sampling of the heads 2·4: 31, rounded up to the divisor
    assert profile.halo == (32, 32)
    assert profile.reason == ""  # the bound passed the empirical check
    # what the layer analysis cannot see, the check catches: an output that reaches
    # 40 px along the last axis (beyond the 32 px bound), or one that mixes in the whole
    # image, is not local
    method = predictor.method

    def measured(predict: Callable[[torch.Tensor], torch.Tensor]) -> receptive_field.NetworkProfile:
        return receptive_field.profile_network(predict, method, 3, 2, 4, torch.device("cpu"))

    far = measured(lambda x: torch.roll(method.predict_members(x), 40, dims=-1))
    assert not far.local and far.halo == (32, 32)
    assert "beyond the receptive field's bound (32 px on axis 1)" in far.reason
    wide = measured(lambda x: method.predict_members(x) + x.mean())
    assert not wide.local and "beyond the receptive field's bound" in wide.reason
    norm = _predictor(["method.name=plain", "model.norm=group"]).network_profile
    assert not norm.local and norm.reason == "GroupNorm is image-wide"


def test_the_default_budget_comes_from_the_machine() -> None:
    predictor = _predictor(["method.name=edue"])
    assert predictor.config.infer.max_memory_mb is None
    budget = predictor.memory_budget_mb
    assert budget == memory.default_memory_budget_mb("cpu") >= memory.FLOOR_MB > 0
    machine = memory.machine_memory_bytes()
    if machine is not None:  # Linux: /proc/meminfo
        assert machine > 0
        assert budget == max(memory.FLOOR_MB, int(machine * memory.DEFAULT_FRACTION / memory.MB))
    assert _predictor(["method.name=edue"], budget_mb=777).memory_budget_mb == 777


def test_tile_plans_are_aligned_balanced_and_cover_the_padded_image() -> None:
    padded, tiles = tiling.plan_tiles((203, 157), 48, (16, 16), 8)
    assert padded == (208, 160)
    assert sorted({t.keep[0] for t in tiles}) == [
        (0, 48),
        (48, 96),
        (96, 144),
        (144, 192),
        (192, 208),
    ]
    assert sorted({t.keep[1] for t in tiles}) == [(0, 40), (40, 80), (80, 120), (120, 160)]
    assert sorted({t.window[1] for t in tiles}) == [(0, 56), (24, 96), (64, 136), (104, 160)]
    area = sum(math.prod(k1 - k0 for k0, k1 in t.keep) for t in tiles)
    assert area == math.prod(padded) and len(tiles) == 20
