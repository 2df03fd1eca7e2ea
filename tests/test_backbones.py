"""Backbones behind one interface: MONAI's DynUNet (2D, 3D) and segmentation-models-pytorch.

Every method trains, resumes bitwise and predicts on each backbone; pretrained weights
come from a local file only (nothing is downloaded). The smp tests need
segmentation-models-pytorch with a torchvision that matches torch: they are marked
``backbones`` and run in ``make test-backbones``'s environment (skipped elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edue.config import load_config
from edue.engine.checkpoint import load_checkpoint
from edue.errors import ConfigError
from edue.methods.backbone_spec import backbone_blocks
from edue.methods.registry import BuildRequest, get_method, method_names
from edue.nets.dynunet_backbone import nnunet_filters, plan_kernels_strides
from tests.conftest import free_port, join_process_group_env


def _smp_importable() -> str | None:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as error:  # a torchvision of another torch raises RuntimeError
        return f"segmentation-models-pytorch does not import here ({type(error).__name__})"
    return None


SMP_MISSING = _smp_importable()
needs_smp = [
    pytest.mark.backbones,
    pytest.mark.skipif(SMP_MISSING is not None, reason=f"{SMP_MISSING}; run make test-backbones"),
]

COMMON = [
    "train.epochs=2",
    "train.batch_size=4",
    "train.device=cpu",
    "train.deterministic=true",
    "train.threads=1",
    "method.mc_samples=2",
    "method.ensemble_size=2",
    "method.skip_first=1",
]
DYNUNET_2D = [
    "data.format=synthetic",
    "data.options={size: 32}",
    "data.split={train: 8, val: 2, test: 2}",
    "data.size=32",
    "model.backbone=dynunet",
    "model.filters=[4, 8, 16, 32]",
]
DYNUNET_3D = [
    "data.format=synthetic3d",
    "data.options={size: 16, n_raters: 3}",
    "data.split={train: 4, val: 2, test: 2}",
    "data.patch_size=[16, 16, 16]",
    "train.batch_size=2",
    "model.backbone=dynunet",
    "model.filters=[4, 8, 16]",
]
SMP_2D = [
    "data.format=synthetic",
    "data.options={size: 64}",
    "data.split={train: 8, val: 2, test: 2}",
    "model.backbone=smp",
    "model.arch=Unet",
    "model.encoder=resnet18",
    "model.decoder_channels=[32, 16, 16, 8, 8]",
]
BACKBONES = {
    "dynunet-2d": (DYNUNET_2D, []),
    "dynunet-3d": (DYNUNET_3D, []),
    "smp-resnet18": (SMP_2D, needs_smp),
}


def _params(backbone: str) -> list[object]:
    return [pytest.param(name, marks=BACKBONES[name][1]) for name in BACKBONES if name in backbone]


# ------------------------------------------------------------------------------ planning
def test_plan_isotropic_96_cube_has_five_levels():
    kernels, strides = plan_kernels_strides((96, 96, 96))
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4  # 96 -> 48 -> 24 -> 12 -> 6
    assert kernels == [[3, 3, 3]] * 5


def test_plan_anisotropic_waits_for_the_coarse_axis():
    # 3 mm slices against 1 mm pixels: z is not halved until x and y reach 4 mm
    kernels, strides = plan_kernels_strides((128, 128, 32), (1.0, 1.0, 3.0))
    assert strides[:3] == [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    assert kernels[0] == [3, 3, 1]  # the thick axis gets 1-wide kernels at first
    assert kernels[1] == [3, 3, 3]
    assert len(kernels) == len(strides)


def test_nnunet_filters_cap():
    assert nnunet_filters(6, 3) == [32, 64, 128, 256, 320, 320]
    assert nnunet_filters(7, 2)[-1] == 512


# ------------------------------------------------------------------- every method trains
def _config(backbone: str, method: str, out: Path, extra: list[str] | None = None):
    overrides = [*COMMON, *BACKBONES[backbone][0], f"method.name={method}", f"out_dir={out}"]
    return load_config(None, overrides + (extra or []))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", _params("dynunet-2d dynunet-3d smp-resnet18"))
def test_every_method_trains_and_predicts_its_members(backbone, tmp_path):
    import edue
    from edue.engine.training.trainer import train_method

    for method in method_names():
        if get_method(method).trained_as:
            continue
        config = _config(backbone, method, tmp_path / method)
        run = train_method(config)
        predictor = edue.load(str(run))
        image = torch.rand(*_image_shape(config))
        prediction = predictor.predict(image)
        assert prediction.n_members == get_method(method).members(config), method
        assert prediction.members.shape[1:] == (2, *image.shape[1:]), method
        assert torch.isfinite(prediction.members).all(), method


def _image_shape(config) -> tuple[int, ...]:
    if config.data.format == "synthetic3d":
        return (2, 16, 16, 16)
    size = config.data.options["size"]
    return (3, size, size)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("backbone", _params("dynunet-2d dynunet-3d smp-resnet18"))
@pytest.mark.parametrize("method", ["edue", "mc_dropout"])
def test_resume_after_an_interruption_is_bitwise(backbone, method, tmp_path, monkeypatch):
    from edue.engine.training import trainer as train_module
    from edue.engine.training.callbacks import TrainingCallback

    extra = ["train.checkpoint_every=1", "train.epochs=2"]
    reference = train_module.train(_config(backbone, method, tmp_path / "ref", extra))

    class StopBeforeThirdStep(TrainingCallback):  # mid-epoch 2
        def on_step_start(self, trainer, batch):
            if trainer.global_step == 2:
                raise _Stop

    with pytest.raises(_Stop):
        train_module.train(
            _config(backbone, method, tmp_path / "cut", extra),
            callbacks=[StopBeforeThirdStep()],
        )
    resumed = train_module.train(
        _config(backbone, method, tmp_path / "cut", extra), tmp_path / "cut"
    )
    a = load_checkpoint(reference / "last.pt")["model"]
    b = load_checkpoint(resumed / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


# -------------------------------------------------------------------------- heads by name
def _build(backbone: str, method: str, extra: list[str] | None = None):
    config = _config(backbone, method, Path("unused"), extra)
    dims = 3 if config.data.format == "synthetic3d" else 2
    channels = 2 if dims == 3 else 3
    return config, get_method(method).build(BuildRequest(config, channels, 2, dims))


@pytest.mark.parametrize("backbone", _params("dynunet-2d dynunet-3d"))
def test_dynunet_heads_on_its_blocks(backbone):
    config, edue = _build(backbone, "edue", ["method.heads=encoder+decoder"])
    levels = 4 if backbone == "dynunet-2d" else 3
    assert edue.n_members == 2 * levels - 1 == get_method("edue").members(config)
    config, edue = _build(backbone, "edue")
    assert edue.n_members == levels - 1  # one head per up-sampling block


@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
def test_smp_unet_encoder_and_decoder_heads_one_per_stage(backbone):
    config, edue = _build(backbone, "edue", ["method.heads=encoder+decoder"])
    names = edue.network.block_names
    assert names == [f"encoder.{i}" for i in range(5)] + [f"decoder.{j}" for j in range(5)]
    assert edue.n_members == 10 == get_method("edue").members(config)
    logits = edue.network(torch.rand(1, 3, 64, 64))
    assert logits.shape == (20, 1, 2, 64, 64)  # segmentation heads, then uncertainty heads
    # the heads see different depths: widths of the resnet18 stages and decoder blocks
    assert [h.in_channels for h in edue.network.heads] == [64, 64, 128, 256, 512, 32, 16, 16, 8, 8]


@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
def test_smp_fpn_decoder_is_one_block(backbone):
    config, edue = _build(backbone, "edue", ["model.arch=FPN", "model.decoder_channels=null"])
    assert edue.network.block_names == ["decoder.0"]
    with pytest.raises(ConfigError, match="skip_first"):
        _build(backbone, "layer_ensembles", ["model.arch=FPN", "method.skip_first=5"])


# ---------------------------------------------------------------------- pretrained weights
@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_encoder_weights_load_and_normalisation_is_saved(backbone, suffix, tmp_path):
    import segmentation_models_pytorch as smp

    donor = smp.create_model("Unet", "resnet18", encoder_weights=None, in_channels=3)
    state = {f"encoder.{k}": v.clone() for k, v in donor.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # a classifier's tensors are ignored
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    _, plain = _build(backbone, "plain", [f"model.encoder_weights_path={path}"])
    loaded = plain.network.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in donor.encoder.state_dict().items())
    mean = plain.network.input_mean.flatten().tolist()
    assert mean == pytest.approx([0.485, 0.456, 0.406])  # the encoder's pretraining statistics
    assert "network.input_mean" in plain.state_dict()  # travels with the checkpoint
    # without pretrained weights the inputs are left as they are
    _, scratch = _build(backbone, "plain")
    assert scratch.network.input_mean.abs().sum() == 0
    assert torch.equal(scratch.network.input_std, torch.ones(1, 3, 1, 1))


@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
def test_two_channel_input_adapts_the_first_convolution(backbone, tmp_path):
    import segmentation_models_pytorch as smp

    donor = smp.create_model("Unet", "resnet18", encoder_weights=None, in_channels=3)
    path = tmp_path / "w.pt"
    torch.save(donor.encoder.state_dict(), path)
    config = _config(backbone, "plain", Path("unused"), [f"model.encoder_weights_path={path}"])
    method = get_method("plain").build(BuildRequest(config, 2, 2, 2))
    conv = method.network.encoder.conv1.weight
    expected = donor.encoder.conv1.weight[:, [0, 1]] * 1.5
    assert conv.shape[1] == 2 and torch.allclose(conv, expected)
    assert method.network.input_mean.shape == (1, 2, 1, 1)


@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
def test_bad_weights_files_are_one_clear_error(backbone, tmp_path):
    missing = tmp_path / "absent.pt"
    with pytest.raises(ConfigError, match=f"{missing}: no such file"):
        _build(backbone, "plain", [f"model.encoder_weights_path={missing}"])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable weights file"):
        _build(backbone, "plain", [f"model.encoder_weights_path={corrupt}"])
    wrong = tmp_path / "wrong.pt"
    torch.save({"layer9.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match=r"does not fit the encoder .*missing .*unexpected"):
        _build(backbone, "plain", [f"model.encoder_weights_path={wrong}"])


@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
def test_prediction_needs_no_weights_file(backbone, tmp_path):
    """A checkpoint carries the weights and the normalisation: the file may be gone."""
    import segmentation_models_pytorch as smp

    import edue
    from edue.engine.training.trainer import train

    donor = smp.create_model("Unet", "resnet18", encoder_weights=None, in_channels=3)
    path = tmp_path / "w.pt"
    torch.save(donor.encoder.state_dict(), path)
    config = _config(backbone, "plain", tmp_path / "run", [f"model.encoder_weights_path={path}"])
    config.train.epochs = 1
    run = train(config)
    path.unlink()
    predictor = edue.load(str(run))
    mean = predictor.method.network.input_mean.flatten().tolist()
    assert mean == pytest.approx([0.485, 0.456, 0.406])
    assert predictor.predict(torch.rand(3, 64, 64)).n_members == 1


# ------------------------------------------------------------------------------ errors
def test_smp_not_installed_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "segmentation_models_pytorch" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'edue\[backbones\]'") as info:
        load_config(None, ["model.backbone=smp"])
    assert "\n" not in str(info.value)


def test_weights_options_exclude_each_other():
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(None, ["model.encoder_weights=imagenet", "model.encoder_weights_path=a.pt"])


def test_dynunet_explicit_plan_is_checked():
    with pytest.raises(ConfigError, match="give both or neither"):
        load_config(None, ["model.backbone=dynunet", "model.strides=[[1, 1], [2, 2]]"])
    with pytest.raises(ConfigError, match="3 widths for 4 levels"):
        _build("dynunet-2d", "plain", ["model.filters=[4, 8, 16]"])


def test_a_3d_dynunet_without_a_patch_size_is_valid_for_every_head_method():
    """The block names come from the dimensions the model options fix (3 here), not
    from a guessed 2-D patch."""
    plan = [
        "model.backbone=dynunet",
        "model.kernel_size=[[3, 3, 3], [3, 3, 3], [3, 3, 3]]",
        "model.strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]",
    ]
    config = load_config(None, [*plan, "method.name=layer_ensembles", "method.skip_first=0"])
    assert backbone_blocks(config) == (
        ["encoder.0", "encoder.1", "encoder.2"],
        ["decoder.0", "decoder.1"],
    )
    assert get_method("edue").members(load_config(None, [*plan, "method.name=edue"])) == 2
    anisotropic = load_config(None, ["model.backbone=dynunet", "model.spacing=[1, 1, 3]"])
    assert len(backbone_blocks(anisotropic)[0]) >= 3


# -------------------------------------------------------------------------- model show
def test_model_show_lists_blocks_shapes_parameters_and_heads(capsys):
    from edue.cli import main

    code = main(
        ["model", "show", "configs/study_3d.yaml", "model.backbone=dynunet",
         "method.heads=encoder+decoder"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "backbone dynunet" in out
    assert "encoder.0    [32, 24, 24, 24]" in out  # input block at full resolution
    assert "decoder.1    [32, 24, 24, 24]" in out
    assert "5 heads" in out
    code = main(["model", "show", "configs/study_2d.yaml", "method.heads=[decoder.2, nope]"])
    assert code == 2
    assert "does not have: ['nope']" in capsys.readouterr().err


# ------------------------------------------------- the engine's options on new backbones
@pytest.mark.slow
@pytest.mark.parametrize("backbone", _params("dynunet-2d smp-resnet18"))
def test_amp_channels_last_and_compile_train_on_the_backbone(backbone, tmp_path):
    from edue.engine.training.trainer import train

    extra = [
        "train.epochs=1",
        "train.amp=bf16",
        "train.channels_last=true",
        "train.compile=true",
        "train.compile_backend=eager",
    ]
    run = train(_config(backbone, "edue", tmp_path / "run", extra))
    state = load_checkpoint(run / "last.pt")
    assert state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _ddp_worker(rank: int, world: int, port: int, out: str, backbone: str) -> None:
    join_process_group_env(rank, world, port)
    from edue.engine.runtime import teardown_runtime
    from edue.engine.training.trainer import Trainer

    extra = ["train.epochs=1", "model.norm=group"] if "dynunet" in backbone else ["train.epochs=1"]
    trainer = Trainer(_config(backbone, "edue", Path(out) / "run", extra))
    trainer.setup()
    trainer.fit()
    state = {k: v.detach().clone() for k, v in trainer.method.state_dict().items()}
    torch.save(state, f"{out}/rank{rank}.pt")
    teardown_runtime(trainer.runtime)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", _params("dynunet-3d smp-resnet18"))
def test_two_gloo_ranks_train_the_backbone_in_step(backbone, tmp_path):
    import torch.multiprocessing as mp

    args = (2, free_port(), str(tmp_path), backbone)
    mp.start_processes(_ddp_worker, args=args, nprocs=2, start_method="spawn")
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    # the weights move in step; batch-norm running statistics are each rank's own until
    # DDP broadcasts rank 0's at the next forward (rank 0 writes the checkpoint)
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    weights = [k for k in rank0 if not k.endswith(statistics)]
    assert weights and all(torch.equal(rank0[k], rank1[k]) for k in weights), "ranks diverged"
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("backbone", _params("smp-resnet18"))
def test_onnx_export_of_an_smp_backbone_equals_the_predictor(backbone, tmp_path):
    """ONNX Runtime gives the PyTorch members, mean and variance of an smp encoder, its
    input normalisation inside the graph, at the training size and (resampled like the
    Predictor) at another."""
    pytest.importorskip("onnxruntime")
    import json

    import segmentation_models_pytorch as smp

    from edue.engine.inference.predictor import Predictor
    from edue.engine.predict.export import OUTPUT_NAMES, export_onnx, onnx_session
    from edue.engine.predict.onnx_model import OnnxPredictor
    from edue.engine.training.trainer import train

    donor = smp.create_model("Unet", "resnet18", encoder_weights=None, in_channels=3)
    weights = tmp_path / "w.pt"
    torch.save(donor.encoder.state_dict(), weights)
    extra = [f"model.encoder_weights_path={weights}"]
    config = _config(backbone, "edue", tmp_path / "run", extra)
    config.train.epochs = 1
    run = train(config)
    predictor = Predictor.from_checkpoint(run)
    path = export_onnx(run, tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert meta["input_normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    session, runner = onnx_session(path), OnnxPredictor(path)
    gen = torch.Generator().manual_seed(0)
    for size in [(64, 64), (96, 80)]:
        batch = torch.rand((2, 3, *size), generator=gen)
        preds = predictor.predict_batch(list(batch))
        want = [torch.stack([getattr(p, n) for p in preds]).numpy() for n in OUTPUT_NAMES]
        got = runner.predict_batch(list(batch))
        for name, w in zip(OUTPUT_NAMES, want, strict=True):
            g = torch.stack([getattr(p, name) for p in got]).numpy()
            assert float(np.abs(g - w).max()) < 1e-4, (size, name)
        if size == (64, 64):  # the training size: the graph alone
            outs = session.run(list(OUTPUT_NAMES), {"image": batch.numpy()})
            for name, g, w in zip(OUTPUT_NAMES, outs, want, strict=True):
                assert float(np.abs(g - w).max()) < 1e-4, name
