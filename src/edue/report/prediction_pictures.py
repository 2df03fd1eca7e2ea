"""The pictures ``edue predict`` draws per image, made with array operations.

A matplotlib figure per image costs several times the model's own work per image, so
``edue predict`` would run at a fraction of the model's throughput. These pictures are
composed directly as RGB arrays: the image in grey (or its colours), each structure's
predicted outline (the boundary pixels of ``mean > 0.5``) in the structure's colour, the
uncertainty through the ``inferno`` colour look-up table blended over the image, a
colour bar, and captions written with Pillow. The report's figures keep matplotlib.

* 2D images (``STEM_overlay.png``): the image with every outline, then one panel per
  structure with its uncertainty (scaled to the image's own maximum, given on the colour
  bar) and SV.
* Volumes (``STEM_slices.png``): three orthogonal planes through the most uncertain
  region (:func:`~edue.report.volume_figures.most_uncertain_voxel`): the first channel
  with the outlines above, the uncertainty summed over structures below.

Small images are enlarged by whole factors (nearest neighbour) to at least
:data:`MIN_SIDE` pixels a side, so that outlines stay one image pixel wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edue.io import write_png
from edue.prediction import Prediction

#: panels are enlarged to at least this many pixels a side
MIN_SIDE = 192
#: the outline colours of the structures, in order (as the report's figures)
STRUCTURE_RGB = ((0, 229, 255), (255, 208, 0), (255, 77, 109), (124, 255, 107), (199, 125, 255))
CAPTION_HEIGHT = 28
BAR_WIDTH = 14
GAP = 4
HEAT_ALPHA = 0.75  # the uncertainty's colours over the image
HEAT_FLOOR = 1e-4  # uncertainty below this leaves the image uncovered


@lru_cache(maxsize=4)
def colour_table(name: str = "inferno") -> np.ndarray:
    """A matplotlib colour map as a 256-entry RGB look-up table ``[256, 3]`` uint8."""
    import matplotlib

    return np.asarray(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(
        np.uint8
    )


def _stretch(values: np.ndarray) -> np.ndarray:
    """Values scaled to [0, 1] between their 1st and 99th percentiles."""
    lo, hi = np.percentile(values, [1, 99])
    return np.clip((values - lo) / (hi - lo + 1e-8), 0, 1)


def _base_rgb(image: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` image as RGB ``[H, W, 3]`` float in [0, 1]: its colours for three
    channels, else the first channel in grey."""
    if image.shape[0] == 3:
        return _stretch(np.moveaxis(image, 0, -1))
    grey = _stretch(image[0])
    return np.repeat(grey[..., None], 3, axis=-1)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2D mask: in the mask, with a 4-neighbour outside it
    (the image's border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    return mask & ~inner


def _with_outlines(base: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``base`` ``[H, W, 3]`` with the outline of ``mean[k] > 0.5`` of every structure."""
    rgb = base.copy()
    for k in range(mean.shape[0]):
        edge = outline(mean[k] > 0.5)
        rgb[edge] = np.asarray(STRUCTURE_RGB[k % len(STRUCTURE_RGB)]) / 255.0
    return rgb


def _with_heat(base: np.ndarray, values: np.ndarray, vmax: float) -> np.ndarray:
    """``base`` with ``values`` ``[H, W]`` (0 … ``vmax``) through the colour table,
    blended where they reach :data:`HEAT_FLOOR`: opaque up to :data:`HEAT_ALPHA` from a
    quarter of ``vmax`` on, fading below, so that faint uncertainty does not veil the
    image."""
    scaled = values / vmax
    index = np.clip(scaled * 255, 0, 255).astype(np.uint8)
    heat = colour_table()[index] / 255.0
    cover = np.where(values >= HEAT_FLOOR, np.clip(scaled * 4, 0, 1) * HEAT_ALPHA, 0.0)
    return base * (1 - cover[..., None]) + heat * cover[..., None]


def _to_uint8(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Float RGB to uint8, enlarged ``factor`` times (nearest neighbour)."""
    out = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    if factor > 1:
        out = out.repeat(factor, axis=0).repeat(factor, axis=1)
    return out


def _factor(shape: Sequence[int]) -> int:
    """The whole enlargement that brings the shorter side to :data:`MIN_SIDE`."""
    return max(1, -(-MIN_SIDE // max(1, min(shape))))


def _colour_bar(height: int, vmax: float) -> np.ndarray:
    """A vertical colour bar ``[height, BAR_WIDTH, 3]``, ``vmax`` at the top."""
    ramp = np.linspace(255, 0, max(height, 1)).astype(np.uint8)
    return np.repeat(colour_table()[ramp][:, None, :], BAR_WIDTH, axis=1)


def _panel(
    pixels: np.ndarray, caption: str, vmax: float | None = None, room: bool = False
) -> Image.Image:
    """One panel: a caption above ``pixels`` ``[H, W, 3]`` uint8, and a colour bar to the
    right labelled 0 … ``vmax`` when given (``room``: leave the bar's room empty, so that
    panels of a column line up)."""
    h, w = pixels.shape[:2]
    bar = 0 if vmax is None and not room else GAP + BAR_WIDTH + 44
    panel = Image.new("RGB", (w + bar, h + CAPTION_HEIGHT), "black")
    panel.paste(Image.fromarray(pixels), (0, CAPTION_HEIGHT))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    draw.multiline_text((3, 1), caption, fill="white", font=font, spacing=1)
    if vmax is not None:
        panel.paste(Image.fromarray(_colour_bar(h, vmax)), (w + GAP, CAPTION_HEIGHT))
        x = w + GAP + BAR_WIDTH + 3
        draw.text((x, CAPTION_HEIGHT), f"{vmax:.3g}", fill="white", font=font)
        draw.text((x, CAPTION_HEIGHT + h - 11), "0", fill="white", font=font)
    return panel


def _grid(rows: Sequence[Sequence[Image.Image]], title: str) -> Image.Image:
    """Panels in rows under a title line."""
    widths = [sum(p.width for p in row) + GAP * (len(row) - 1) for row in rows]
    heights = [max(p.height for p in row) for row in rows]
    top = 18
    sheet = Image.new("RGB", (max(widths), top + sum(heights) + GAP * (len(rows) - 1)), "black")
    ImageDraw.Draw(sheet).text((3, 3), title, fill="white", font=ImageFont.load_default())
    y = top
    for row, height in zip(rows, heights, strict=True):
        x = 0
        for panel in row:
            sheet.paste(panel, (x, y))
            x += panel.width + GAP
        y += height + GAP
    return sheet


def _names(pred: Prediction) -> tuple[str, ...]:
    k = int(pred.mean.shape[0])
    return tuple(pred.structures) if pred.structures else tuple(f"s{i}" for i in range(k))


def overlay_picture(image: np.ndarray, pred: Prediction, path: str | Path, title: str) -> Path:
    """The picture of a 2D prediction (see the module's description).

    Args:
        image: the input ``[C, H, W]``.
        pred: its prediction (mean and uncertainty ``[K, H, W]``).
        path: the PNG to write.
        title: the picture's title (usually the input's file name).
    """
    mean, uncertainty = pred.mean.numpy(), pred.uncertainty.numpy()
    base = _base_rgb(image)
    factor = _factor(base.shape[:2])
    panels = [_panel(_to_uint8(_with_outlines(base, mean), factor), "outlines: p > 0.5")]
    grey = np.repeat(base.mean(-1, keepdims=True), 3, axis=-1)
    for k, name in enumerate(_names(pred)):
        vmax = max(float(uncertainty[k].max()), 1e-6)
        rgb = _with_heat(grey, uncertainty[k], vmax)
        caption = f"{name} uncertainty\nSV = {float(pred.sv[k]):.1f}"
        panels.append(_panel(_to_uint8(rgb, factor), caption, vmax))
    return _save(_grid([panels], title), path)


def slices_picture(image: np.ndarray, pred: Prediction, path: str | Path, title: str) -> Path:
    """The picture of a volume's prediction (see the module's description).

    Args:
        image: the input ``[C, D, H, W]``.
        pred: its prediction (mean and uncertainty ``[K, D, H, W]``).
        path: the PNG to write.
        title: the title (usually the input's file name).
    """
    from edue.report.volume_figures import most_uncertain_voxel

    mean, uncertainty = pred.mean.numpy(), pred.uncertainty.numpy()
    centre = most_uncertain_voxel(uncertainty)
    grey = _stretch(image[0])
    total = uncertainty.sum(0)
    vmax = max(float(total.max()), 1e-6)
    factor = _factor(sorted(grey.shape)[:2])
    tops, bottoms = [], []
    for axis in range(3):
        take: list[slice | int] = [slice(None)] * 3
        take[axis] = centre[axis]
        plane = tuple(take)
        # the plane's first remaining axis runs left to right, the second bottom to top
        base = np.repeat(grey[plane].T[::-1, :, None], 3, axis=-1)
        outlines = _with_outlines(base, mean[(slice(None), *plane)].transpose(0, 2, 1)[:, ::-1])
        caption = f"axis {axis} at {centre[axis]}"
        tops.append(_panel(_to_uint8(outlines, factor), caption, room=True))
        heat = _with_heat(base, total[plane].T[::-1], vmax)
        bottoms.append(_panel(_to_uint8(heat, factor), "uncertainty", vmax))
    sv = ", ".join(f"{n} SV {float(v):.1f}" for n, v in zip(_names(pred), pred.sv, strict=True))
    return _save(_grid([tops, bottoms], f"{title} - most uncertain at {centre}; {sv}"), path)


def _save(sheet: Image.Image, path: str | Path) -> Path:
    write_png(path, np.asarray(sheet))
    return Path(path)
