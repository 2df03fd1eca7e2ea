"""Decoding a RIGA disc/cup label map into two masks.

RIGA's greyscale label maps hold 0 (background), one intermediate level and 255; which
of the two non-zero levels is the cup depends on the release: MRNet's "DiscRegion"
files mark the cup 255 (rim 128 or 150), RIGA+ marks the rim 255 and the cup 128. The
cup is the level nested inside the other, so ``encoding: auto`` tells them apart per
map from which level touches the background (:func:`decode_disc_cup`). JPEG maps are
quantised to the three levels rather than checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edue.errors import DataError
from edue.io import suffix_of

ENCODINGS = ("auto", "discregion", "rigaplus")
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def split_levels(label: np.ndarray, lossy: bool) -> tuple[np.ndarray, np.ndarray]:
    """The intermediate and the 255 regions of a disc/cup label map (no checks)
    ``[H, W]`` bool each."""
    if lossy:  # JPEG: quantise to 0 / intermediate / 255
        return (label >= 64) & (label < 200), label >= 200
    return (label > 0) & (label < 255), label == 255


def _few_values(label: np.ndarray, middle: np.ndarray, high: np.ndarray) -> list[int] | None:
    """The sorted distinct values of a map holding only 0, one middle level and 255.

    Counting the three regions is much cheaper than ``np.unique``; ``None`` when the
    map holds anything else (several middle levels, values outside [0, 255]).
    """
    n_zero = int(np.count_nonzero(label == 0))
    n_middle, n_high = int(np.count_nonzero(middle)), int(np.count_nonzero(high))
    if n_zero + n_middle + n_high != label.size:
        return None
    values = [0] if n_zero else []
    if n_middle:
        level = label.flat[int(np.argmax(middle))]
        if np.count_nonzero(label == level) != n_middle:
            return None
        values.append(int(level))
    return values + [255] if n_high else values


def _levels(
    label: np.ndarray, lossy: bool, where: Path
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Split a disc/cup label map into its intermediate and its 255 regions.

    Args:
        label: the rater's label map.
        lossy: the file is a JPEG (values are quantised instead of checked).
        where: file named in errors.

    Returns:
        The intermediate region, the 255 region and the sorted distinct values.

    Raises:
        DataError: more than one intermediate value in a lossless map.
    """
    middle, high = split_levels(label, lossy)
    values = None if lossy else _few_values(label, middle, high)
    if values is None:
        values = np.unique(label).tolist()
    if not lossy and len(set(values) - {0, 255}) > 1:
        raise DataError(
            f"unexpected label values {values[:10]} (expected 0, one "
            "rim/cup level such as 128 or 150, and 255)",
            where,
        )
    return middle, high, values


def _background_contacts(middle: np.ndarray, high: np.ndarray) -> tuple[int, int]:
    """Pixels of each level with a face neighbour in the background.

    Pixels outside the map are not background, so a level cut by the border is not
    in contact there. One shifted comparison per axis: O(pixels), no morphology.

    Args:
        middle: the intermediate level (bool, any number of axes).
        high: the 255 level, disjoint from ``middle``.

    Returns:
        ``(contacts of middle, contacts of high)``.
    """
    background = ~(middle | high)
    near = np.zeros_like(background)
    for axis in range(background.ndim):
        lo = [slice(None)] * background.ndim
        hi = [slice(None)] * background.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        near[tuple(hi)] |= background[tuple(lo)]
        near[tuple(lo)] |= background[tuple(hi)]
    return int(np.count_nonzero(middle & near)), int(np.count_nonzero(high & near))


def _nesting(middle: np.ndarray, high: np.ndarray, default: str) -> str:
    """The convention whose cup is the level nested inside the other.

    The cup is the level with fewer pixels in contact with the background (the rim
    surrounds it); ``default`` when only one level is present or the counts tie.
    """
    if not (middle.any() and high.any()):
        return default
    touch_middle, touch_high = _background_contacts(middle, high)
    if touch_middle == touch_high:
        return default
    return "discregion" if touch_high < touch_middle else "rigaplus"


def decode_with_values(
    label: np.ndarray, encoding: str, default: str, where: Path
) -> tuple[np.ndarray, str, list[int]]:
    """:func:`decode_disc_cup`, also returning the map's sorted distinct values."""
    middle, high, values = _levels(label, suffix_of(where) in LOSSY_SUFFIXES, where)
    used = _nesting(middle, high, default) if encoding == "auto" else encoding
    return stack_disc_cup(middle, high, used), used, values


def stack_disc_cup(middle: np.ndarray, high: np.ndarray, used: str) -> np.ndarray:
    """Masks ``[2, H, W]`` (disc, cup) under convention ``used``."""
    cup = high if used == "discregion" else middle
    return np.stack([middle | high, cup]).astype(np.uint8)


def decode_disc_cup(
    label: np.ndarray, encoding: str, default: str, where: Path
) -> tuple[np.ndarray, str]:
    """Turn a greyscale disc/cup map ``[H, W]`` into masks ``[2, H, W]`` (disc, cup).

    Args:
        label: the rater's label map.
        encoding: ``auto`` (the level nested inside the other is the cup),
            ``discregion`` (255 = cup) or ``rigaplus`` (the intermediate level = cup).
        default: convention used by ``auto`` when the nesting cannot tell (one level).
        where: file named in errors.

    Returns:
        The masks and the convention used.

    Raises:
        DataError: more than one intermediate value in a lossless map.
    """
    masks, used, _ = decode_with_values(label, encoding, default, where)
    return masks, used
