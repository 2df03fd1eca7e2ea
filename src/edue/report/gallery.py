"""``predictions.html``: a self-contained gallery of an ``edue predict`` run.

One card per predicted image, sorted by disagreement (the expected experts' SV summed
over structures when the run was calibrated, else the model's SV), highest first. Each
card shows the input with the predicted outline of every structure, the uncertainty
map (the largest over structures), and per structure the SV, its percentile among the
calibration images, the expected experts' SV with its range and the referral decision
with its reasons. A check box shows the referred images only (a few lines of inline
script); the pictures are PNGs embedded as base64 data URIs, so the page is one file
with no external resource. Volumes are shown at their most uncertain axial slice.

The cards are drawn from what ``edue predict`` wrote: each image's ``NAME.npz``
(mean probability and uncertainty) and the input file itself (when it can no longer be
read, the outline is drawn over the probability map instead).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edue.io import atomic_path
from edue.report.prediction_pictures import outline
from edue.report.runs import as_float

GALLERY_FILE = "predictions.html"
#: The long side of each picture, in pixels.
THUMBNAIL = 224
#: The uncertainty maps' colour scale ends here (a probability's variance is at most 1/4).
UNCERTAINTY_MAX = 0.25

esc = html.escape

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;
 max-width:1250px;margin:1.5em auto;padding:0 1em;line-height:1.45;font-size:14px}
h1{font-size:1.5em;margin-bottom:.2em}.sub{color:#667;margin-top:0}
.controls{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #dde;
 z-index:2}
.grid{display:flex;flex-wrap:wrap;gap:14px;margin-top:1em}
.card{border:1px solid #d9dce6;border-radius:6px;padding:10px;width:400px;max-width:100%;
 box-sizing:border-box;background:#fafbfd}
.card.refer{border-left:5px solid #c0392b}.card.accept{border-left:5px solid #2e8b57}
.card h3{font-size:1em;margin:.4em 0 .2em;overflow-wrap:anywhere}
.pics{display:flex;gap:6px}.pics figure{margin:0;flex:1 1 0;min-width:0}
.pics img{width:100%;height:auto;display:block;image-rendering:auto;border:1px solid #ccd}
figcaption{font-size:.8em;color:#556;text-align:center}
.decision{font-weight:bold;margin:.2em 0}.decision.refer{color:#c0392b}
.decision.accept{color:#2e8b57}.decision.none{color:#667}
table{border-collapse:collapse;font-size:.85em;width:100%}
th,td{padding:.2em .4em;border-bottom:1px solid #e3e3ea;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}td.why{white-space:normal;text-align:left}
.note{font-size:.82em;color:#556}
body.referred-only .card.accept{display:none}
"""

SCRIPT = """
(function () {
  var box = document.getElementById("referred-only");
  var shown = document.getElementById("shown");
  function update() {
    var n = 0;
    document.querySelectorAll(".card").forEach(function (c) {
      if (getComputedStyle(c).display !== "none") n++;
    });
    shown.textContent = n + " shown";
  }
  if (box) {
    box.addEventListener("change", function () {
      document.body.classList.toggle("referred-only", box.checked);
      update();
    });
  }
  update();
})();
"""


