"""The HTML report's layout: wide tables never run off the page.

Every ``<table>`` sits in a sideways-scrolling wrapper, so a table wider than the text
column (many methods, distortions or structures, long folder paths) keeps every column
reachable. Where chromium is installed the page is also laid out by a real browser at
two window widths and measured: nothing may stick out of the viewport unless it is
inside a scroll container that itself fits.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from edue.report.compare import compare_runs
from edue.report.html import CSS, FigureEntry, ReportContent, render_report
from edue.report.tables import Cell, Table
from tests.test_report import write_eval_folder

KINDS = ("noise", "blur", "hue")


def _css_rules(css: str) -> dict[str, str]:
    """``selector -> declarations`` of a flat style sheet (whitespace removed)."""
    flat = re.sub(r"\s+", " ", css)
    return {
        sel.strip(): body.replace(" ", "") for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", flat)
    }


class _TableParents(HTMLParser):
    """Records, for every ``<table>``, the tag and class of its parent element."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.parents: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        if tag == "table":
            self.parents.append(self.stack[-1] if self.stack else ("", ""))
        self.stack.append((tag, dict(attrs).get("class") or ""))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break


def _table_parents(text: str) -> list[tuple[str, str]]:
    parser = _TableParents()
    parser.feed(text)
    return parser.parents


def _with_kinds(folder: Path, kinds: tuple[str, ...]) -> Path:
    """Copy the one distortion of a fake run's ``ood.json`` to ``kinds`` (a wider table)."""
    ood = json.loads((folder / "ood.json").read_text())
    ood["results"] = {
        key.replace("noise", kind): entry for kind in kinds for key, entry in ood["results"].items()
    }
    ood["kinds"] = list(kinds)
    (folder / "ood.json").write_text(json.dumps(ood))
    return folder


