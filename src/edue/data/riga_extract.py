"""Masks of the original RIGA release, recovered from its annotated copies.

The original release ships, per photograph, the clean image ``imageNprime`` and one copy
``imageN-k`` per rater k with the disc and cup outlines drawn on it; it has no mask
files. :func:`extract_riga` finds the two closed curves each rater drew (the pixels
where the copy differs from the clean image), fills them into disc and cup masks and
writes the project's folder format (``edue data riga-extract``), naming every case it
had to reject and why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase
from edue.data.riga import (
    STRUCTURES,
    read_rgb,
    safe_id,
    select_sites,
    site_of,
)
from edue.data.riga_labels import LOSSY_SUFFIXES
from edue.data.transforms import resize_case
from edue.errors import DataError
from edue.io import suffix_of

_SUFFIX = r"\.(tif|tiff|jpg|jpeg|png|bmp)$"
_PRIME = re.compile(r"^image(\d+)prime" + _SUFFIX, re.IGNORECASE)
_COPY = re.compile(r"^image(\d+)-(\d+)" + _SUFFIX, re.IGNORECASE)


@dataclass
class ExtractReport:
    """What :func:`extract_riga` did: case ids written and ``(file, reason)`` rejections."""

    out: Path
    extracted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def format(self) -> str:
        """Human-readable summary (:meth:`lines` joined)."""
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        """The counts, then one indented ``file: reason`` line per rejected case."""
        lines = [
            f"extracted {len(self.extracted)} cases to {self.out}",
            f"rejected {len(self.rejected)} cases",
        ]
        return lines + [f"  {where}: {reason}" for where, reason in self.rejected]


def find_original_cases(src: Path) -> dict[tuple[Path, int], dict[int, Path]]:
    """Group ``imageNprime`` (key 0) and ``imageN-k`` (key k) files by folder and N.

    Lossless files win over JPEG when both exist.
    """
    groups: dict[tuple[Path, int], dict[int, Path]] = {}
    for path in sorted(src.rglob("*"), key=lambda p: suffix_of(p) in LOSSY_SUFFIXES):
        prime, copy = _PRIME.match(path.name), _COPY.match(path.name)
        if not path.is_file() or not (prime or copy):
            continue
        if prime:
            n, k = int(prime.group(1)), 0
        elif copy:
            n, k = int(copy.group(1)), int(copy.group(2))
        groups.setdefault((path.parent, n), {}).setdefault(k, path)
    return groups


def masks_from_annotation(
    prime: np.ndarray,
    copy: np.ndarray,
    lossy: bool,
    where: Path,
    threshold: float = 30,
    min_component: int = 100,
) -> np.ndarray:
    """Recover one rater's disc and cup ``[2, H, W]`` from an annotated copy ``[3, H, W]``.

    The drawn curves are where the copy differs from the clean image by more than
    ``threshold`` (0–255 scale, max over channels); components smaller than
    ``min_component`` pixels and curves that enclose nothing are dropped (for JPEG
    copies the threshold is raised to half the lines' contrast and gaps are closed);
    exactly two closed curves must remain. Filled, the larger is the disc, the smaller
    the cup, which must lie inside the disc.

    Raises:
        DataError: not two closed curves, or the cup outside the disc.
    """
    from scipy import ndimage

    diff = np.abs(copy - prime).max(0) * 255
    drawn = diff > threshold
    if lossy and drawn.any():
        # JPEG (chroma subsampling) smears the lines over their neighbours: keep what is
        # above half the lines' typical contrast, then close small gaps in the curves
        drawn = diff > max(threshold, 0.5 * float(np.percentile(diff[drawn], 90)))
        drawn = ndimage.binary_closing(drawn, np.ones((3, 3), bool), iterations=2)
    labels, n = ndimage.label(drawn, np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    regions = []
    for i in np.flatnonzero(sizes >= min_component):
        if i == 0:
            continue
        filled = ndimage.binary_fill_holes(labels == i)
        if filled.sum() > 1.2 * sizes[i]:  # a closed curve encloses an area
            regions.append(filled)
    if len(regions) != 2:
        raise DataError(f"found {len(regions)} closed curves, expected 2 (disc and cup)", where)
    disc, cup = sorted(regions, key=lambda r: -int(r.sum()))
    if (cup & ~disc).sum() > 0.01 * cup.sum():
        raise DataError("the cup is not inside the disc", where)
    return np.stack([disc, cup & disc]).astype(np.uint8)


def _extract_case(
    src: Path,
    key: tuple[Path, int],
    files: dict[int, Path],
    size: int | list[int] | None,
    **options: Any,
) -> MultiRaterCase:
    folder, n = key
    if 0 not in files:
        raise DataError(f"no image{n}prime file for the annotated copies", folder)
    raters = sorted(k for k in files if k > 0)
    if not raters:
        raise DataError(f"no annotated copies image{n}-<k>", files[0])
    prime = read_rgb(files[0])
    masks = []
    for k in raters:
        copy = read_rgb(files[k])
        if copy.shape != prime.shape:
            raise DataError(
                f"size {copy.shape[1:]} differs from the prime image {prime.shape[1:]}", files[k]
            )
        lossy = any(suffix_of(files[i]) in LOSSY_SUFFIXES for i in (0, k))
        masks.append(masks_from_annotation(prime, copy, lossy, files[k], **options))
    rel = folder.relative_to(src).parts
    site = site_of("/".join(rel)) or "unknown"
    case = MultiRaterCase(
        prime,
        np.stack(masks),
        safe_id("-".join((*rel, f"image{n}"))),
        STRUCTURES,
        patient_id=site,
        meta={"site": site, "source": str(files[0])},
    )
    return resize_case(case, size)


def extract_riga(
    src: str | Path,
    dst: str | Path,
    sites: list[str] | None = None,
    size: int | list[int] | None = None,
    threshold: float = 30,
    min_component: int = 100,
) -> ExtractReport:
    """Turn the original RIGA release into the project's folder format.

    Args:
        src: the release (any nesting, letter case and image extensions).
        dst: output folder (``edue-folder`` format; patient id = site).
        sites: sites to extract (default all).
        size: optional resize of the output (``int`` or ``[H, W]``).
        threshold: curve detection threshold on the 0–255 difference.
        min_component: smallest curve component kept (pixels).

    Returns:
        The report; it is also written to ``dst/extract_report.txt``.

    Raises:
        DataError: no ``imageNprime`` file at all under ``src``.
    """
    from edue.data.folder import write_folder_dataset
    from edue.io import write_json

    src, dst = Path(src), Path(dst)
    groups = find_original_cases(src) if src.is_dir() else {}
    if not any(0 in files for files in groups.values()):
        raise DataError("no RIGA images (imageNprime.tif/.jpg) found", src)
    chosen, report, entries = select_sites(sites), ExtractReport(dst), []
    for key, files in sorted(groups.items()):
        if (site_of(str(key[0].relative_to(src))) or "unknown") not in chosen | {"unknown"}:
            continue
        try:
            case = _extract_case(
                src, key, files, size, threshold=threshold, min_component=min_component
            )
        except DataError as exc:
            report.rejected.append((exc.path or str(key[0]), exc.reason))
            continue
        write_folder_dataset([case], dst, name="riga")
        entries.append({"id": case.case_id, "patient": case.patient_id})
        report.extracted.append(case.case_id)
    if entries:
        spec = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
        spec["cases"] = entries
        write_json(dst / "dataset.json", spec)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "extract_report.txt").write_text(report.format() + "\n", encoding="utf-8")
    return report
