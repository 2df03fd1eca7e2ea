"""``edue compare``: tables, claims, figures and the self-contained HTML report.

The evaluation folders are hand-made in temporary folders (:func:`write_eval_folder`)
with chosen headline numbers, so every table cell and claim can be checked by hand.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edue.errors import EdueError
from edue.metrics.qc import qc_curve
from edue.report.compare import compare_runs
from edue.report.render import latex_escape
from edue.report.runs import load_run
from edue.report.tables import Cell, main_table, mark_best

# Headline numbers per method: {metric: (disc, cup)}.
HEADLINE: dict[str, dict[str, tuple[float, float]]] = {
    "edue": {
        "soft_dice/{s}/mean": (0.970, 0.875),
        "nll/{s}/mean": (0.10, 0.20),
        "image_spearman/{s}": (0.71, 0.67),
        "image_pearson/{s}": (0.70, 0.60),
        "pixel_ncc/{s}/mean": (0.77, 0.70),
        "ged/{s}/mean": (0.30, 0.40),
        "ece_soft_vote/{s}": (0.010, 0.020),
        "qc_d_auc/{s}": (0.020, 0.030),
    },
    "deep_ensemble": {
        "soft_dice/{s}/mean": (0.968, 0.880),
        "nll/{s}/mean": (0.12, 0.19),
        "image_spearman/{s}": (0.47, 0.35),
        "image_pearson/{s}": (0.50, 0.40),
        "pixel_ncc/{s}/mean": (0.64, 0.72),
        "ged/{s}/mean": (0.35, 0.38),
        "ece_soft_vote/{s}": (0.015, 0.018),
        "qc_d_auc/{s}": (0.040, 0.020),
    },
    "plain": {
        "soft_dice/{s}/mean": (0.971, 0.870),
        "nll/{s}/mean": (0.11, 0.21),
        "image_spearman/{s}": (0.60, 0.70),
        "image_pearson/{s}": (0.55, 0.65),
        "pixel_ncc/{s}/mean": (0.70, 0.60),
        "ged/{s}/mean": (0.45, 0.50),
        "ece_soft_vote/{s}": (0.012, 0.025),
        "qc_d_auc/{s}": (0.030, 0.040),
    },
}
COST = {"edue": (4, 1000, 0.002), "deep_ensemble": (5, 5000, 0.010), "plain": (1, 1000, 0.0018)}


def _metrics(method: str, structures: tuple[str, ...], rng: np.random.Generator) -> dict:
    out: dict[str, float] = {"n_cases": 12.0}
    for key, values in HEADLINE[method].items():
        for s, value in zip(structures, values, strict=False):
            out[key.format(s=s)] = value
    for s in structures:
        out[f"soft_dice/{s}/std"] = 0.010
        out[f"pixel_ncc/{s}/std"] = 0.050
        rho = out.get(f"image_spearman/{s}", 0.5)
        out[f"image_spearman/{s}/ci_low"], out[f"image_spearman/{s}/ci_high"] = rho - 0.1, rho + 0.1
        out[f"qc_threshold/{s}"] = 0.9
        out[f"ece_rater_probability/{s}"] = float(rng.uniform(0, 0.05))
    return out


def _per_case(
    folder: Path, method: str, structures: tuple[str, ...], n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for s in structures:
        expert = rng.uniform(5, 50, n)
        columns[f"expert_sv/{s}"] = expert
        columns[f"model_sv/{s}"] = expert * 0.5 + rng.normal(0, 5, n)
        columns[f"soft_dice/{s}"] = np.clip(0.95 - expert / 200 + rng.normal(0, 0.02, n), 0, 1)
    with (folder / "per_case.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "method", *columns])
        for i in range(n):
            writer.writerow([f"c{i:02d}", method, *(col[i] for col in columns.values())])
    return columns


def _curves(columns: dict[str, np.ndarray], structures: tuple[str, ...]) -> dict[str, Any]:
    edges = np.linspace(0, 1, 6)
    centres = (edges[:-1] + edges[1:]) / 2
    reliability = {
        s: {
            "bin_edges": edges.tolist(),
            "mean_predicted": centres.tolist(),
            "observed_frequency": (centres * 0.9).tolist(),
            "counts": [10.0] * 5,
        }
        for s in structures
    }
    qc = {
        s: {
            k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
            for k, v in qc_curve(columns[f"model_sv/{s}"], columns[f"soft_dice/{s}"], 0.9).items()
        }
        for s in structures
    }
    return {
        "qc": qc,
        "reliability_soft_vote": reliability,
        "reliability_rater_probability": reliability,
    }


def _ood(n: int, k: int, n_members: int, rng: np.random.Generator) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in ("noise",):
        for fraction in (0.0, 0.5, 1.0):
            flags = np.arange(n) < round(fraction * n)
            agreement = rng.uniform(0, 0.01, (n, k)) + 0.02 * flags[:, None]
            if n_members < 2:
                agreement[:] = np.nan
            sv = rng.uniform(5, 10, (n, k)) + 5 * flags[:, None]
            entry: dict[str, Any] = {
                "is_distorted": flags.tolist(),
                "agreement_variance": agreement.tolist(),
                "sv": sv.tolist(),
            }
            if fraction == 0.5:
                entry["auroc_agreement"] = [0.5 if n_members < 2 else 0.9] * k
                entry["auroc_sv"] = [0.8] * k
            results[f"{kind}@{fraction:g}"] = entry
    return {"kinds": ["noise"], "fractions": [0.0, 0.5, 1.0], "results": results}


def _samples(
    folder: Path,
    structures: tuple[str, ...],
    n_members: int,
    rng: np.random.Generator,
    spatial: tuple[int, ...] = (16, 16),
) -> None:
    arrays: dict[str, np.ndarray] = {}
    grid = np.indices(spatial).astype(np.float32)
    radius = np.sqrt(sum((g - n / 2) ** 2 for g, n in zip(grid, spatial, strict=True)))
    for i in range(2):
        masks = np.stack(
            [
                np.stack(
                    [(radius < 6 - 2 * k + r).astype(np.uint8) for k in range(len(structures))]
                )
                for r in range(3)
            ]
        )
        members = np.clip(
            masks[np.arange(n_members) % 3].astype(np.float32)
            + rng.normal(0, 0.1, (n_members, *masks.shape[1:])),
            0,
            1,
        )
        arrays[f"{i}/image"] = rng.random((3, *spatial)).astype(np.float32)
        arrays[f"{i}/masks"] = masks
        arrays[f"{i}/members"] = members.astype(np.float16)
        arrays[f"{i}/case_id"] = np.array(f"case-{i}")
    arrays["structures"] = np.array(structures)
    np.savez_compressed(folder / "samples.npz", **arrays)


def write_eval_folder(
    root: Path,
    method: str,
    structures: tuple[str, ...] = ("disc", "cup"),
    ood: bool = True,
    samples: bool = True,
    seed: int = 0,
    spatial: tuple[int, ...] = (16, 16),
) -> Path:
    """A fake ``edue evaluate`` folder with the :data:`HEADLINE` numbers of ``method``."""
    rng = np.random.default_rng(seed)
    folder = root / method / "eval"
    folder.mkdir(parents=True)
    n_members, parameters, seconds = COST[method]
    info = {
        "method": method,
        "label": method,
        "n_members": n_members,
        "parameters": parameters,
        "seconds_per_image": seconds,
        "structures": list(structures),
        "device": "cpu",
        "metrics": _metrics(method, structures, rng),
    }
    (folder / "metrics.json").write_text(json.dumps(info))
    columns = _per_case(folder, method, structures, 12, rng)
    (folder / "curves.json").write_text(json.dumps(_curves(columns, structures)))
    if ood:
        (folder / "ood.json").write_text(json.dumps(_ood(12, len(structures), n_members, rng)))
    if samples:
        _samples(folder, structures, n_members, rng, spatial)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """One comparison of EDUE, the Deep Ensemble and the plain U-Net (shared by the tests)."""
    root = tmp_path_factory.mktemp("runs")
    runs = [
        write_eval_folder(root, m, seed=i) for i, m in enumerate(("edue", "deep_ensemble", "plain"))
    ]
    out = root / "report"
    html = compare_runs([str(r) for r in runs], out)
    return html, runs


def _row(table_md: str, label: str, block: int) -> list[str]:
    """Cells of ``label``'s row in the ``block``-th Markdown table."""
    blocks = [b for b in table_md.split("#### ") if "| method |" in b]
    line = next(x for x in blocks[block].splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_markdown_table_values_and_direction_aware_bold(report: tuple[Path, list[Path]]) -> None:
    md = (report[0].parent / "table.md").read_text()
    edue, de, plain = (_row(md, label, 0) for label in ("EDUE", "Deep Ensemble", "U-Net"))
    # disc columns: soft Dice, NLL, Spearman [CI], Pearson, NCC, GED, ECE
    assert plain[0] == "**0.971 ± 0.010**" and edue[0] == "0.970 ± 0.010"  # higher is better
    assert edue[1] == "**0.100**" and de[1] == "0.120"  # NLL: lower is better
    assert edue[2] == "**0.71 [0.61, 0.81]**" and de[2] == "0.47 [0.37, 0.57]"
    assert edue[5] == "**0.300**" and plain[5] == "0.450"  # GED: lower is better
    cup_de = _row(md, "Deep Ensemble", 1)
    assert cup_de[4] == "**0.72 ± 0.05**"  # cup NCC: the Deep Ensemble is best
    assert cup_de[5] == "**0.380**"  # cup GED
    cost = [c for c in md.split("### ") if c.startswith("Cost")][0]
    plain_cost = next(x for x in cost.splitlines() if x.startswith("| U-Net |"))
    assert "**1.80**" in plain_cost and "1.00×" in plain_cost  # fastest one-pass
    edue_cost = next(x for x in cost.splitlines() if x.startswith("| EDUE |"))
    assert "| 4 | 1 | **1,000** | 2.00 | 1.11× | 1.00× |" in edue_cost


def test_latex_and_csv_tables(report: tuple[Path, list[Path]]) -> None:
    out = report[0].parent
    tex = (out / "table.tex").read_text()
    assert r"\textbf{0.971 $\pm$ 0.010}" in tex and r"\multicolumn{7}{c}{disc}" in tex
    assert tex.count(r"\begin{tabular}") == 3 and tex.count(r"\end{table}") == 3
    rows = {r["method"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert set(rows) == {"edue", "deep_ensemble", "plain"}
    assert float(rows["edue"]["image_spearman/cup"]) == pytest.approx(0.67)
    assert float(rows["deep_ensemble"]["time_vs_edue"]) == pytest.approx(5.0)
    assert float(rows["edue"]["ood_auroc_agreement/noise/disc"]) == pytest.approx(0.9)
    assert float(rows["deep_ensemble"]["passes"]) == 5 and float(rows["edue"]["passes"]) == 1


def test_claims_match_a_hand_computation(report: tuple[Path, list[Path]]) -> None:
    claims = json.loads((report[0].parent / "claims.json").read_text())
    de = {c["id"]: c for c in claims["vs_deep_ensemble"]["claims"]}
    assert de["spearman_ratio/disc"]["value"] == pytest.approx(0.71 / 0.47)
    assert de["spearman_ratio/cup"]["value"] == pytest.approx(0.67 / 0.35)
    assert de["spearman_ratio/disc"]["passed"] and de["spearman_ratio/cup"]["passed"]
    assert de["pixel_ncc_difference/cup"]["value"] == pytest.approx(-0.02)
    assert de["pixel_ncc_difference/cup"]["passed"] is False
    assert de["nll_difference/cup"]["value"] == pytest.approx(0.01)
    assert de["nll_difference/cup"]["passed"] is False
    assert de["soft_dice_difference/cup"]["value"] == pytest.approx(-0.005)
    assert de["soft_dice_difference/cup"]["passed"] is True
    assert de["time_ratio"]["value"] == pytest.approx(0.2) and de["time_ratio"]["passed"]
    assert claims["vs_deep_ensemble"]["passed"] == 7 and claims["vs_deep_ensemble"]["checked"] == 9
    gain = claims["average_gain_vs_deep_ensemble_percent"]
    expected = ((0.71 / 0.47 - 1) + (0.67 / 0.35 - 1)) / 2 * 100
    assert gain["image_spearman"] == pytest.approx(expected)
    plain = {c["id"]: c for c in claims["vs_plain"]["claims"]}
    assert plain["image_spearman_difference/cup"]["value"] == pytest.approx(-0.03)
    assert plain["image_spearman_difference/cup"]["passed"] is False
    assert plain["nll_difference/disc"]["value"] == pytest.approx(-0.01)
    assert plain["nll_difference/disc"]["passed"] is True
    assert "1.51×" in de["spearman_ratio/disc"]["statement"]


def test_report_html_is_self_contained_and_complete(report: tuple[Path, list[Path]]) -> None:
    html_path, runs = report
    text = html_path.read_text(encoding="utf-8")
    assert 'src="http' not in text and "<script" not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 6  # every figure embedded
    for label in ("EDUE", "Deep Ensemble", "U-Net"):
        assert label in text
    assert (
        text.index("<h2>Claims</h2>")
        < text.index("<h2>Tables</h2>")
        < text.index("<h2>Figures</h2>")
        < text.index("<h2>Provenance</h2>")
    )
    assert str(runs[0].resolve()) in text and "5,000" in text
    assert "Notes" not in text  # nothing was skipped or failed
    figures = sorted(p.name for p in (html_path.parent / "figures").iterdir())
    assert figures == [
        "ood_agreement.png",
        "ood_sv.png",
        "qc_curves.png",
        "reliability.png",
        "samples.png",
        "sv_scatter.png",
    ]


def test_missing_ood_and_samples_are_tolerated(tmp_path: Path) -> None:
    runs = [
        write_eval_folder(tmp_path, "edue", ood=False, samples=True, seed=1),
        write_eval_folder(tmp_path, "plain", ood=False, samples=False, seed=2),
    ]
    html_path = compare_runs([str(r) for r in runs], tmp_path / "out")
    text = html_path.read_text(encoding="utf-8")
    assert "no ood.json" in text and "U-Net: no samples.npz" in text
    assert "2 shared case(s); left out (no or mismatching samples): U-Net" in text
    assert text.count("data:image/png;base64,") == 4  # QC, samples, reliability, scatter
    claims = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert claims["vs_deep_ensemble"] is None and claims["vs_plain"]["checked"] == 6
    assert any("deep_ensemble" in s for s in claims["skipped"])
    md = (tmp_path / "out" / "table.md").read_text()
    assert "noise" not in md and _row(md, "EDUE", 2) == ["**0.020**", "**0.030**"]


def test_three_dimensional_samples_and_one_structure(tmp_path: Path) -> None:
    run = write_eval_folder(
        tmp_path, "edue", structures=("tumour",), ood=False, spatial=(6, 12, 12)
    )
    html_path = compare_runs([str(run)], tmp_path / "out")
    text = html_path.read_text(encoding="utf-8")
    # the sample grid of the volumes' middle slices: drawn, and embedded under its heading
    # with one row per case (two cases, one structure)
    found = re.search(
        r'<h3>Sample cases \(Figure 4\)</h3>\s*<div class="guide">[^<]*</div>\s*'
        r'<figure><img alt="Sample cases \(Figure 4\)" src="data:image/png;base64,([^"]+)">'
        r"<figcaption>([^<]*)</figcaption></figure>",
        text,
    )
    assert found, "no sample figure in the report"
    assert found.group(2) == "2 shared case(s)"
    png = base64.b64decode(found.group(1))
    assert png == (tmp_path / "out" / "figures" / "samples.png").read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[1] > pixels.shape[0]  # four panels a row, two rows
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 256  # images and heatmaps drawn
    assert "tumour" in text and "no EDUE run" not in text
    claims = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert claims["vs_deep_ensemble"] is None and claims["vs_plain"] is None
    assert len(claims["skipped"]) == 3  # the Deep Ensemble and both one-pass references
    md = (tmp_path / "out" / "table.md").read_text()
    assert _row(md, "EDUE", 0)[0] == "0.970 ± 0.010"  # a single method is never bold


@pytest.mark.parametrize("content", ["{not json", json.dumps({"method": "edue"}), None])
def test_bad_metrics_json_raises_edue_error_naming_the_folder(
    tmp_path: Path, content: str | None
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    if content is not None:
        (folder / "metrics.json").write_text(content)
    with pytest.raises(EdueError, match="broken") as info:
        compare_runs([str(folder)], tmp_path / "out")
    assert "metrics.json" in str(info.value)
    assert not (tmp_path / "out" / "report.html").exists()


def test_mark_best_is_direction_aware_and_bolds_ties() -> None:
    cells = [Cell("a", 0.30), Cell("b", 0.1004), Cell("c", math.nan), Cell("d", 0.1001)]
    mark_best(cells, higher_is_better=False, digits=3)
    assert [c.bold for c in cells] == [False, True, False, True]
    mark_best(cells, higher_is_better=True, digits=3)
    assert [c.bold for c in cells] == [True, False, False, False]
    single = [Cell("a", 1.0), Cell("b", math.nan)]
    mark_best(single, True, 2)
    assert not any(c.bold for c in single)


def test_duplicate_labels_and_escaping(tmp_path: Path) -> None:
    a = write_eval_folder(tmp_path / "a", "edue", ood=False, samples=False)
    b = write_eval_folder(tmp_path / "b", "edue", ood=False, samples=False)
    from edue.report.runs import load_runs

    runs = load_runs([a, b])
    assert [r.label for r in runs] == ["EDUE", "EDUE #2"]
    assert [label for label, _ in main_table(runs).rows] == ["EDUE", "EDUE #2"]
    assert load_run(a / "metrics.json").folder == a and load_run(a).passes == 1
    assert latex_escape("a_b 50 % ± 1") == r"a\_b 50 \% $\pm$ 1"


def test_claims_without_edue_are_skipped(tmp_path: Path) -> None:
    from edue.report.claims import compute_claims
    from edue.report.runs import load_runs

    runs = load_runs(
        [
            write_eval_folder(tmp_path, m, ood=False, samples=False)
            for m in ("deep_ensemble", "plain")
        ]
    )
    claims = compute_claims(runs, ("disc", "cup"))
    assert claims["edue"] is None and claims["vs_deep_ensemble"] is None
    assert claims["skipped"] == ["no EDUE run among the compared folders: no claims to check"]


@pytest.mark.parametrize("patience", [0, 5])
def test_every_claim_carries_its_budget(tmp_path: Path, patience: int) -> None:
    from edue.report.converged import load_converged

    runs = [write_eval_folder(tmp_path, m, seed=i) for i, m in enumerate(("edue", "deep_ensemble"))]
    for run in runs:
        info = json.loads((run / "metrics.json").read_text())
        info["training"] = {"max_epochs": 12, "patience": patience, "weights_epoch": 12}
        (run / "metrics.json").write_text(json.dumps(info))
    html = compare_runs([str(r) for r in runs], tmp_path / "report")
    claims = json.loads((tmp_path / "report" / "claims.json").read_text())
    group = claims["vs_deep_ensemble"]
    converged = patience > 0
    assert group["converged"] is converged
    short = "converged budget" if converged else "quick budget, not converged"
    assert all(c["budget"] == short for c in group["claims"])
    assert f"({short})" in group["summary"]
    assert ("NOT a converged comparison" in group["budget"]) is not converged
    text = html.read_text(encoding="utf-8")
    assert text.count(f"[{short}]") == len(group["claims"])
    if load_converged():  # the package ships the converged studies' headline
        assert "The converged studies (quote these, not the demo)" in text


def test_the_converged_headline_is_made_from_a_study_summary() -> None:
    from edue.report.converged import converged_html, headline

    target = "Spearman >= best soft-label baseline (U-Net) + 0.05, interval above 0"
    summary = {
        "subject": "mine",
        "labels": {"mine": "EDUE (mine)"},
        "seeds": [0, 1],
        "structures": ["disc"],
        "mean_std": {
            "mine": {"soft_dice/disc/mean": [0.95, 0.0], "image_spearman/disc": [0.9, 0.0]},
            "plain": {"soft_dice/disc/mean": [0.96, 0.0], "image_spearman/disc": [0.8, 0.0]},
            "deep_supervision": {
                "soft_dice/disc/mean": [0.97, 0.0],
                "image_spearman/disc": [0.7, 0.0],
            },
        },
        "targets": [
            {"target": target, "structure": "disc", "value": 0.1, "passed": True},
            {"target": "pixel NCC >= …", "structure": "disc", "value": -0.1, "passed": False},
        ],
    }
    entry = headline(summary, "a study", 12.0)
    row = entry["rows"][0]
    assert entry["subject"] == "EDUE (mine)" and entry["minutes"] == 12.0
    assert row["best_soft_label_dice"] == 0.97 and row["spearman_vs_best_soft_label"] == 0.1
    assert (row["targets_met"], row["targets"]) == (1, 2)
    html = converged_html([entry])
    assert "a study: EDUE (mine), seeds 0, 1" in html and "0.970" in html and "+0.100" in html
    assert converged_html([]) == ""
