"""The pictures of ``edue predict``, drawn with array operations: outlines, the colour
look-up table and the layout, checked on the pixels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from edue.prediction import Prediction
from edue.report.prediction_pictures import (
    CAPTION_HEIGHT,
    MIN_SIDE,
    STRUCTURE_RGB,
    colour_table,
    outline,
    overlay_picture,
    slices_picture,
)


def test_outline_is_the_mask_s_boundary():
    mask = np.zeros((6, 7), bool)
    mask[1:5, 2:6] = True
    edge = outline(mask)
    inner = np.zeros_like(mask)
    inner[2:4, 3:5] = True
    np.testing.assert_array_equal(edge, mask & ~inner)
    full = np.ones((3, 3), bool)
    assert outline(full).sum() == 8  # the image's border counts as outside
    assert not outline(np.zeros((4, 4), bool)).any()


def test_colour_table_is_matplotlib_s_inferno():
    import matplotlib

    table = colour_table("inferno")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    want = np.asarray(matplotlib.colormaps["inferno"](1.0)[:3]) * 255
    np.testing.assert_allclose(table[-1], want, atol=0.5)


def _square_prediction(size: int) -> Prediction:
    members = torch.zeros(3, 2, size, size)
    members[:, 0, 4:12, 4:12] = 0.9  # structure 0: a square every member agrees on
    members[0, 1, 6:10, 6:10] = 1.0  # structure 1: one member of three
    return Prediction(members, structures=("disc", "cup"))


def test_overlay_picture_draws_outlines_and_heat(tmp_path):
    pred = _square_prediction(16)
    image = np.full((1, 16, 16), 0.5, np.float32)
    image[0, 0, 0] = 0.0  # some contrast for the stretch
    path = overlay_picture(image, pred, tmp_path / "a_overlay.png", "a.png")
    sheet = np.asarray(Image.open(path))
    factor = -(-MIN_SIDE // 16)
    side = 16 * factor
    top = 18 + CAPTION_HEIGHT
    first = sheet[top : top + side, :side]
    # the square's outline, in structure 0's colour, at image pixel (4, 4) enlarged
    np.testing.assert_array_equal(first[4 * factor, 4 * factor], STRUCTURE_RGB[0])
    assert tuple(first[8 * factor, 8 * factor]) != STRUCTURE_RGB[0]  # inside: the image
    # structure 1's panel: heat where one member of three says cup, none elsewhere
    x0 = side + 4 + (side + 4 + 14 + 44) + 4  # the outlines, the disc panel and gaps
    cup = sheet[top : top + side, x0 : x0 + side].astype(int)
    assert abs(cup[8 * factor, 8 * factor] - cup[1, 1]).sum() > 30
    assert sheet.shape[1] == x0 + side + 4 + 14 + 44


def test_slices_picture_has_three_planes_and_the_heat_row(tmp_path):
    members = torch.zeros(2, 1, 10, 12, 14)
    members[0, 0, 3:7, 4:8, 5:9] = 1.0
    pred = Prediction(members, structures=("GTVp",))
    image = np.random.default_rng(0).random((2, 10, 12, 14)).astype(np.float32)
    path = slices_picture(image, pred, tmp_path / "v_slices.png", "v.nii.gz")
    sheet = np.asarray(Image.open(path))
    factor = -(-MIN_SIDE // 10)
    assert sheet.shape[0] == 18 + 2 * (CAPTION_HEIGHT + 14 * factor) + 4
