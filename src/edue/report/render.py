"""Writing a :class:`~edue.report.tables.Table` as Markdown, LaTeX or HTML.

Each renderer keeps the table's bold marks (the best value of each column) and its
column groups; LaTeX escapes its specials (:func:`latex_escape`), HTML escapes every
cell.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from edue.report.tables import Cell, Table


def _markdown_block(
    headers: Sequence[str], rows: Sequence[tuple[str, Sequence[Cell]]]
) -> list[str]:
    lines = [
        "| " + " | ".join(["method", *headers]) + " |",
        "|" + "|".join([":---", *["---:"] * len(headers)]) + "|",
    ]
    for label, cells in rows:
        texts = [f"**{c.text}**" if c.bold else c.text for c in cells]
        lines.append("| " + " | ".join([label.replace("|", "/"), *texts]) + " |")
    return lines


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown; best values in ``**bold**``.

    Markdown has no column groups, so a grouped table becomes one block per group (a
    ``####`` heading each) under the ``###`` title.
    """
    lines = [f"### {table.title}", ""]
    if not table.groups:
        lines += [*_markdown_block(table.headers, table.rows), ""]
    start = 0
    for group, span in table.groups:
        cols = slice(start, start + span)
        lines += [
            f"#### {group}",
            "",
            *_markdown_block(
                table.headers[cols], [(label, cells[cols]) for label, cells in table.rows]
            ),
            "",
        ]
        start += span
    return "\n".join([*lines, table.note, ""] if table.note else lines)


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "—": "--",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and spell out the few non-ASCII symbols the tables use."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A ``table`` environment (needs ``booktabs``); best values in ``\\textbf``."""
    n = len(table.headers)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        f"\\caption{{{latex_escape(table.title)}}}",
        r"\begin{tabular}{l" + "r" * n + "}",
        r"\toprule",
    ]
    if table.groups:
        parts, rules, col = [""], [], 2
        for group, span in table.groups:
            parts.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}")
            rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines += [" & ".join(parts) + r" \\", " ".join(rules)]
    lines.append(" & ".join(["method", *map(latex_escape, table.headers)]) + r" \\")
    lines.append(r"\midrule")
    for label, cells in table.rows:
        texts = [
            f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text) for c in cells
        ]
        lines.append(" & ".join([latex_escape(label), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        lines.append(f"\\par\\smallskip\\footnotesize {latex_escape(table.note)}")
    return "\n".join([*lines, r"\end{table}", ""])


def _keep_brackets(text: str) -> str:
    """Non-breaking spaces inside ``[…]``, so that a wrapped header breaks before ``[95% CI]``
    rather than inside it."""
    return re.sub(r"\[[^\]]*\]", lambda m: m.group(0).replace(" ", "&nbsp;"), text)


def to_html(table: Table) -> str:
    """An HTML ``<table>`` (grouped header row when present; best values in ``<strong>``)."""
    esc = html.escape
    head = []
    if table.groups:
        head.append(
            "<tr><th></th>"
            + "".join(
                f'<th colspan="{span}" class="group">{esc(g)}</th>' for g, span in table.groups
            )
            + "</tr>"
        )
    head.append(
        "<tr><th>method</th>"
        + "".join(f"<th>{_keep_brackets(esc(h))}</th>" for h in table.headers)
        + "</tr>"
    )
    body = []
    for label, cells in table.rows:
        tds = "".join(
            f"<td><strong>{esc(c.text)}</strong></td>" if c.bold else f"<td>{esc(c.text)}</td>"
            for c in cells
        )
        body.append(f"<tr><th>{esc(label)}</th>{tds}</tr>")
    note = f'<p class="note">{esc(table.note)}</p>' if table.note else ""
    return (
        f'<div class="scroll"><table><thead>{"".join(head)}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{note}"
    )