@pytest.fixture(scope="module")
def demo_like_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real comparison of three methods with three distortion kinds (as the demo)."""
    root = tmp_path_factory.mktemp("layout") / "a_long_folder_name_as_on_a_real_cluster_disk"
    runs = [
        _with_kinds(write_eval_folder(root, m, seed=i), KINDS)
        for i, m in enumerate(("edue", "deep_ensemble", "plain"))
    ]
    return compare_runs([str(r) for r in runs], root / "report")


def _wide_image(path: Path) -> Path:
    from edue.report.figures import new_figure, save_figure

    fig = new_figure(30, 1.0)  # 3300 px at the report's 110 dpi
    fig.add_subplot().plot(np.arange(10))
    return save_figure(fig, path, tight=False)


@pytest.fixture(scope="module")
def extreme_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A page with a 60-column table, a very long path and a very wide figure."""
    folder = tmp_path_factory.mktemp("extreme")
    headers = [f"column number {i}" for i in range(60)]
    rows = [
        (f"method {r}", [Cell(f"{r * 1000 + i:,}.000 ± 0.001", float(i)) for i in range(60)])
        for r in range(4)
    ]
    long_path = "/" + "/".join(f"directory_level_{i}" for i in range(30))
    content = ReportContent(
        title="layout check",
        generated="now",
        summary=[f"one very long word: {'x' * 400}"],
        claims={"skipped": [f"no EDUE run in {long_path}"]},
        tables=[Table("Very wide", headers, rows, groups=[("all", 60)], note=long_path)],
        figures=[FigureEntry("wide", "A wide figure", _wide_image(folder / "wide.png"))],
        provenance=[{"method": "m", "folder": long_path, "files": ", ".join(headers)}],
        notes=[long_path],
    )
    path = folder / "report.html"
    path.write_text(render_report(content), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- structure
def test_every_table_sits_in_a_scroll_wrapper(demo_like_report: Path, extreme_report: Path) -> None:
    for page in (demo_like_report, extreme_report):
        text = page.read_text(encoding="utf-8")
        parents = _table_parents(text)
        assert len(parents) == text.count("<table")
        assert parents and all(p == ("div", "scroll") for p in parents), parents
        assert "<script" not in text and "<link" not in text and 'src="http' not in text


def test_css_keeps_wide_content_inside_the_page() -> None:
    rules = _css_rules(CSS)
    assert "overflow-x:auto" in rules[".scroll"]
    assert "max-width:100%" in rules[".scroll"]
    assert "width:auto" in rules["table"]
    assert "white-space:nowrap" in rules["th,td"]  # numbers stay on one line
    assert "white-space:normal" in rules["thead th"]  # headers wrap before the table scrolls
    assert "position:sticky" in rules[".scroll tr>:first-child"]  # method names stay in view
    assert "max-width:100%" in rules["figure img"]
    # nothing in the page is given a fixed width that could exceed a narrow window
    assert not re.search(r"(?<!max-)width:\d{3,}px", CSS.replace(" ", ""))


# --------------------------------------------------------------------------- browser
# The browser test takes the ``chromium`` fixture (tests/conftest.py): skipped without a
# browser, failed under CI=true.

#: Measures the laid-out page once everything (images included) has loaded and appends
#: the result as JSON; it is added to a copy of the report only (the report has no script).
PROBE = """<script>
window.addEventListener("load", function () {
  var vw = document.documentElement.clientWidth;
  function scroller(el) {
    for (var a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      var o = getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll") return a;
    }
    return null;
  }
  var out = {viewport: vw, page_width: document.documentElement.scrollWidth,
             escaped: [], tables: []};
  document.querySelectorAll("body *").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= vw + 0.5) return;
    var s = scroller(el);
    if (!s || s.getBoundingClientRect().right > vw + 0.5)
      out.escaped.push(el.tagName + ": " + (el.textContent || "").slice(0, 60));
  });
  document.querySelectorAll("table").forEach(function (t) {
    var s = scroller(t);
    out.tables.push({
      first: t.querySelector("tbody tr > :first-child").textContent,
      width: t.getBoundingClientRect().width,
      wrapper: s ? s.className : null,
      wrapper_right: s ? s.getBoundingClientRect().right : null,
      client_width: s ? s.clientWidth : null,
      scroll_width: s ? s.scrollWidth : null,
      sticky: getComputedStyle(t.querySelector("tbody tr > :first-child")).position
    });
  });
  var pre = document.createElement("pre");
  pre.id = "layout-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _layout(chromium: str, page: Path, width: int, tmp_path: Path) -> dict:
    """Lay ``page`` out in headless ``chromium`` at ``width`` px and measure it."""
    probe = tmp_path / f"probe_{width}.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a small /dev/shm
            f"--user-data-dir={tmp_path / f'profile_{width}'}",
            f"--window-size={width},1200",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium gave no layout (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _assert_nothing_runs_off(layout: dict) -> None:
    assert layout["page_width"] <= layout["viewport"], "the page scrolls sideways"
    assert layout["escaped"] == []
    for table in layout["tables"]:
        assert table["wrapper"] == "scroll", table
        assert table["wrapper_right"] <= layout["viewport"] + 0.5, table
        # every column is reachable: the wrapper scrolls over the whole table
        assert table["scroll_width"] >= int(table["width"]), table
        assert table["sticky"] == "sticky", table


@pytest.mark.parametrize("width", [1400, 900])
def test_browser_layout_keeps_every_table_column_reachable(
    chromium: str, demo_like_report: Path, extreme_report: Path, width: int, tmp_path: Path
) -> None:
    demo = _layout(chromium, demo_like_report, width, tmp_path)
    _assert_nothing_runs_off(demo)
    extreme = _layout(chromium, extreme_report, width, tmp_path)
    _assert_nothing_runs_off(extreme)
    from edue.report.converged import load_converged

    headline = len(load_converged())  # the converged studies' tables come first (claims)
    wide = extreme["tables"][headline]
    assert wide["scroll_width"] > wide["client_width"]  # too wide to fit: it scrolls
    if width == 1400:
        # the demo's tables (three distortions, two structures) and the converged headline
        # are shown whole, without scrolling; only the provenance table, with its long
        # folder paths, may scroll
        for table in demo["tables"][:headline]:
            assert table["scroll_width"] <= table["client_width"], table
        *comparison, _provenance = demo["tables"][headline:]
        assert len(comparison) == 3
        for table in comparison:
            assert table["scroll_width"] <= table["client_width"], table