@dataclass
class Card:
    """One image of the gallery.

    Attributes:
        name: the input's file name.
        disagreement: what the cards are sorted by.
        entry: its ``predictions.json`` entry.
        pictures: ``(caption, PNG bytes)`` pairs.
        note: why a picture is missing or replaced, if so.
    """

    name: str
    disagreement: float
    entry: Mapping[str, Any]
    pictures: list[tuple[str, bytes]] = field(default_factory=list)
    note: str = ""

    @property
    def decided(self) -> bool:
        """Whether the image has a referral decision."""
        return "refer" in self.entry


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` float in [0, 1] resized to ``size`` (height, width)."""
    from PIL import Image

    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if array.ndim == 2:
        img = Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8))
        return np.asarray(img.resize(size[::-1], method), dtype=np.float64) / 255
    channels = [_resize(array[..., c], size, nearest) for c in range(array.shape[-1])]
    return np.stack(channels, -1)


def _hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255


def _display_size(shape: Sequence[int]) -> tuple[int, int]:
    h, w = int(shape[0]), int(shape[1])
    scale = THUMBNAIL / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def card_pictures(
    image: np.ndarray | None, mean: np.ndarray, uncertainty: np.ndarray
) -> list[tuple[str, bytes]]:
    """The two pictures of a card: outline over the image, and the uncertainty map.

    Args:
        image: the input ``[C, H, W]`` (``None``: the outline is drawn over the
            probability map).
        mean: mean probability ``[K, H, W]``.
        uncertainty: uncertainty map ``[K, H, W]``.

    Returns:
        ``[("segmentation", png), ("uncertainty", png)]``.
    """
    import matplotlib

    from edue.report.figures import STRUCTURE_COLOURS, display_image

    size = _display_size(mean.shape[1:])
    if image is not None and tuple(image.shape[1:]) == tuple(mean.shape[1:]):
        base = display_image(image)
    else:
        base = mean.max(0)
    base = _resize(base, size, nearest=False)
    rgb = base if base.ndim == 3 else np.repeat(base[..., None], 3, -1)
    for k in range(mean.shape[0]):
        mask = _resize((mean[k] > 0.5).astype(np.float64), size, nearest=True) > 0.5
        edge = outline(mask)
        edge |= outline(mask & ~edge)  # two pixels wide, inside the structure
        rgb[edge] = _hex_rgb(STRUCTURE_COLOURS[k % len(STRUCTURE_COLOURS)])
    heat = _resize(np.clip(uncertainty.max(0) / UNCERTAINTY_MAX, 0, 1), size, nearest=False)
    coloured = matplotlib.colormaps["inferno"](heat)[..., :3]
    as_bytes = [(np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8) for a in (rgb, coloured)]
    return [("segmentation", _png(as_bytes[0])), ("uncertainty", _png(as_bytes[1]))]


def _disagreement(entry: Mapping[str, Any]) -> float:
    structures = entry.get("structures")
    if isinstance(structures, Mapping) and structures:
        values = [s.get("expected_expert_sv") for s in structures.values()]
        if all(isinstance(v, int | float) and np.isfinite(v) for v in values):
            return float(sum(values))
    return float(sum(float(v) for v in entry.get("sv", {}).values()))


def _read_input(entry: Mapping[str, Any], dims: int, dicom: dict[Path, Any]) -> np.ndarray:
    """The input of a ``predictions.json`` entry read again: its file, or for a DICOM
    series the series of that UID in its first file's folder (each folder read once per
    page, in ``dicom``)."""
    from edue.io import NIFTI_SUFFIXES, read_image, suffix_of

    series = entry.get("dicom_series")
    if isinstance(series, Mapping):
        from edue.engine.predict.dicom import find_dicom_series

        folder = Path(str(series["first_file"])).parent
        if folder not in dicom:
            dicom[folder] = find_dicom_series(folder, failed=[])
        (found,) = [s for s in dicom[folder] if s.uid == series["uid"]][:1]
        return np.asarray(found.image)
    source = Path(str(entry["input"]))
    return np.asarray(read_image(source, None if suffix_of(source) in NIFTI_SUFFIXES else dims)[0])


def _load_card(
    out_dir: Path, entry: Mapping[str, Any], dicom: dict[Path, Any] | None = None
) -> Card:
    from edue.engine.predict.writers import stem_of

    source = Path(str(entry["input"]))
    output = str(entry.get("output") or stem_of(source))
    card = Card(source.name if output == stem_of(source) else output, _disagreement(entry), entry)
    try:
        with np.load(out_dir / f"{output}.npz", allow_pickle=False) as data:
            mean = np.asarray(data["mean"], dtype=np.float64)
            uncertainty = np.asarray(data["uncertainty"], dtype=np.float64)
    except Exception as exc:  # one unreadable output must not cost the page
        card.note = f"no picture: {output}.npz is unreadable ({type(exc).__name__})"
        return card
    image: np.ndarray | None = None
    try:
        image = _read_input(entry, mean.ndim - 1, {} if dicom is None else dicom).astype(np.float64)
    except Exception:
        card.note = "the input could not be read again: the outline is drawn on the probability"
    if mean.ndim == 4:  # a volume: its most uncertain axial slice
        d = int(np.argmax(uncertainty.sum(axis=(0, 2, 3))))
        mean, uncertainty = mean[:, d], uncertainty[:, d]
        image = image[:, d] if image is not None and image.ndim == 4 else None
        card.note = (card.note + "; " if card.note else "") + f"slice {d} (most uncertain)"
    card.pictures = card_pictures(image, mean, uncertainty)
    return card


def _number(value: object, digits: int = 1) -> str:
    if isinstance(value, int | float) and np.isfinite(value):
        return f"{value:.{digits}f}"
    return "—"


def _card_html(card: Card) -> str:
    entry = card.entry
    pictures = "".join(
        f'<figure><img alt="{esc(caption)} of {esc(card.name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for caption, png in card.pictures
    )
    if card.decided:
        kind = "refer" if entry["refer"] else "accept"
        why = "; ".join(entry.get("reasons", []))
        decision = (
            f'<p class="decision refer">refer: {esc(why)}</p>'
            if entry["refer"]
            else '<p class="decision accept">accept</p>'
        )
        rows = []
        for name, s in entry["structures"].items():
            low, high = s.get("expected_expert_sv_range", [None, None])
            rows.append(
                f"<tr><td>{esc(name)}</td><td>{_number(s.get('sv'))}</td>"
                f"<td>{_number(s.get('percentile'), 0)}</td>"
                f"<td>{_number(s.get('expected_expert_sv'))} "
                f"[{_number(low)}, {_number(high)}]</td>"
                f'<td class="why">{esc(_structure_decision(s))}</td></tr>'
            )
        table = (
            "<table><thead><tr><th>structure</th><th>SV</th><th>pct.</th>"
            "<th>experts' SV [range]</th><th>decision</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
        ood = entry.get("ood", {})
        shift = (
            f'<p class="note">distribution-shift score {_number(ood.get("score"), 2)} '
            f"(flagged above {_number(as_float(ood.get('threshold')), 2)})</p>"
            if ood.get("available")
            else ""
        )
    else:
        kind = "none"
        decision = '<p class="decision none">no referral decision (run not calibrated)</p>'
        rows = [
            f"<tr><td>{esc(name)}</td><td>{_number(value)}</td></tr>"
            for name, value in entry.get("sv", {}).items()
        ]
        table = (
            "<table><thead><tr><th>structure</th><th>SV</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
        shift = ""
    note = f'<p class="note">{esc(card.note)}</p>' if card.note else ""
    return (
        f'<div class="card {kind}">'
        f'<div class="pics">{pictures}</div><h3>{esc(card.name)}</h3>{decision}{table}'
        f"{shift}{note}</div>"
    )


def _structure_decision(decision: Mapping[str, Any]) -> str:
    """``accept``, or ``refer`` with why: the SV above its threshold, no threshold
    certified, or the image unlike the training images."""
    from edue.engine.referral.calibration import REASON_SHIFT, REASON_UNCERTAIN

    if not decision.get("refer"):
        return "accept"
    why = []
    if REASON_UNCERTAIN in decision.get("reasons", []):
        threshold = as_float(decision.get("threshold"))
        why.append(f"SV > {threshold:.4g}" if np.isfinite(threshold) else "none certified")
    if REASON_SHIFT in decision.get("reasons", []):
        why.append("unlike training")
    return "refer: " + ", ".join(why) if why else "refer"


def render_gallery(cards: Sequence[Card], summary: Mapping[str, Any]) -> str:
    """The whole HTML document of a gallery (cards in the order given)."""
    referral = summary.get("referral")
    n = len(cards)
    if referral:
        reasons = ", ".join(f"{count} {why}" for why, count in referral["by_reason"].items())
        head = (
            f"{n} image(s); <b>{referral['n_referred']} referred</b> to a second expert "
            f"({esc(reasons)}). Guarantee: at most {referral['alpha']:g} of the accepted "
            f"segmentations poor, with probability {1 - referral['delta']:g} "
            f"(calibration {esc(str(referral['calibration']))}, "
            f"{referral['n_calibration']} images)."
        )
        controls = (
            '<label><input type="checkbox" id="referred-only"> referred only</label> '
            '&middot; <span id="shown"></span>'
        )
        order = "expected experts' SV summed over structures"
    else:
        head = f"{n} image(s); no calibration, so no referral decisions (run `edue calibrate`)."
        controls = '<span id="shown"></span>'
        order = "the model's SV summed over structures"
    failed = summary.get("failed") or []
    failed_note = f'<p class="note">{len(failed)} input(s) failed.</p>' if failed else ""
    body = "".join(_card_html(c) for c in cards)
    title = f"Predictions of {summary.get('method', '?')}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>"
        f'<p class="sub">Checkpoint {esc(str(summary.get("checkpoint", "")))}; sorted by '
        f"{order}, highest first.</p><p>{head}</p>{failed_note}"
        f'<div class="controls">{controls}</div>'
        f'<div class="grid">{body}</div>\n<script>{SCRIPT}</script>\n</body></html>\n'
    )


def write_gallery(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``predictions.html`` of a predict run (see the module docstring).

    Args:
        out_dir: the run's output folder (holding each image's NPZ).
        summary: the content of its ``predictions.json``.

    Returns:
        The page written.
    """
    out_dir = Path(out_dir)
    dicom: dict[Path, Any] = {}  # DICOM folders read again, once each
    cards = [_load_card(out_dir, entry, dicom) for entry in summary.get("predictions", [])]
    cards.sort(key=lambda c: -c.disagreement if np.isfinite(c.disagreement) else np.inf)
    path = out_dir / GALLERY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(render_gallery(cards, summary), encoding="utf-8")
    return path
