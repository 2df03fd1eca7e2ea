"""RIGA fundus photographs (optic disc and cup, six raters) in its three circulating shapes.

* ``riga-discregion``: MRNet's "DiscRegion" CSVs ``Glaucoma_multirater_<site>.csv``
  (read as GBK) listing, per image, a block of rows (rater 0 = image and ``FinalLabel``
  mask, raters 1..n); rater n's mask is the FinalLabel path with ``FinalLabel`` →
  ``Rater{n}``. Greyscale masks: 0 background, a rim level (128 or 150), 255 cup.
* ``riga-plus``: RIGA+ CSVs ``<site>[_BaseN]_<subset>.csv`` with header ``image,mask``;
  rater k's file is the mask path with ``.tif`` → ``-k.tif``; 255 disc rim, 128 cup.
* the original release has no masks: :func:`edue.data.riga_extract.extract_riga`
  recovers them from the annotated copies (``edue data riga-extract``).

The cup is the level nested inside the disc; ``encoding: auto`` finds it per mask from
that nesting (:mod:`edue.data.riga_labels`), ``discregion``/``rigaplus`` force a
convention. Disc = any non-zero value.
Images are RGB ``[3, H, W]`` in [0, 1]; masks ``[R, 2, H, W]`` for ``("disc", "cup")``.
RIGA has no patient identifiers: the site (BinRushed, MESSIDOR, Magrabia) is used as
the patient id, so no split can put two images of one person on both sides.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase
from edue.data.riga_labels import (
    ENCODINGS,
    LOSSY_SUFFIXES,
    decode_with_values,
    split_levels,
    stack_disc_cup,
)
from edue.data.source import CaseSource
from edue.data.transforms import resize_case
from edue.errors import ConfigError, DataError
from edue.io import read_image, read_label_map, suffix_of

SITES = ("BinRushed", "MESSIDOR", "Magrabia")
STRUCTURES = ("disc", "cup")


# --------------------------------------------------------------------------- helpers
def site_of(text: str) -> str | None:
    """The RIGA site named in a path or file name (``Magrabi`` matches ``Magrabia``)."""
    low = text.lower()
    for key, site in (
        ("binrushed", "BinRushed"),
        ("messidor", "MESSIDOR"),
        ("magrabi", "Magrabia"),
    ):
        if key in low:
            return site
    return None


def riga_standard_split(
    case_ids: Sequence[str], patient_ids: Sequence[str]
) -> dict[str, list[int]]:
    """RIGA's usual split (preset ``riga-standard``): train BinRushed + MESSIDOR, test Magrabia.

    The site is read from the patient id, else from the case id.

    Args:
        case_ids: one id per case.
        patient_ids: one patient id per case (the site, for the RIGA readers).

    Returns:
        ``{"train": [case indices], "test": [case indices]}``.

    Raises:
        DataError: a case whose site cannot be told.
    """
    split: dict[str, list[int]] = {"train": [], "test": []}
    for i, (case, patient) in enumerate(zip(case_ids, patient_ids, strict=True)):
        site = site_of(str(patient)) or site_of(str(case))
        if site is None:
            raise DataError(f"cannot tell the RIGA site of case '{case}' (patient '{patient}')")
        split["test" if site == "Magrabia" else "train"].append(i)
    return split


def select_sites(sites: list[str] | None) -> set[str]:
    """Canonical site names from a user list (case-insensitive); all when ``None``."""
    if not sites:
        return set(SITES)
    chosen = {site_of(s) for s in sites}
    if None in chosen:
        raise ConfigError(f"unknown RIGA site in {sites} (known: {', '.join(SITES)})")
    return chosen  # type: ignore[return-value]


def safe_id(text: str) -> str:
    """A case id made of letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def read_rgb(path: Path) -> np.ndarray:
    """Read a photograph as float32 RGB ``[3, H, W]`` in [0, 1] (grey is repeated)."""
    image, _ = read_image(path, spatial_dims=2)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    elif image.shape[0] == 4:
        image = image[:3]
    elif image.shape[0] != 3:
        raise DataError(f"expected an RGB or grey image, got {image.shape[0]} channels", path)
    return image


