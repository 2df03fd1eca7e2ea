import json

import pytest
import torch

from edue.config import load_config
from edue.engine.checkpoint import load_checkpoint
from edue.engine.inference.predictor import Predictor
from edue.engine.training.trainer import Trainer, train
from edue.errors import ConfigError, TrainingDiverged
from tests.conftest import TINY_OVERRIDES


def test_run_folder_contents(tiny_run):
    for name in ("config.yaml", "split.json", "log.jsonl", "last.pt", "best.pt"):
        assert (tiny_run / name).is_file()
    lines = [json.loads(x) for x in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert {
        "train/loss",
        "train/unc_guidance",
        "val/loss",
        "val/soft_dice/disc",
        "val/spearman_sv/cup",
    } <= set(lines[0])
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["train"]) == 12 and not set(split["train"]) & set(split["test"])
    state = load_checkpoint(tiny_run / "last.pt")
    assert state["epoch"] == 2 and state["method"] == "edue"
    assert {"optimizer", "scheduler", "rng", "rater_generator"} <= set(state)


def test_same_seed_same_weights(tmp_path, tiny_run):
    config = load_config(None, [*TINY_OVERRIDES, f"out_dir={tmp_path / 'again'}"])
    again = train(config)
    a = load_checkpoint(tiny_run / "last.pt")["model"]
    b = load_checkpoint(again / "last.pt")["model"]
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predictor_returns_heads(tiny_run):
    predictor = Predictor.from_checkpoint(tiny_run)
    image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0)).numpy()
    pred = predictor.predict(image, case_id="x")
    assert pred.members.shape == (2, 2, 40, 40)  # 2 decoder heads, resized back to 40²
    assert pred.structures == ("disc", "cup") and pred.sv.shape == (2,)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    config = load_config(None, [*TINY_OVERRIDES, "train.epochs=2", f"out_dir={tmp_path}"])
    trainer = Trainer(config)
    trainer.setup()
    calls = {"n": 0}
    original = trainer.method.loss

    def exploding(logits, batch, generator=None):
        calls["n"] += 1
        loss, parts = original(logits, batch, generator)
        return (loss * float("nan") if calls["n"] > 3 else loss), parts

    monkeypatch.setattr(trainer.method, "loss", exploding)
    with pytest.raises(TrainingDiverged, match="epoch 2, batch 1"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_a_method_s_learning_rate_scale_sets_its_peak_learning_rate(tmp_path):
    config = load_config(
        None,
        [*TINY_OVERRIDES, "train.lr=0.004", "method.lr_scale=0.25", f"out_dir={tmp_path}/r"],
    )
    trainer = Trainer(config)
    trainer.setup()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [pytest.approx(0.001)]
    assert trainer.scheduler.eta_min == pytest.approx(0.001 * 0.05)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="lr_scale"):
        load_config(None, ["method.lr_scale=0"])
