"""``predictions.html``: cards in order of disagreement, self-contained, and a "referred
only" filter that works in a real browser (headless chromium, where installed)."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edue.report.gallery import GALLERY_FILE, write_gallery


def _entry(path: Path, sv: float, expected: float, refer: bool) -> dict[str, Any]:
    reasons = ["uncertain segmentation"] if refer else []
    structure = {
        "sv": sv,
        "percentile": 50.0,
        "threshold": 10.0,
        "refer": refer,
        "reasons": reasons,
        "expected_expert_sv": expected,
        "expected_expert_sv_range": [expected - 1, expected + 1],
    }
    return {
        "input": str(path),
        "sv": {"disc": sv},
        "refer": refer,
        "reasons": reasons,
        "ood": {"available": True, "score": 1.0, "threshold": 5.0, "unlike_training": False},
        "structures": {"disc": structure},
    }


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    """A predict run of three 24² images: two referred, one accepted."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    entries = []
    for i, (sv, expected, refer) in enumerate(
        [(5.0, 4.0, False), (30.0, 25.0, True), (20.0, 40.0, True)]
    ):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(path)
        disc = ((yy - 12) ** 2 + (xx - 12) ** 2 < (6 + i) ** 2).astype(np.float32)
        np.savez(tmp_path / f"img{i}.npz", mean=disc[None], uncertainty=(disc * 0.2)[None])
        entries.append(_entry(path, sv, expected, refer))
    summary = {
        "checkpoint": "run/best.pt",
        "method": "edue",
        "structures": ["disc"],
        "predictions": entries,
        "failed": [],
        "referral": {
            "calibration": "run/calibration.json",
            "alpha": 0.1,
            "delta": 0.1,
            "n_calibration": 60,
            "n_images": 3,
            "n_referred": 2,
            "by_reason": {"uncertain segmentation": 2, "unlike the training images": 0},
        },
    }
    assert write_gallery(tmp_path, summary) == tmp_path / GALLERY_FILE
    return tmp_path / GALLERY_FILE


def test_cards_are_sorted_by_expected_disagreement_and_self_contained(gallery: Path) -> None:
    page = gallery.read_text()
    assert re.findall(r"<h3>([^<]+)</h3>", page) == ["img2.png", "img1.png", "img0.png"]
    assert page.count('class="card refer"') == 2 and page.count('class="card accept"') == 1
    assert page.count("data:image/png;base64,") == 6
    assert "<link" not in page and 'src="http' not in page
    assert "2 referred" in page and "with probability 0.9" in page


def test_a_missing_input_still_gives_a_card(gallery: Path) -> None:
    summary_like = {"predictions": [_entry(gallery.parent / "gone.png", 1.0, 1.0, False)]}
    np.savez(gallery.parent / "gone.npz", mean=np.zeros((1, 8, 8)), uncertainty=np.zeros((1, 8, 8)))
    page = write_gallery(gallery.parent, summary_like).read_text()
    assert "could not be read again" in page and page.count("data:image/png;base64,") == 2
    assert "no calibration" in page  # no referral summary: said so in the header


# --------------------------------------------------------------------------- browser
# The browser tests take the ``chromium`` fixture (tests/conftest.py): skipped without a
# browser, failed under CI=true.

#: Counts the visible cards, ticks "referred only", counts again; appended as JSON.
PROBE = """<script>
window.addEventListener("load", function () {
  function visible() {
    return Array.prototype.filter.call(document.querySelectorAll(".card"), function (c) {
      return c.getBoundingClientRect().height > 0;
    }).length;
  }
  var before = visible();
  document.getElementById("referred-only").click();
  var pre = document.createElement("pre");
  pre.id = "gallery-probe";
  pre.textContent = JSON.stringify({before: before, after: visible(),
    shown: document.getElementById("shown").textContent,
    images: Array.prototype.filter.call(document.images, function (i) {
      return i.complete && i.naturalWidth > 0; }).length});
  document.body.appendChild(pre);
});
</script>"""


def _run_chromium(
    chromium: str, args: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a small /dev/shm
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1300,1000",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_gallery_renders_and_filters_in_a_browser(
    chromium: str, gallery: Path, tmp_path: Path
) -> None:
    from PIL import Image as PILImage

    shot = tmp_path / "gallery.png"
    done = _run_chromium(chromium, [f"--screenshot={shot}", gallery.as_uri()], tmp_path)
    assert shot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    pixels = np.asarray(PILImage.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (1000, 1300) and pixels.std() > 10  # something was drawn
    probe = tmp_path / "probe.html"
    probe.write_text(gallery.read_text().replace("</body>", PROBE + "</body>"))
    done = _run_chromium(chromium, ["--dump-dom", probe.as_uri()], tmp_path)
    found = re.search(r'<pre id="gallery-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium gave no result (rc {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result == {"before": 3, "after": 2, "shown": "2 shown", "images": 6}