def resolve_path(bases: list[Path], listed: str) -> Path:
    """Find a file named in a CSV (Windows or POSIX separators, any letter case).

    Leading components absent on disk (a drive, the dataset's own folder name) are
    skipped. Raises:
        DataError: nothing matches (naming the path as listed).
    """
    parts = [p for p in re.split(r"[\\/]+", listed.strip()) if p and p != "."]
    for base in bases:
        if not parts:
            return base
        # skip leading components up to the first one present under ``base``
        start = next((i for i in range(len(parts)) if _find_ci(base, parts[i : i + 1])), None)
        found = None if start is None else _find_ci(base, parts[start:])
        if found is not None:
            return found
    raise DataError(
        f"file listed in the CSV not found: '{listed}'",
        bases[0].joinpath(*parts) if parts else bases[0],
    )


def _find_ci(base: Path, parts: list[str]) -> Path | None:
    exact = base.joinpath(*parts)
    if exact.exists():
        return exact
    current = base
    for part in parts:
        if not current.is_dir():
            return None
        match = [c for c in current.iterdir() if c.name.lower() == part.lower()]
        if not match:
            return None
        current = match[0]
    return current


_Stamp = tuple[int, int, int, int]
_Entry = tuple[str, Path]  # a folder entry: (name, path)


def _file_stamp(path: Path) -> _Stamp | None:
    """What changes when a file is rewritten (size, times, inode); ``None`` if unreadable."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


# --------------------------------------------------------------------------- readers
class _RigaCsvSource(CaseSource):
    """Shared loading of the CSV-described RIGA shapes (one entry per image).

    What does not change between loads is worked out once per source: the files a
    listed path resolves to (looked up again when one disappears) and, per mask file,
    the convention and the label values (decided again when the file's size, times or
    inode change).
    """

    default_encoding = "discregion"
    spatial_dims = 2

    def __init__(
        self, root: str | Path, sites: list[str] | None, encoding: str, size: int | list[int] | None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError("RIGA folder not found", self.root)
        if encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {ENCODINGS}, got '{encoding}'")
        self.sites, self.encoding, self.size = select_sites(sites), encoding, size
        self.structures = STRUCTURES
        # entries: (case id, site, image as listed, {rater name: mask as listed}, csv)
        self.entries: list[tuple[str, str, str, dict[str, str], Path]] = []
        # (csv folder, path as listed) -> the file or folder it resolved to
        self._resolved: dict[tuple[Path, str], Path] = {}
        # mask file -> (file stamp, encoding, default, convention used, label values)
        self._decoded: dict[Path, tuple[_Stamp, str, str, str, list[int]]] = {}

    def _finish(self) -> None:
        if not self.entries:
            raise DataError(
                f"no images of sites {sorted(self.sites)} listed in the CSVs", self.root
            )
        self.case_ids = [e[0] for e in self.entries]
        self.patient_ids = [e[1] for e in self.entries]

    def _resolve(self, csv_path: Path, listed: str) -> Path:
        """:func:`resolve_path` from the CSV's folder then the root, once per listed path."""
        key = (csv_path.parent, listed)
        found = self._resolved.get(key)
        if found is None or not found.exists():
            found = resolve_path([csv_path.parent, self.root], listed)
            self._resolved[key] = found
        return found

    def rater_files(self, index: int) -> dict[str, Path]:
        """The resolved rater mask files of case ``index``."""
        _, _, _, raters, csv_path = self.entries[index]
        if not raters:
            raise DataError("no rater rows for this image", csv_path)
        return {n: self._resolve(csv_path, m) for n, m in raters.items()}

    def _read_mask(
        self, path: Path, shape: tuple[int, ...], image_path: Path
    ) -> tuple[np.ndarray, str, list[int]]:
        """Read and decode one rater's mask: masks ``[2, H, W]``, convention, label values."""
        stamp = _file_stamp(path)  # before reading: a file rewritten meanwhile is redone
        label, _ = read_label_map(path, spatial_dims=2)
        if label.shape != shape:
            raise DataError(
                f"mask size {label.shape} differs from image size {shape} ({image_path.name})",
                path,
            )
        known = self._decoded.get(path)
        if (
            known is not None
            and stamp is not None
            and known[:3] == (stamp, self.encoding, self.default_encoding)
        ):
            used, values = known[3], known[4]
            lossy = suffix_of(path) in LOSSY_SUFFIXES
            return stack_disc_cup(*split_levels(label, lossy), used), used, values
        masks, used, values = decode_with_values(label, self.encoding, self.default_encoding, path)
        if stamp is not None:
            self._decoded[path] = (stamp, self.encoding, self.default_encoding, used, values)
        return masks, used, values

    def load(self, index: int) -> MultiRaterCase:
        case_id, site, image_name, _, csv_path = self.entries[index]
        image_path = self._resolve(csv_path, image_name)
        image = read_rgb(image_path)
        masks, used, values = [], set(), set()
        files = self.rater_files(index)
        for path in files.values():
            m, conv, seen = self._read_mask(path, image.shape[1:], image_path)
            masks.append(m)
            used.add(conv)
            values.update(seen)
        case = MultiRaterCase(
            image=np.ascontiguousarray(image, dtype=np.float32),
            masks=np.stack(masks),
            case_id=case_id,
            structures=STRUCTURES,
            patient_id=site,
            meta={
                "site": site,
                "source": str(image_path),
                "raters": list(files),
                "encoding": sorted(used),
                "label_values": sorted(int(v) for v in values),
            },
        )
        return resize_case(case, self.size).validate(str(image_path))


