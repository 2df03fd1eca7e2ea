"""One self-contained ``report.html``: inline CSS, images as base64 data URIs, no scripts
and no external resources, so it opens in any browser and can be mailed as one file.

Order: summary, claims, tables, figures, notes (skipped sections), provenance. Each
section starts with a short reading guide: what the metric means, which direction is
better and how the paper uses it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edue._version import __version__
from edue.report.converged import converged_html, load_converged
from edue.report.render import to_html
from edue.report.tables import Table

esc = html.escape

#: The page's style sheet. Wide content never widens the page: every table sits in a
#: ``.scroll`` wrapper that scrolls sideways when the table is wider than the text column
#: (its header cells wrap first, its method column stays in view while scrolling), images
#: shrink to the column width and long words (paths) in prose break.
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;
 max-width:1250px;margin:2em auto;padding:0 1.2em;line-height:1.5;font-size:15px;
 overflow-wrap:break-word}
h1{font-size:1.7em;margin-bottom:.1em}h2{border-bottom:2px solid #dde;padding-bottom:.2em;
 margin-top:2em}h3{margin-bottom:.3em}.sub{color:#667;margin-top:0}
.guide{background:#f4f6fb;border-left:4px solid #8da0cb;padding:.5em 1em;margin:.6em 0 1em;
 font-size:.92em}
.scroll{overflow-x:auto;max-width:100%;margin:.4em 0}
table{border-collapse:separate;border-spacing:0;width:auto;font-size:.86em;margin:0}
th,td{padding:.35em .7em;border-bottom:1px solid #e3e3ea;text-align:right;white-space:nowrap}
thead th{background:#e9ecf5;white-space:normal;vertical-align:bottom;min-width:3em}
th:first-child{text-align:left}th.group{text-align:center;vertical-align:middle}
tbody tr:nth-child(even){background:#f7f8fc}td strong{color:#0b4f9c}
.scroll tr>:first-child{position:sticky;left:0;z-index:1;background:#fff;
 box-shadow:inset -1px 0 0 #e3e3ea}
.scroll thead tr>:first-child{background:#e9ecf5}
.scroll tbody tr:nth-child(even)>:first-child{background:#f7f8fc}
table.text th,table.text td{text-align:left}
.note{font-size:.85em;color:#556;margin-top:.2em}
.budget{color:#667;font-size:.9em}.budget-warning{background:#fff4e0;border-left:4px solid #d80;
padding:.4em .7em}
ul.claims{list-style:none;padding-left:0}ul.claims li{padding:.25em .5em;margin:.15em 0;
 border-radius:4px}li.pass{background:#ebf7ee}li.fail{background:#fcecec}li.unknown{background:#f3f3f3}
.mark{font-weight:bold;display:inline-block;width:1.4em}li.pass .mark{color:#1b7f3b}
li.fail .mark{color:#b3261e}figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;
 border:1px solid #e3e3ea}figcaption{font-size:.9em;color:#445}
.skip{color:#8a5a00;background:#fff7e6;padding:.4em .8em;border-radius:4px}
code{background:#f0f0f4;padding:0 .25em;border-radius:3px;font-size:.92em}
"""

