"""The demo pipeline end to end, at toy size (the real demo is `make demo`)."""

from __future__ import annotations

import csv
import json

import pytest

from edue.cli import main
from edue.report.claims import TARGETS

# run name -> (method in metrics.json, label in the report, members predicted at toy size)
RUNS = {
    "edue": ("edue", "EDUE", 2),  # channels [8, 16, 32]: 2 decoder heads
    "layer_ensembles": ("layer_ensembles", "Layer Ensembles", 4),  # 5 heads, first skipped
    "mc_dropout": ("mc_dropout", "MC dropout", 3),
    "plain": ("plain", "U-Net", 1),
    "deep_supervision": ("deep_supervision", "U-Net + deep supervision", 1),
    "deep_supervision_heads": (
        "deep_supervision_heads",
        "U-Net + deep supervision (head variance)",
        2,
    ),
    "deep_ensemble": ("deep_ensemble", "Deep Ensemble", 2),
    "ssn": ("ssn", "SSN", 3),
    "prob_unet": ("prob_unet", "Prob. U-Net", 3),
    "edue_no_guidance": ("edue", "edue_no_guidance", 2),
    "edue_no_sampling": ("edue", "edue_no_sampling", 2),
}
EVAL_FILES = {"metrics.json", "per_case.csv", "curves.json", "samples.npz", "ood.json"}
RUN_FILES = {"config.yaml", "split.json", "log.jsonl", "last.pt", "best.pt", "eval"}
#: written by the demo's calibration on the validation split, beside the checkpoint
CALIBRATION_FILES = {"calibration.json", "calibration_gate.npz"}
FIGURES = [
    "ood_agreement.png",
    "ood_sv.png",
    "qc_curves.png",
    "referral.png",
    "reliability.png",
    "samples.png",
    "sv_scatter.png",
]
CLAIM_FIELDS = {
    "id",
    "statement",
    "structure",
    "edue",
    "reference",
    "value",
    "target",
    "passed",
    "mark",
    "budget",
}
# claim id prefix -> (metric key the claim compares, verdict from edue e, reference r, value v)
CLAIM_RULES = {
    "vs_deep_ensemble": {
        "spearman_ratio": (
            "image_spearman/{s}",
            lambda e, r, v: e >= TARGETS["spearman_ratio_min"] * r if r > 0 else e > 0,
        ),
        "pixel_ncc_difference": ("pixel_ncc/{s}/mean", lambda e, r, v: v >= 0),
        "nll_difference": ("nll/{s}/mean", lambda e, r, v: v <= 0),
        "soft_dice_difference": (
            "soft_dice/{s}/mean",
            lambda e, r, v: v >= -TARGETS["soft_dice_abs_difference_max"],
        ),
        "time_ratio": ("seconds_per_image", lambda e, r, v: v <= TARGETS["time_ratio_max"]),
    },
    "vs_plain": {
        "image_spearman_difference": ("image_spearman/{s}", lambda e, r, v: v > 0),
        "pixel_ncc_difference": ("pixel_ncc/{s}/mean", lambda e, r, v: v > 0),
        "nll_difference": ("nll/{s}/mean", lambda e, r, v: v < 0),
    },
}
CLAIM_RULES["vs_deep_supervision"] = CLAIM_RULES["vs_plain"]
CLAIM_IDS = {
    "vs_deep_ensemble": [
        "spearman_ratio/disc",
        "spearman_ratio/cup",
        *(
            f"{name}_difference/{s}"
            for s in ("disc", "cup")
            for name in ("pixel_ncc", "nll", "soft_dice")
        ),
        "time_ratio",
    ],
    "vs_plain": [
        f"{name}_difference/{s}"
        for s in ("disc", "cup")
        for name in ("image_spearman", "pixel_ncc", "nll")
    ],
}
CLAIM_IDS["vs_deep_supervision"] = CLAIM_IDS["vs_plain"]


def _metric(info: dict, key: str) -> float:
    return info[key] if key == "seconds_per_image" else info["metrics"][key]


