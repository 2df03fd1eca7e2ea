"""Where EDUE's Dice goes, from converged study folders: every head's Dice alone, the
arms against the default with paired intervals, and the image-level score chosen on
validation. Writes the tables (Markdown) and the package's converged-study headline.

    python studies/heads.py runs/study_2d runs/study_3d --default edue_separate_g01 \\
        --names "embedded 2D fundus" "embedded 3D PET/CT" --out runs/heads.md \\
        --headline src/edue/report/converged_study.json

The study folders are those of ``edue study … --arm …`` (docs/studies.md gives the
commands). Nothing is trained here: it reads ``study.json``, every run's
``eval/per_case.csv`` (per-member Dice and every score per case) and ``log.jsonl``
(validation Spearman of every score at the best epoch).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from edue import result_keys as rk
from edue.metrics.paired import paired_difference, spearman_statistic
from edue.report.converged import headline
from edue.study import summarise

SCORES = ("variance", "bernoulli", "combined")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def per_head_table(study: Path, runs: list[str], seeds: list[int], structures: list[str]) -> str:
    """Mean soft Dice of every member alone (coarse → final), of the final member and of
    the read-out the run uses, mean ± std over seeds."""
    lines = [
        "| run | structure | each head alone (coarse → final) | read-out used |",
        "|---|---|---|---|",
    ]
    for run in runs:
        per_seed = [_rows(study / f"seed{s}" / run / "eval" / "per_case.csv") for s in seeds]
        for structure in structures:
            keys = sorted(
                (
                    k
                    for k in per_seed[0][0]
                    if k.startswith("member_soft_dice_") and k.endswith(f"/{structure}")
                ),
                key=lambda k: int(k.split("_")[-1].split("/")[0]),
            )
            if not keys:
                continue
            heads = [np.mean([np.nanmean(_column(r, k)) for r in per_seed]) for k in keys]
            used = [np.nanmean(_column(r, rk.key(rk.SOFT_DICE, structure))) for r in per_seed]
            lines.append(
                f"| {run} | {structure} | {' / '.join(f'{h:.3f}' for h in heads)} | "
                f"{np.mean(used):.3f} ± {np.std(used):.3f} |"
            )
    return "\n".join(lines)


def _best_record(log: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return min(records, key=lambda r: r.get("val/loss", np.inf))


def score_table(
    study: Path, runs: list[str], seeds: list[int], structures: list[str], n_boot: int
) -> tuple[str, dict[str, str]]:
    """Image-level Spearman of every score: on validation (best epoch, mean over seeds:
    what chooses) and on test (pooled over seeds, with the interval of the difference
    to the variance score). Returns the table and the score chosen per run."""
    lines = [
        "| run | structure | validation: variance / bernoulli / combined | "
        "test: variance / bernoulli / combined | test: chosen − variance [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    chosen: dict[str, str] = {}
    for run in runs:
        logs = [study / f"seed{s}" / run / "log.jsonl" for s in seeds]
        if not all(p.is_file() for p in logs):
            continue  # a read-out of another run's weights: its scores are that run's
        best = [_best_record(p) for p in logs]
        if f"val/spearman_sv_variance/{structures[0]}" not in best[0]:
            continue  # one member: no head variance
        val = {
            (sc, st): float(np.mean([b[f"val/spearman_sv_{sc}/{st}"] for b in best]))
            for sc in SCORES
            for st in structures
        }
        pick = max(SCORES, key=lambda sc: np.mean([val[(sc, st)] for st in structures]))
        chosen[run] = pick
        rows = [_rows(study / f"seed{s}" / run / "eval" / "per_case.csv") for s in seeds]
        for st in structures:
            expert = np.stack([_column(r, rk.key(rk.EXPERT_SV, st)) for r in rows])
            scores = {sc: np.stack([_column(r, f"sv_{sc}/{st}") for r in rows]) for sc in SCORES}
            test = {
                sc: float(
                    np.mean([spearman_statistic(a, e) for a, e in zip(v, expert, strict=True)])
                )
                for sc, v in scores.items()
            }
            d = paired_difference(
                (scores[pick], expert), (scores["variance"], expert), spearman_statistic, n_boot
            )
            lines.append(
                f"| {run} | {st} | "
                + " / ".join(f"{val[(sc, st)]:.3f}" for sc in SCORES)
                + " | "
                + " / ".join(f"{test[sc]:.3f}" for sc in SCORES)
                + f" | {pick}: {d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |"
            )
    return "\n".join(lines), chosen


def arms_table(summary: dict[str, Any]) -> str:
    """Every run against the subject: Dice, Spearman and NCC differences with intervals."""
    subject = summary["subject"]
    lines = [
        f"Differences: other − {subject} (95 % paired bootstrap over test images, pooled over "
        "seeds).",
        "",
        "| run | structure | soft Dice | image Spearman | pixel NCC |",
        "|---|---|---|---|---|",
    ]
    for other, entries in summary["differences"].items():
        for st in summary["structures"]:
            cells = []
            for key in ("soft_dice", "image_spearman", "pixel_ncc"):
                d = entries[rk.key(key, st)]
                # the summary holds subject − other: flip to read "other − subject"
                cells.append(f"{-d['difference']:+.3f} [{-d['ci_high']:+.3f}, {-d['ci_low']:+.3f}]")
            lines.append(f"| {other} | {st} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(summary: dict[str, Any]) -> str:
    """The study targets of the subject (``edue.study.check_targets``)."""
    lines = ["| target | structure | value | met |", "|---|---|---|---|"]
    for t in summary.get("targets", []):
        mark = {True: "yes", False: "**no**", None: "—"}[t["passed"]]
        lines.append(f"| {t['target']} | {t['structure']} | {t['value']:+.3f} | {mark} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--default", required=True, help="the run compared with the others")
    parser.add_argument("--names", nargs="+", help="the studies' names as shown")
    parser.add_argument("--out", type=Path, default=Path("runs/heads.md"))
    parser.add_argument("--headline", type=Path, help="write the package's headline JSON here")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--label", help="the default's name in the headline")
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="+",
        help="each study's minutes, when study.json's "
        "are not the whole (a study resumed after a crash counts from its resumption)",
    )
    args = parser.parse_args()
    names = args.names or [s.name for s in args.studies]
    parts, heads = [], []
    for study, name in zip(args.studies, names, strict=True):
        info = json.loads((study / "study.json").read_text())
        runs, seeds, structures = info["methods"], info["seeds"], info["structures"]
        arms = json.loads((study / "study-request.json").read_text()).get("arms", {})
        summary = summarise(study, runs, seeds, args.n_boot, subject=args.default, arms=arms)
        summary["minutes"] = info.get("minutes")
        scores, chosen = score_table(study, runs, seeds, structures, args.n_boot)
        parts += [
            f"## {name}",
            "",
            "### Dice of every head alone (test, mean over seeds)",
            "",
            per_head_table(study, runs, seeds, structures),
            "",
            f"### Every run against {args.default}",
            "",
            arms_table(summary),
            "",
            "### The image-level score, chosen on validation",
            "",
            scores,
            "",
            "Chosen on validation: "
            + (", ".join(f"{r} → {s}" for r, s in chosen.items()) or "—")
            + ".",
            "",
        ]
        parts += [f"### Targets of {args.default}", "", targets_table(summary), ""]
        minutes = args.minutes[len(heads)] if args.minutes else info.get("minutes")
        entry = headline(summary, name, minutes)
        if args.label:
            entry["subject"] = args.label
        heads.append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts), encoding="utf-8")
    print("\n".join(parts))
    if args.headline:
        args.headline.write_text(
            json.dumps({"source": "docs/studies.md", "studies": heads}, indent=2) + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
