"""The converged studies' headline, shipped with the package.

A quick demo trains each method for a few epochs, too few for the baselines to converge,
so its claims are no result. Its report therefore shows, beside its own numbers, the
headline of the converged studies (every method with early stopping on validation, three
seeds, paired intervals; ``docs/studies.md``), read from ``converged_study.json`` in this
package. ``studies/heads.py`` writes that file from the study folders.
"""

from __future__ import annotations

import json
from html import escape as esc
from importlib import resources
from typing import Any

import numpy as np

from edue import result_keys as rk

#: the packaged file
RESOURCE = "converged_study.json"


def headline(summary: dict[str, Any], name: str, minutes: float | None = None) -> dict[str, Any]:
    """One study's headline rows from its ``study.json`` summary: per structure the
    subject's soft Dice against the better soft-label U-Net, and its image-level Spearman
    difference to the best one with the paired interval.

    Args:
        summary: :func:`edue.study.summarise`'s result (with ``targets``).
        name: the study's name as shown.
        minutes: how long the study took.
    """
    from edue.report.roles import methods_with_role

    subject = summary["subject"]
    table = summary["mean_std"]
    soft = [m.name for m in methods_with_role("one_pass_reference") if m.name in table]
    rows = []
    for s in summary["structures"]:
        mine = [t for t in summary["targets"] if t["structure"] == s]
        spearman = next(t for t in mine if t["target"].startswith("Spearman >= best soft-label"))
        rows.append(
            {
                "structure": s,
                "soft_dice": table[subject][rk.key(rk.SOFT_DICE, s, rk.MEAN)][0],
                "best_soft_label_dice": max(
                    (table[m][rk.key(rk.SOFT_DICE, s, rk.MEAN)][0] for m in soft), default=None
                ),
                "image_spearman": table[subject][rk.key(rk.IMAGE_SPEARMAN, s)][0],
                "spearman_vs_best_soft_label": spearman["value"],
                "targets_met": sum(bool(t["passed"]) for t in mine),
                "targets": len(mine),
            }
        )
    return {
        "name": name,
        "subject": summary.get("labels", {}).get(subject, subject),
        "seeds": summary["seeds"],
        "minutes": minutes if minutes is not None else summary.get("minutes"),
        "rows": rows,
    }


def load_converged() -> list[dict[str, Any]]:
    """The packaged headline (empty when the package ships none)."""
    try:
        text = resources.files("edue.report").joinpath(RESOURCE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return []
    data = json.loads(text)
    return list(data.get("studies", []))


def converged_html(studies: list[dict[str, Any]]) -> str:
    """The headline as an HTML section (empty without studies)."""
    if not studies:
        return ""
    parts = [
        "<h3>The converged studies (quote these, not the demo)</h3>",
        '<p class="sub">Every method trained with early stopping on the validation loss, '
        "three seeds, paired bootstrap intervals over test images; full tables and commands "
        "in docs/studies.md.</p>",
    ]
    for study in studies:
        head = (
            "<tr><th>structure</th><th>soft Dice</th><th>better soft-label U-Net's</th>"
            "<th>image Spearman</th><th>Spearman − best soft-label U-Net</th>"
            "<th>study targets met</th></tr>"
        )
        body = "".join(
            f"<tr><td>{esc(str(r['structure']))}</td><td>{_f(r['soft_dice'], 3)}</td>"
            f"<td>{_f(r.get('best_soft_label_dice'), 3)}</td>"
            f"<td>{_f(r['image_spearman'], 2)}</td>"
            f"<td>{_f(r['spearman_vs_best_soft_label'], 3, signed=True)}</td>"
            f"<td>{r['targets_met']} of {r['targets']}</td></tr>"
            for r in study["rows"]
        )
        seeds = ", ".join(map(str, study.get("seeds", [])))
        parts.append(
            f"<h4>{esc(study['name'])}: {esc(study['subject'])}, seeds {esc(seeds)}</h4>"
            f'<div class="scroll"><table class="text"><thead>{head}</thead><tbody>{body}'
            "</tbody></table></div>"
        )
    return "\n".join(parts)


def _f(value: Any, digits: int, signed: bool = False) -> str:
    if value is None or not np.isfinite(float(value)):
        return "n/a"
    return f"{float(value):{'+' if signed else ''}.{digits}f}"