@pytest.mark.slow
def test_quick_demo_writes_the_whole_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--ablations"]) == 0

    # every run folder, and every evaluation in it
    assert {p.name for p in out.iterdir()} == {
        *RUNS,
        "claims.json",
        "report.html",
        "table.md",
        "table.tex",
        "table.csv",
        "figures",
    }
    infos = {}
    for run, (method, _, n_members) in RUNS.items():
        assert {p.name for p in (out / run / "eval").iterdir()} == EVAL_FILES, run
        info = json.loads((out / run / "eval" / "metrics.json").read_text())
        assert info["label"] == run and info["method"] == method
        assert info["n_members"] == n_members, run
        assert info["structures"] == ["disc", "cup"] and info["metrics"]["n_cases"] == 8
        assert info["timing"] == "side by side, interleaved"
        infos[run] = info
        if run not in ("deep_ensemble", "deep_supervision_heads"):
            assert {p.name for p in (out / run).iterdir()} == RUN_FILES | CALIBRATION_FILES, run
        # every method was calibrated on the validation split and its referral evaluated
        assert info["referral"]["split"] == "val", run
    # the head-variance read-out reuses the deep-supervised network: nothing trained anew
    assert {p.name for p in (out / "deep_supervision_heads").iterdir()} == {
        "config.yaml",
        "best.pt",
        "eval",
        *CALIBRATION_FILES,
    }
    assert infos["deep_supervision_heads"]["parameters"] == infos["deep_supervision"]["parameters"]
    # member 0 of the Deep Ensemble is the plain U-Net: only member 1 is trained anew
    assert {p.name for p in (out / "deep_ensemble").iterdir()} == {
        "config.yaml",
        "ensemble.pt",
        "member_1",
        "eval",
        *CALIBRATION_FILES,
    }
    assert (out / "deep_ensemble" / "member_1" / "best.pt").is_file()
    assert infos["deep_ensemble"]["parameters"] == 2 * infos["plain"]["parameters"]

    # the tables: one row per run, in the demo's order
    with (out / "table.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["label"]) for r in rows] == [
        (m, label) for m, label, _ in RUNS.values()
    ]
    md = (out / "table.md").read_text()
    for _, label, _ in RUNS.values():
        assert f"| {label} |" in md
    assert sorted(p.name for p in (out / "figures").iterdir()) == FIGURES
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    assert all(label in html for _, label, _ in RUNS.values())

    # the claims: every expected claim, with its numbers taken from the evaluations and a
    # boolean verdict that follows from them (whatever they are at toy size)
    claims = json.loads((out / "claims.json").read_text())
    assert set(claims) == {
        "edue",
        "targets",
        "vs_deep_ensemble",
        "vs_plain",
        "vs_deep_supervision",
        "average_gain_vs_deep_ensemble_percent",
        "skipped",
        "headline",
    }
    assert claims["edue"] == {"label": "EDUE", "folder": str(out / "edue" / "eval")}
    assert claims["targets"] == TARGETS and claims["skipped"] == []
    assert set(claims["average_gain_vs_deep_ensemble_percent"]) == {"image_spearman", "pixel_ncc"}
    for group in CLAIM_IDS:
        reference = group.removeprefix("vs_")
        found = claims[group]
        assert found["reference"] == {
            "method": reference,
            "label": RUNS[reference][1],
            "folder": str(out / reference / "eval"),
        }
        assert [c["id"] for c in found["claims"]] == CLAIM_IDS[group]
        for claim in found["claims"]:
            assert set(claim) == CLAIM_FIELDS, claim["id"]
            prefix, _, structure = claim["id"].partition("/")
            assert claim["structure"] == (structure or None)
            key, rule = CLAIM_RULES[group][prefix]
            e = _metric(infos["edue"], key.format(s=structure))
            r = _metric(infos[reference], key.format(s=structure))
            assert claim["edue"] == pytest.approx(e) and claim["reference"] == pytest.approx(r)
            assert isinstance(claim["passed"], bool), claim["id"]
            assert claim["passed"] == rule(e, r, claim["value"]), claim["id"]
            assert claim["mark"] == ("✓" if claim["passed"] else "✗")
        n_passed = sum(c["passed"] for c in found["claims"])
        assert found["passed"] == n_passed and found["checked"] == len(CLAIM_IDS[group])
        assert found["all_passed"] == (n_passed == len(CLAIM_IDS[group]))
    de, plain, ds = (claims[f"vs_{m}"] for m in ("deep_ensemble", "plain", "deep_supervision"))
    quick = "(quick budget, not converged)"  # a demo never trains with early stopping
    assert claims["headline"] == [
        f"EDUE vs Deep Ensemble {quick}: {de['passed']} of 9 targets met",
        f"EDUE vs U-Net {quick}: EDUE better on {plain['passed']} of 6 comparisons",
        f"EDUE vs U-Net + deep supervision {quick}: EDUE better on {ds['passed']} of 6 comparisons",
    ]
    assert all(c["budget"] == "quick budget, not converged" for c in de["claims"])
    assert all(claim in html for claim in claims["headline"])

    printed = capsys.readouterr().out
    for run in RUNS:
        assert f"[demo] trained {run} in" in printed
    assert "finished in" in printed and str(out / "report.html") in printed
