"""LIDC-IDRI lung-nodule crops with four raters (two public preprocessings).

``lidc-pickle``
    The Probabilistic U-Net (PyTorch port) pickle: a dict
    ``key -> {'image': float [128, 128] in [0, 1], 'masks': list of 4 uint8 {0, 1}
    [128, 128], 'series_uid': str}``. The file is read in chunks of 2**31 − 1 bytes and
    unpickled with :mod:`edue.data.safe_pickle` (plain containers and numpy arrays
    only). Patient id = ``key.split('_')[0]``.

``lidc-hdf5``
    PHiSeg's ``data_lidc.hdf5``: groups ``train``, ``val``, ``test`` each holding
    ``images`` (N, 128, 128) (= pickle image − 0.5), ``labels`` (N, 128, 128, 4) uint8
    and ``uids`` (N,) (a hash of the series UID, used as the patient id).

Both give images ``[1, 128, 128]`` and masks ``[4, 1, 128, 128]`` for the single
structure ``("nodule",)``. Empty rater masks are common and valid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase, binary_rater_masks
from edue.data.safe_pickle import safe_load
from edue.data.source import CaseSource
from edue.errors import DataError

STRUCTURES = ("nodule",)


def _find_file(root: Path, suffixes: tuple[str, ...]) -> Path:
    if root.is_file():
        return root
    if root.is_dir():
        found = sorted(p for p in root.iterdir() if p.suffix.lower() in suffixes)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DataError(
                f"several candidate files {[p.name for p in found]}; name the file as root", root
            )
    raise DataError(f"no {'/'.join(suffixes)} file found", root)


class LidcPickleSource(CaseSource):
    """Reader of the Probabilistic U-Net LIDC pickle (format ``lidc-pickle``).

    The whole pickle is loaded (safely) at construction; cases are then cut from it.

    Args:
        root: the pickle file, or a folder holding exactly one ``.pickle``/``.pkl``.
    """

    spatial_dims = 2

    def __init__(self, root: str | Path, **_: Any) -> None:
        self.path = _find_file(Path(root), (".pickle", ".pkl"))
        data = safe_load(self.path)
        if not isinstance(data, dict) or not data:
            raise DataError(
                "expected a non-empty dict key -> {'image', 'masks', 'series_uid'}", self.path
            )
        self.data: dict[str, Any] = data
        self.case_ids = sorted(str(k) for k in data)
        self._keys = {str(k): k for k in data}
        self.patient_ids = [k.split("_")[0] for k in self.case_ids]
        self.structures = STRUCTURES

    def load(self, index: int) -> MultiRaterCase:
        key = self.case_ids[index]
        where = f"{self.path}[{key}]"
        entry = self.data[self._keys[key]]
        if not isinstance(entry, dict) or "image" not in entry or "masks" not in entry:
            raise DataError("entry must be a dict with 'image' and 'masks'", where)
        try:
            image = np.asarray(entry["image"], dtype=np.float32)
            raw = np.stack([np.asarray(m) for m in entry["masks"]])
        except (TypeError, ValueError) as exc:
            raise DataError(f"cannot read image/masks ({exc})", where) from None
        if image.ndim != 2 or raw.shape[1:] != image.shape:
            raise DataError(
                f"expected image [H, W] and masks [R, H, W], got {image.shape} and {raw.shape}",
                where,
            )
        masks, values = binary_rater_masks(raw, where)
        case = MultiRaterCase(
            image=image[None],
            masks=masks[:, None],
            case_id=key,
            structures=self.structures,
            patient_id=self.patient_ids[index],
            meta={
                "source": where,
                "series_uid": str(entry.get("series_uid", "")),
                "label_values": values,
            },
        )
        return case.validate(where)


class LidcHdf5Source(CaseSource):
    """Reader of PHiSeg's ``data_lidc.hdf5`` (format ``lidc-hdf5``).

    Args:
        root: the HDF5 file, or a folder holding exactly one ``.hdf5``/``.h5``.
        group: ``train``, ``val`` or ``test`` (default ``train``).
        restore_range: add 0.5 back to the images so they lie in [0, 1] like the
            pickle's (default ``True``).
    """

    spatial_dims = 2

    def __init__(
        self, root: str | Path, group: str = "train", restore_range: bool = True, **_: Any
    ) -> None:
        import h5py

        self.path = _find_file(Path(root), (".hdf5", ".h5"))
        self.group = group
        self.offset = 0.5 if restore_range else 0.0
        self._handle: Any = None
        self._pid = -1
        try:
            with h5py.File(self.path, "r") as fh:
                if group not in fh:
                    raise DataError(f"no group '{group}' (groups: {sorted(fh.keys())})", self.path)
                g = fh[group]
                missing = [k for k in ("images", "labels") if k not in g]
                if missing:
                    raise DataError(f"group '{group}' lacks datasets {missing}", self.path)
                self._image_shape = tuple(g["images"].shape)
                self._label_shape = tuple(g["labels"].shape)
                uids = np.asarray(g["uids"]) if "uids" in g else np.arange(self._image_shape[0])
        except OSError as exc:
            raise DataError(f"cannot open HDF5 file ({exc})", self.path) from None
        n = self._image_shape[0]
        self._rater_axis = self._find_rater_axis()
        self.case_ids = [f"{group}-{i:05d}" for i in range(n)]
        self.patient_ids = [str(u.decode() if isinstance(u, bytes) else u) for u in uids]
        self.structures = STRUCTURES

    def _find_rater_axis(self) -> int:
        spatial = self._image_shape[1:]
        if len(self._label_shape) == 4 and self._label_shape[1:3] == spatial:
            return 3
        if len(self._label_shape) == 4 and self._label_shape[2:] == spatial:
            return 1
        raise DataError(
            f"labels {self._label_shape} do not match images {self._image_shape} "
            "(expected (N, H, W, R) or (N, R, H, W))",
            self.path,
        )

    def _file(self) -> Any:
        import h5py

        if self._handle is None or self._pid != os.getpid():  # one handle per process
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def load(self, index: int) -> MultiRaterCase:
        where = f"{self.path}[{self.group}/{index}]"
        g = self._file()[self.group]
        image = (np.asarray(g["images"][index], dtype=np.float64) + self.offset).astype(np.float32)
        raw = np.asarray(g["labels"][index])
        if self._rater_axis == 3:
            raw = np.moveaxis(raw, -1, 0)
        masks, values = binary_rater_masks(raw, where)
        case = MultiRaterCase(
            image=image[None],
            masks=masks[:, None],
            case_id=self.case_ids[index],
            structures=self.structures,
            patient_id=self.patient_ids[index],
            meta={"source": where, "label_values": values},
        )
        return case.validate(where)