GUIDES: dict[str, str] = {
    "claims": (
        "The paper's headline claims, recomputed from these runs. Against the Deep Ensemble "
        "the targets of the reproduction are: image-level Spearman of EDUE at least 1.3× the "
        "ensemble's for every structure, pixel NCC at least as high, NLL at most as high, soft "
        "Dice within 0.02, and at most a quarter of its inference time. Against the plain U-Net "
        "there is no target: the lines say whether EDUE is better and by how much. ✓ met or "
        "better, ✗ not, ? not computable. Every claim carries the budget its runs were "
        "trained with: a quick demo's runs are not trained to convergence (the baselines "
        "least of all), so its verdicts are not results. The converged study (every method "
        "with early stopping on validation, three seeds, paired intervals) is in "
        "docs/studies.md and its headline below."
    ),
    "Segmentation and uncertainty": (
        "<b>Soft Dice</b> (higher is better): Dice of the prediction against the soft vote of the "
        "raters, both binarised at 0.1…0.9 and averaged. <b>NLL</b> (lower): negative "
        "log-likelihood of the soft vote. <b>Spearman / Pearson</b> (higher): image-level "
        "correlation between the model's summed variance (SV) and the experts' over the test "
        "images — the paper's main uncertainty measure. <b>Pixel NCC</b> (higher): normalised "
        "cross-correlation of the model's and the experts' variance maps per image. <b>GED</b> "
        "(lower): generalised energy distance between member and rater masks. <b>ECE</b> "
        "(lower): calibration error against the soft vote."
    ),
    "Cost": (
        "<b>Members</b>: predictions whose spread gives the uncertainty (heads, ensemble members "
        "or MC samples); <b>passes</b>: forward passes per image. Fewer parameters and a lower "
        "time are better; EDUE's point is the uncertainty of an ensemble at one pass."
    ),
    "Quality control and out-of-distribution detection": (
        "<b>d-AUC</b> (lower is better): area between a method's quality-control curve and its "
        "ideal (see the figure below). <b>AUROC</b> (higher, 0.5 = chance): how well the "
        "per-image variance of the pairwise Dice between members (agreement) or the SV separates "
        "distorted from clean test images when half of them are distorted."
    ),
    "qc": (
        "The paper's Figure 2. Images are ranked by SV and the most uncertain are flagged for "
        "review; the curve shows the fraction of poor segmentations (Dice below the threshold) "
        "left among the unflagged images. The dashed line is the ideal ranking (all poor images "
        "flagged first), the dotted line a random ranking. Lower curves are better; d-AUC is "
        "the area between a curve and its ideal."
    ),
    "ood_agreement": (
        "The paper's Figure 3. The variance of the Dice between every pair of members, per "
        "image, with 0 %, 50 % (clean and distorted halves apart) and 100 % of the test images "
        "distorted. A useful method disagrees more on distorted images: boxes rise from left to "
        "right and the 50 % halves separate. Single-member methods have no agreement."
    ),
    "ood_sv": (
        "The same study with the SV as the per-image score, which exists for every method "
        "(for a single network it is the summed Bernoulli variance p(1−p))."
    ),
    "samples": (
        "The paper's Figure 4, for test cases shared by all runs: the input with every rater's "
        "contour, the expert variance map, then per method its uncertainty map (titled with "
        "its SV) and its mask. A good method's heatmap lights up where the raters disagree."
    ),
    "reliability": (
        "Reliability diagrams: the observed frequency against the mean predicted probability "
        "per bin; the dashed diagonal is perfect calibration. Against the soft vote of the "
        "raters and, for synthetic data, the analytic probability that a rater marks a pixel."
    ),
    "Referral with a guarantee": (
        "Each method's SV becomes a referral rule: an image whose SV exceeds a threshold goes "
        "to a second expert. The threshold is certified on the calibration split by "
        "Learn-then-Test so that, with probability 1−δ, at most α of the accepted "
        "segmentations are poor; images the OOD gate finds unlike the training images are "
        "referred too. <b>Referred</b> (lower is better): share of test images a method must "
        "refer for the same guarantee. <b>Poor accepted</b>: the realised share of poor among "
        "the accepted test images, which should not exceed α."
    ),
    "SV in the experts' units": (
        "EDUE's heads are trained to match the experts' variance, so its SV should be close "
        "to the experts' own SV. <b>Slope / intercept</b>: the line of the model's SV against "
        "the experts' (1 and 0 when the units agree). <b>MAE</b> (lower): mean absolute "
        "difference in the experts' units, as predicted and after the isotonic map fitted "
        "on the calibration split."
    ),
    "referral": (
        "The share of test images referred to a second expert at each guarantee level α "
        "(solid; lower is better), and the least any threshold on the SV could refer in "
        "hindsight on the test images (dotted)."
    ),
    "sv_scatter": (
        "Per test image, the model's SV against the experts' SV. The image-level Spearman "
        "correlation of the tables is the rank agreement of these points: a monotone cloud "
        "means the model knows which images the experts find hard."
    ),
}


GAIN_NAMES = {"image_spearman": "image-level Spearman", "pixel_ncc": "pixel NCC"}


@dataclass
class FigureEntry:
    """One figure of the report: ``path`` is ``None`` when it was skipped (``note`` says why)."""

    key: str
    title: str
    path: Path | None
    note: str = ""


