"""The result schema: keys are built and parsed in one place, and every key an
evaluation writes follows it."""

import csv
import math

import pytest

from edue import result_keys as rk
from edue.cli import main

KNOWN = {v for k, v in vars(rk).items() if k.isupper() and isinstance(v, str)}


def test_keys_round_trip():
    assert rk.key(rk.SOFT_DICE, "disc", rk.MEAN) == "soft_dice/disc/mean"
    assert rk.alpha_key(rk.REFERRAL_RATE, "cup", 0.1) == "referral_rate/cup/alpha_0.1"
    assert rk.template(rk.IMAGE_SPEARMAN, rk.CI_LOW).format(s="GTVp") == (
        "image_spearman/GTVp/ci_low"
    )
    assert rk.key(rk.OOD_SCORE, None, rk.MEAN) == "ood_score/mean"
    assert rk.parse("ood_score/std") == rk.ResultKey("ood_score", None, "std")
    for text in ("n_cases", "qc_auc/disc", "nll/cup/std", "referral_threshold/GTVn/alpha_0.05"):
        assert str(rk.parse(text)) == text
    parsed = rk.parse("referral_poor_share/disc/alpha_0.2")
    assert (parsed.metric, parsed.structure, parsed.alpha) == ("referral_poor_share", "disc", 0.2)
    assert rk.parse(rk.key(rk.member_soft_dice(3), "cup", rk.MEAN)).member == 3
    assert rk.parse("soft_dice/disc/mean").alpha is None


@pytest.mark.parametrize(
    "bad",
    ["a/b/c/d", "soft_dice//mean", "soft_dice/disc/median", "x/y/alpha_z", "ood_score/disc"],
)
def test_parse_refuses_what_the_schema_does_not_allow(bad):
    with pytest.raises(ValueError):
        rk.parse(bad)


def test_key_refuses_parts_that_would_not_parse_back():
    with pytest.raises(ValueError):
        rk.key(rk.SOFT_DICE, "optic/disc")
    with pytest.raises(ValueError):
        rk.key(rk.SOFT_DICE, None, rk.MEAN)


def test_alphas_and_structures_are_read_from_keys():
    keys = [
        "referral_rate/disc/alpha_0.2",
        "referral_rate/cup/alpha_0.05",
        "referral_poor_share/disc/alpha_0.5",
        "soft_dice/disc/mean",
        "soft_dice/cup/mean",
        "not a key//",
    ]
    assert rk.alphas(keys) == (0.05, 0.2)
    assert rk.alphas(keys, rk.REFERRAL_POOR_SHARE) == (0.5,)
    assert rk.structures(keys, rk.SOFT_DICE) == ["disc", "cup"]


def test_every_key_an_evaluation_writes_follows_the_schema(tiny_run, tmp_path):
    import json

    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_run), "--out", str(out), "--device", "cpu"]) == 0
    info = json.loads((out / "metrics.json").read_text())
    structures = set(info["structures"])
    with (out / "per_case.csv").open() as handle:
        columns = [c for c in next(csv.reader(handle)) if c not in ("case_id", "method")]
    for text in [*info["metrics"], *columns]:
        parsed = rk.parse(text)
        assert parsed.metric in KNOWN or parsed.member is not None, text
        assert parsed.structure is None or parsed.structure in structures, text
    metrics = info["metrics"]
    for s in structures:  # the headline figures are where the schema says
        assert 0 <= metrics[rk.mean_key(rk.SOFT_DICE, s)] <= 1
        assert math.isfinite(metrics[rk.key(rk.IMAGE_SPEARMAN, s)])
    assert {rk.parse(c).metric for c in columns} >= set(rk.PER_CASE_METRICS)