class RigaDiscRegionSource(_RigaCsvSource):
    """Reader of MRNet's DiscRegion RIGA preprocessing (format ``riga-discregion``).

    Args:
        root: folder holding ``Glaucoma_multirater_<site>.csv`` and the image folders.
        sites: sites to read (default all three).
        encoding: ``auto`` (default), ``discregion`` or ``rigaplus``.
        size: resize images and masks to ``size`` × ``size`` (or ``[H, W]``).
    """

    def __init__(
        self,
        root: str | Path,
        sites: list[str] | None = None,
        encoding: str = "auto",
        size: int | list[int] | None = None,
        **_: Any,
    ) -> None:
        super().__init__(root, sites, encoding, size)
        pattern = re.compile(r"^glaucoma_multirater_(\w+)\.csv$", re.IGNORECASE)
        csvs = sorted(p for p in self.root.rglob("*.csv") if pattern.match(p.name))
        if not csvs:
            raise DataError("no Glaucoma_multirater_<site>.csv files", self.root)
        for path in csvs:
            site = site_of(path.name)
            if site in self.sites:
                self._parse(path, site)
        self._finish()

    def _parse(self, path: Path, site: str) -> None:
        try:
            with open(path, encoding="gbk", newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read CSV as GBK ({exc})", path) from None
        if not rows or not {"imgName", "maskName", "rater"} <= set(rows[0]):
            raise DataError("expected columns imgName, maskName, ..., rater", path)
        final = ""
        for line, row in enumerate(rows, start=2):
            try:
                rater = int(float(row["rater"]))
            except (TypeError, ValueError):
                raise DataError(
                    f"line {line}: rater '{row['rater']}' is not a number", path
                ) from None
            if rater == 0:
                image, final = row["imgName"], row["maskName"]
                if "FinalLabel" not in final:
                    raise DataError(f"line {line}: mask '{final}' has no 'FinalLabel'", path)
                case_id = safe_id(f"{site}-{re.sub(r'[.][^.]*$', '', image)}")
                self.entries.append((case_id, site, image, {}, path))
            elif not final:
                raise DataError(f"line {line}: rater {rater} row before any rater 0 row", path)
            else:
                self.entries[-1][3][f"Rater{rater}"] = final.replace("FinalLabel", f"Rater{rater}")


class RigaPlusSource(_RigaCsvSource):
    """Reader of RIGA+ (Zenodo 6325549), format ``riga-plus``.

    Args:
        root: folder holding the ``<site>[_BaseN]_<subset>.csv`` files and images.
        sites: sites to read (default all three).
        subsets: CSV subsets to read (default ``[train, test]``; ``unlabeled`` has no masks).
        encoding: ``auto`` (default), ``discregion`` or ``rigaplus``.
        size: resize images and masks to ``size`` × ``size`` (or ``[H, W]``).
    """

    default_encoding = "rigaplus"

    def __init__(
        self,
        root: str | Path,
        sites: list[str] | None = None,
        subsets: list[str] | None = None,
        encoding: str = "auto",
        size: int | list[int] | None = None,
        **_: Any,
    ) -> None:
        super().__init__(root, sites, encoding, size)
        # mask folder -> (its stamp, its entries, the entries by lower-case stem and suffix)
        self._listings: dict[
            Path, tuple[_Stamp, list[_Entry], dict[tuple[str, str], list[_Entry]]]
        ] = {}
        wanted = {s.lower() for s in (subsets or ["train", "test"])}
        pattern = re.compile(r"^(\w+?)_(train|test|unlabeled)\.csv$", re.IGNORECASE)
        csvs = sorted(p for p in self.root.rglob("*.csv") if pattern.match(p.name))
        if not csvs:
            raise DataError("no <site>_<train|test>.csv files", self.root)
        for path in csvs:
            prefix, subset = pattern.match(path.name).groups()  # type: ignore[union-attr]
            site = site_of(prefix)
            if site in self.sites and subset.lower() in wanted:
                self._parse(path, site, safe_id(f"{prefix}_{subset}"))
        self._finish()

    def _parse(self, path: Path, site: str, tag: str) -> None:
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read CSV ({exc})", path) from None
        if rows and not {"image", "mask"} <= set(rows[0]):
            raise DataError("expected header 'image,mask'", path)
        for row in rows:
            if not (row.get("mask") or "").strip():
                continue  # unlabeled image
            stem = re.sub(r"[.][^.\\/]*$", "", row["image"].replace("\\", "/").split("/")[-1])
            self.entries.append(
                (safe_id(f"{tag}-{stem}"), site, row["image"], {"mask": row["mask"]}, path)
            )

    def rater_files(self, index: int) -> dict[str, Path]:
        """Rater k's file is the listed mask with ``.tif`` → ``-k.tif`` (k counted on disk)."""
        _, _, _, raters, csv_path = self.entries[index]
        listed = PurePosixPath(raters["mask"].replace("\\", "/"))
        stem, suffix = listed.stem, listed.suffix
        folder = self._resolve(csv_path, str(listed.parent))
        pattern = re.compile(rf"^{re.escape(stem)}-(\d+){re.escape(suffix)}$", re.IGNORECASE)
        found = {
            int(m.group(1)): p
            for name, p in self._rater_candidates(folder, stem, suffix)
            if (m := pattern.match(name))
        }
        if not found:
            raise DataError(f"no rater masks {stem}-<k>{suffix}", folder)
        missing = sorted(set(range(1, max(found) + 1)) - set(found))
        if missing:
            raise DataError(f"missing rater file {stem}-{missing[0]}{suffix}", folder)
        return {f"rater{k}": found[k] for k in sorted(found)}

    def _rater_candidates(self, folder: Path, stem: str, suffix: str) -> list[_Entry]:
        """The ``(name, path)`` entries of ``folder`` that may be ``<stem>-<k><suffix>``.

        The folder is listed once per source and indexed by lower-case stem (less the
        ``-k``) and suffix; it is listed again when its stamp changes or a file it held
        has gone. Callers match the candidates exactly; when the index has none, every
        entry is a candidate, in listing order.

        Args:
            folder: the resolved mask folder.
            stem: the listed mask's stem.
            suffix: the listed mask's suffix.

        Returns:
            Candidate entries in the order the folder listed them.
        """
        stamp = _file_stamp(folder)
        cached = self._listings.get(folder)
        key = (stem.lower(), suffix.lower())
        if cached is not None and stamp is not None and cached[0] == stamp:
            hits = cached[2].get(key)
            if hits is None or all(path.exists() for _, path in hits):
                return cached[1] if hits is None else hits
        entries = [(p.name, p) for p in folder.iterdir()]
        index: dict[tuple[str, str], list[_Entry]] = {}
        for name, path in entries:
            listed = PurePosixPath(name)
            index.setdefault(
                (listed.stem.rpartition("-")[0].lower(), listed.suffix.lower()), []
            ).append((name, path))
        if stamp is not None:
            self._listings[folder] = (stamp, entries, index)
        return index.get(key, entries)
