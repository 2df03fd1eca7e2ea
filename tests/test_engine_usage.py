"""Using the engine as a new user would: ensemble members as their own jobs, inputs named
twice, one forward per validation batch, and state-dict mismatches in one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edue.cli import main
from edue.config import load_config
from edue.data.pipeline import build_datasets, open_configured_source, split_indices
from edue.engine.checkpoint import load_checkpoint, save_checkpoint
from edue.engine.inference.predictor import Predictor
from edue.engine.predict.files import collect_inputs, output_names
from edue.engine.runtime import setup_runtime
from edue.engine.training.validation import validation_metrics
from edue.errors import CheckpointError, DataError
from edue.io import write_png
from edue.methods import PlainUNet, build_method
from tests.conftest import TINY_OVERRIDES


@pytest.mark.slow
def test_a_deep_ensemble_member_job_loads_evaluates_and_predicts_as_a_plain_unet(tmp_path, capsys):
    run = tmp_path / "member0"
    argv = ["train", "--member", "0", "--out", str(run), "train.epochs=1"]
    # overrides before and after the options
    assert main(["train", "method.name=deep_ensemble", *TINY_OVERRIDES, *argv[1:]]) == 0
    predictor = Predictor.from_checkpoint(run)
    assert isinstance(predictor.method, PlainUNet)
    assert (predictor.method.n_members, predictor.n_passes) == (1, 1)
    assert load_checkpoint(run / "best.pt")["config"]["method"]["member"] == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["n_members"], metrics["n_passes"], metrics["split"]) == (1, 1, "test")
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "in" / "a.png", image)
    assert main(["predict", str(run), str(tmp_path / "in"), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "a_overlay.png").is_file()


def test_state_dict_mismatch_is_one_line(tiny_run, tmp_path):
    state = load_checkpoint(tiny_run / "best.pt")
    state["config"]["method"]["name"] = "plain"  # EDUE weights under a plain U-Net's name
    save_checkpoint(tmp_path / "odd.pt", state)
    with pytest.raises(CheckpointError) as info:
        Predictor.from_checkpoint(tmp_path / "odd.pt")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith(f"{tmp_path / 'odd.pt'}: the checkpoint holds ")
    assert "the configuration builds a 'plain' model of " in message
    assert "missing (first: " in message and "unexpected (first: " in message


def test_inputs_named_twice_are_predicted_once(tmp_path):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "in" / name, image)
    files = collect_inputs([str(tmp_path / "in" / "a.png"), str(tmp_path / "in")])
    assert files == [tmp_path / "in" / "a.png", tmp_path / "in" / "b.png"]


def test_two_inputs_writing_the_same_names_are_an_error(tmp_path):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    write_png(tmp_path / "x" / "a.png", image)
    write_png(tmp_path / "x" / "a.tif", image)
    with pytest.raises(DataError) as info:
        collect_inputs([str(tmp_path / "x")])
    assert str(info.value) == (
        f"{tmp_path / 'x' / 'a.tif'}: would write its outputs under the same name 'a' as "
        f"{tmp_path / 'x' / 'a.png'}; predict them into different folders or rename one"
    )


def test_equal_names_in_different_folders_mirror_the_tree(tmp_path):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    for folder in ("x", "y", "y/z"):
        write_png(tmp_path / folder / "a.png", image)
    write_png(tmp_path / "y" / "b.png", image)
    files = collect_inputs([str(tmp_path / "x"), str(tmp_path / "y")])
    assert output_names(files) == ["x/a", "y/a", "y/b", "y/z/a"]
    assert output_names([tmp_path / "y" / "b.png", tmp_path / "x" / "a.png"]) == ["b", "a"]


@pytest.mark.parametrize("name, passes_per_batch", [("edue", 1), ("mc_dropout", 4)])
def test_validation_runs_one_forward_per_batch(name, passes_per_batch):
    config = load_config(None, [*TINY_OVERRIDES, f"method.name={name}", "method.mc_samples=3"])
    source = open_configured_source(config.data)
    subset = build_datasets(config.data, source, split_indices(config.data, source))["val"]
    torch.manual_seed(0)
    method = build_method(config, 3, 2, 2)
    calls = []
    method.network.register_forward_hook(lambda *_: calls.append(1))
    runtime = setup_runtime("cpu", "none")
    out = validation_metrics(method, method, subset, runtime, batch_size=2, seed=0)
    batches = (len(subset) + 1) // 2
    assert len(calls) == batches * passes_per_batch  # MC dropout: 1 loss pass + 3 samples
    scores = ("spearman_sv_variance", "spearman_sv_bernoulli", "spearman_sv_combined")
    per_score = scores if method.n_members >= 2 else ()  # the score is chosen on validation
    assert set(out) == {"val/loss"} | {
        f"val/{m}/{s}" for m in ("soft_dice", "spearman_sv", *per_score) for s in ("disc", "cup")
    }


def test_evaluate_names_the_subset_it_evaluated(tiny_run, tmp_path, capsys):
    assert main(["evaluate", str(tiny_run), "--out", str(tmp_path / "e"), "--split", "val"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["metrics"]["n_cases"] == 4
    out = capsys.readouterr().out
    assert out.startswith("edue: 4 cases, ")


def test_run_folder_is_documented_in_the_log(tiny_run):
    lines = Path(tiny_run, "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
