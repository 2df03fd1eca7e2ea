"""The method registry: one module per method, and a method added from outside the
package trains, evaluates and appears in the report with nothing else changed."""

import json
import re
from pathlib import Path

import pytest
import torch

from edue.cli import main
from edue.config import load_config
from edue.losses import bce
from edue.methods import (
    BuildRequest,
    Method,
    MethodSpec,
    get_method,
    method_names,
    method_specs,
    register_method,
    unregister_method,
)

SRC = Path(__file__).resolve().parent.parent / "src" / "edue"


class PairOfHeads(Method):
    """A toy method: one U-Net with ``2K`` outputs read as two members."""

    name = "toy_pair"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return torch.stack(out.chunk(2, dim=1))

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        value = sum(bce(member, batch["soft_vote"]) for member in logits) / len(logits)
        return value, {"bce": float(value.detach())}

    @property
    def n_members(self) -> int:
        return 2


@pytest.fixture
def toy_method():
    spec = register_method(
        MethodSpec(
            name="toy_pair",
            label="Toy pair",
            build=lambda r: PairOfHeads(r.backbone(2 * r.out_channels)),
            members=lambda config: 2,
            summary="two output halves of one U-Net",
            order=5,
        )
    )
    yield spec
    unregister_method("toy_pair")


def test_builtin_methods_in_their_order():
    assert method_names() == (
        "edue",
        "layer_ensembles",
        "mc_dropout",
        "plain",
        "deep_supervision",
        "deep_supervision_heads",
        "deep_ensemble",
        "ssn",
        "prob_unet",
    )
    config = load_config(None, ["method.ensemble_size=3", "method.mc_samples=4"])
    table = {s.name: (s.members(config), s.passes(config)) for s in method_specs()}
    assert table == {
        "edue": (3, 1),
        "layer_ensembles": (3, 1),  # 7 blocks less the first 4
        "mc_dropout": (4, 4),
        "plain": (1, 1),
        "deep_supervision": (1, 1),
        "deep_supervision_heads": (3, 1),
        "deep_ensemble": (3, 3),
        "ssn": (16, 1),
        "prob_unet": (16, 1),
    }


@pytest.mark.parametrize(
    "name, module",
    [
        ("plain", "plain"),
        ("deep_ensemble", "deep_ensemble"),
        ("mc_dropout", "mc_dropout"),
        ("layer_ensembles", "layer_ensembles"),
        ("deep_supervision", "deep_supervision"),
        ("deep_supervision_heads", "deep_supervision"),
        ("ssn", "ssn"),
        ("prob_unet", "prob_unet"),
    ],
)
def test_each_method_name_is_written_in_one_module(name, module):
    # "edue" is also the package's own name (logger, program, config default), so only
    # the other methods can be checked this way.
    quoted = re.compile(rf"[\"']{name}[\"']")
    holders = sorted(
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if quoted.search(p.read_text())
    )
    assert holders == [f"methods/{module}.py"]


def test_members_built_and_declared_agree():
    config = load_config(None, ["model.channels=[4, 8, 16]", "method.skip_first=2"])
    for spec in method_specs():
        cfg = config.model_copy(deep=True)
        cfg.method.name = spec.name
        method = spec.build(BuildRequest(cfg, 3, 2, 2, for_training=False))
        assert method.n_members == spec.members(cfg), spec.name


def test_names_are_unique_identifiers():
    spec = get_method("plain")
    with pytest.raises(ValueError, match="already registered"):
        register_method(spec)
    with pytest.raises(ValueError, match="identifier"):
        register_method(MethodSpec(name="a-b", label="x", build=spec.build))


@pytest.mark.slow
def test_a_method_registered_in_a_test_file_trains_evaluates_and_reports(
    toy_method, tmp_path, capsys
):
    run = tmp_path / "run"
    data = [
        "data.options={size: 32}",
        "data.split={train: 8, val: 4, test: 4}",
        "model.channels=[4, 8]",
        "train.epochs=2",
        "train.batch_size=4",
        "train.device=cpu",
    ]
    assert main(["train", "method.name=toy_pair", *data, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2: loss" in out and "epoch 2/2: loss" in out
    assert len((run / "log.jsonl").read_text().splitlines()) == 2

    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["method"], metrics["n_members"], metrics["n_passes"]) == ("toy_pair", 2, 1)
    assert metrics["metrics"]["n_cases"] == 4

    assert main(["compare", str(tmp_path / "eval"), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Toy pair" in html
    table = (tmp_path / "report" / "table.md").read_text()
    assert "Toy pair" in table
