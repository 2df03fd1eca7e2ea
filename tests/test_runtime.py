"""Device selection, mixed precision and Deep Ensemble gathering (CPU tests of the GPU path)."""

from __future__ import annotations

import pytest
import torch

from edue.config import load_config
from edue.engine.checkpoint import load_checkpoint
from edue.engine.inference.predictor import Predictor
from edue.engine.runtime import resolve_amp, resolve_device
from edue.engine.training.ensemble import gather_ensemble
from edue.engine.training.trainer import Trainer, train, train_method
from edue.errors import CheckpointError, ConfigError
from tests.conftest import TINY_OVERRIDES


def test_device_selection_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_device_selection_picks_local_rank_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda:1")


def test_amp_resolution():
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) is None
    assert resolve_amp("auto", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        resolve_amp("fp16", cpu)


@pytest.mark.parametrize("extra", [["train.amp=bf16"], ["train.channels_last=true"]])
def test_bf16_and_channels_last_train_close_to_fp32(tmp_path, extra):
    base = [*TINY_OVERRIDES, "train.epochs=1", "model.norm=group"]
    reference = Trainer(load_config(None, [*base, f"out_dir={tmp_path}/fp32"]))
    reference.setup()
    reference.fit()
    variant = Trainer(load_config(None, [*base, *extra, f"out_dir={tmp_path}/variant"]))
    variant.setup()
    variant.fit()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference.method.eval()
    variant.method.eval()
    p_ref = reference.method.predict_members(x)
    p_var = variant.method.predict_members(x)
    worst = float((p_ref - p_var).abs().max())
    # bf16 keeps 8 mantissa bits: after 3 steps the probabilities stay within a few
    # hundredths of the fp32 run; channels-last only reorders memory, but other kernels
    # round differently and Adam's normalised steps carry that to ~1e-4 after 3 steps
    assert worst < (0.05 if "train.amp=bf16" in extra else 1e-3)
    assert worst > 0 or "train.channels_last=true" in extra  # bf16 really ran


def test_gather_checks_members_and_predicts_with_all(tmp_path):
    overrides = [*TINY_OVERRIDES, "train.epochs=1", "method.name=deep_ensemble"]
    runs = [
        train_method(
            load_config(None, [*overrides, f"method.member={i}", f"out_dir={tmp_path}/m{i}"])
        )
        for i in range(2)
    ]
    a = load_checkpoint(runs[0] / "last.pt")["model"]
    b = load_checkpoint(runs[1] / "last.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds → different members
    path = gather_ensemble(runs, tmp_path / "ensemble.pt")
    predictor = Predictor.from_checkpoint(path)
    assert predictor.name == "deep_ensemble" and predictor.method.n_members == 2
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert predictor.predict(image).members.shape == (2, 2, 32, 32)
    other = train(
        load_config(None, [*overrides, "model.channels=[4, 8]", f"out_dir={tmp_path}/odd"])
    )
    with pytest.raises(CheckpointError, match="differs"):
        gather_ensemble([runs[0], other], tmp_path / "bad.pt")


@pytest.mark.parametrize("method", ["edue", "mc_dropout"])
def test_compiled_training_matches_eager(tmp_path, method):
    # the traced graph must keep EDUE's hooked heads and MC dropout's sampling intact;
    # aot_eager traces forward and backward like inductor but runs eager kernels, so it
    # checks the model compiles without paying for code generation in the test suite
    base = [*TINY_OVERRIDES, "train.epochs=1", "model.norm=group", f"method.name={method}"]
    runs = {}
    base += ["train.compile_backend=aot_eager"]
    for tag, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        trainer = Trainer(load_config(None, [*base, *extra, f"out_dir={tmp_path}/{tag}"]))
        trainer.setup()
        trainer.fit()
        runs[tag] = trainer
    assert runs["compiled"].model is not runs["compiled"].method  # really compiled
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    members = {}
    for tag, trainer in runs.items():
        trainer.method.eval()
        with torch.no_grad():
            members[tag] = trainer.method.predict_members(x)
    assert members["eager"].shape == members["compiled"].shape
    assert float((members["eager"] - members["compiled"]).abs().max()) < 1e-4
    saved = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    assert not any(key.startswith("_orig_mod") for key in saved)  # loadable without compile


def test_unknown_compile_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="compile_backend"):
        load_config(None, ["train.compile_backend=tensorrt"])