@dataclass
class ReportContent:
    """Everything :func:`render_report` shows."""

    title: str
    generated: str
    summary: list[str]
    claims: dict[str, Any]
    tables: list[Table]
    figures: list[FigureEntry]
    provenance: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)


def image_data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,…`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _guide(key: str) -> str:
    return f'<div class="guide">{GUIDES[key]}</div>' if key in GUIDES else ""


def _claims_html(claims: dict[str, Any]) -> str:
    parts = ["<h2>Claims</h2>", _guide("claims")]
    groups = [g for k, g in claims.items() if k.startswith("vs_") and isinstance(g, dict)]
    for group in groups:
        reference = group["reference"]["label"]
        title = f"against the {reference} ({'targets' if group['targeted'] else 'no targets'})"
        items = []
        for c in group["claims"]:
            kind = {"✓": "pass", "✗": "fail"}.get(c["mark"], "unknown")
            budget = f' <span class="budget">[{esc(c["budget"])}]</span>' if c.get("budget") else ""
            items.append(
                f'<li class="{kind}"><span class="mark">{esc(c["mark"])}</span>'
                f"{esc(c['statement'])}{budget}</li>"
            )
        parts += [
            f"<h3>{esc(claims['edue']['label'])} {esc(title)}: {group['passed']} of "
            f"{group['checked']}</h3>",
            f'<p class="{"sub" if group.get("converged") else "budget-warning"}">Budget: '
            f"{esc(group.get('budget', 'not recorded'))}.</p>",
            f'<ul class="claims">{"".join(items)}</ul>',
        ]
    gains = [
        (claims[f"vs_{key[len('average_gain_vs_') : -len('_percent')]}"], gain)
        for key, gain in claims.items()
        if key.startswith("average_gain_vs_") and gain
    ]
    for group, gain in gains:
        budget = "" if group.get("converged") else "At this quick budget (not converged): "
        parts.append(
            f"<p>{budget}Average relative gain over the {esc(group['reference']['label'])} "
            "(the paper reports +55 % image-level and +23 % pixel-level over Deep Ensembles): "
            + ", ".join(f"{GAIN_NAMES.get(k, k)} {_pct(v)}" for k, v in gain.items())
            + ".</p>"
        )
    parts += [f'<p class="skip">{esc(s)}</p>' for s in claims.get("skipped", [])]
    parts.append(converged_html(load_converged()))
    return "\n".join(parts)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:+.0f} %"


def _figures_html(figures: Sequence[FigureEntry]) -> str:
    parts = ["<h2>Figures</h2>"]
    for entry in figures:
        parts += [f"<h3>{esc(entry.title)}</h3>", _guide(entry.key)]
        if entry.path is None:
            parts.append(f'<p class="skip">Skipped: {esc(entry.note)}</p>')
            continue
        caption = f"<figcaption>{esc(entry.note)}</figcaption>" if entry.note else ""
        parts.append(
            f'<figure><img alt="{esc(entry.title)}" '
            f'src="{image_data_uri(entry.path)}">{caption}</figure>'
        )
    return "\n".join(parts)


def _provenance_html(rows: Sequence[dict[str, str]], generated: str) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(row.get(k, '')))}</td>" for k in keys) + "</tr>"
        for row in rows
    )
    return (
        f"<h2>Provenance</h2><p>Report made {esc(generated)} from these evaluation "
        f'folders:</p><div class="scroll"><table class="text"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def render_report(content: ReportContent) -> str:
    """The whole HTML document."""
    summary = "".join(f"<li>{esc(line)}</li>" for line in content.summary)
    tables = "\n".join(
        f"<h3>{esc(t.title)}</h3>{_guide(t.title)}{to_html(t)}" for t in content.tables
    )
    notes = ""
    if content.notes:
        notes = (
            "<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in content.notes) + "</ul>"
        )
    body = "\n".join(
        [
            f"<h1>{esc(content.title)}</h1>",
            f'<p class="sub">Made {esc(content.generated)} by <code>edue compare</code> '
            f"(edue {esc(__version__)}).</p>",
            f"<h2>Summary</h2><ul>{summary}</ul>",
            _claims_html(content.claims),
            f"<h2>Tables</h2>{tables}",
            _figures_html(content.figures),
            notes,
            _provenance_html(content.provenance, content.generated),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(content.title)}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
