"""Reading and writing images, masks and files safely.

Every reader raises :class:`~edue.errors.DataError` naming the file on any problem
(missing, unreadable, truncated, unsupported), and every writer writes to a temporary
name in the same folder and renames it into place, so a half-written output is never
presented as complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edue.errors import DataError, EdueError

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ARRAY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = IMAGE_2D_SUFFIXES + NIFTI_SUFFIXES + ARRAY_SUFFIXES


@dataclass
class ArrayMeta:
    """Geometry read from a file header (volumes) or defaults (2D images).

    Attributes:
        spacing: size of one pixel/voxel per spatial axis (mm), if known.
        affine: 4×4 voxel-to-world matrix, if known (NIfTI).
    """

    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one."""
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError("file not found", path)
    if not path.is_file():
        raise DataError("expected a file, found a folder", path)


def read_array(path: str | Path) -> tuple[np.ndarray, ArrayMeta]:
    """Read an image or mask file into an array.

    2D images come back as ``[H, W]`` or ``[H, W, C]``; NIfTI volumes in stored voxel
    order ``[X, Y, Z]`` (or ``[X, Y, Z, C]``) with spacing and affine from the header;
    ``.npy`` files as stored (loaded without pickle).

    Raises:
        DataError: missing, unreadable, truncated or unsupported file.
    """
    path = Path(path)
    _require_file(path)
    suffix = suffix_of(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            return _read_nifti(path)
        if suffix in ARRAY_SUFFIXES:
            return np.load(path, allow_pickle=False), ArrayMeta()
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path)), ArrayMeta()
        if suffix in IMAGE_2D_SUFFIXES:
            from PIL import Image

            with Image.open(path) as opened:
                opened.load()
                img = (
                    opened.convert("RGB")
                    if opened.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV")
                    else opened
                )
                return np.asarray(img), ArrayMeta()
    except DataError:
        raise
    except Exception as exc:  # any decoder failure is a corrupt or unsupported file
        raise DataError(f"cannot read file ({type(exc).__name__}: {exc})", path) from None
    raise DataError(
        f"unsupported file type '{suffix}' (expected one of {', '.join(SUPPORTED_SUFFIXES)})", path
    )


def _read_nifti(path: Path) -> tuple[np.ndarray, ArrayMeta]:
    import nibabel as nib

    img: Any = nib.load(str(path))
    shape = tuple(int(d) for d in img.shape)
    need = int(np.prod(shape, dtype=np.float64)) * max(4, img.get_data_dtype().itemsize)
    if need > available_memory():
        raise DataError(
            f"volume of shape {shape} needs about {need / 2**30:.1f} GiB, more than the "
            f"{available_memory() / 2**30:.1f} GiB of memory available",
            path,
        )
    data = np.asarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, ArrayMeta(spacing=zooms[: min(3, data.ndim)], affine=np.asarray(img.affine))


def available_memory() -> int:
    """Bytes of memory available to this process now (psutil)."""
    import psutil

    return int(psutil.virtual_memory().available)


def read_image(path: str | Path, spatial_dims: int | None = None) -> tuple[np.ndarray, ArrayMeta]:
    """Read an image as float32 channels-first ``[C, *spatial]``.

    8-bit and 16-bit 2D images are scaled to [0, 1]; NIfTI and ``.npy`` values are kept.

    Args:
        path: image file.
        spatial_dims: 2 or 3; inferred from the file type when ``None``.

    Raises:
        DataError: unreadable file, non-finite values or an unexpected shape.
    """
    array, meta = read_array(path)
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]  # a 2D slice stored with a singleton third axis
    if spatial_dims is None:
        spatial_dims = 3 if suffix in NIFTI_SUFFIXES and array.ndim >= 3 else 2
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.number)):
        raise DataError(f"image has non-numeric dtype {array.dtype}", path)
    image = float_intensities(array, path)
    if image.ndim == spatial_dims:
        image = image[None]
    elif image.ndim == spatial_dims + 1:
        if not _channels_first(suffix, image.shape):
            image = np.moveaxis(image, -1, 0)  # channels-last files -> channels-first
    else:
        raise DataError(
            f"expected a {spatial_dims}D image (optionally with channels), got shape {array.shape}",
            path,
        )
    if not np.isfinite(image).all():
        raise DataError("image contains NaN or Inf values", path)
    return np.ascontiguousarray(image), meta


#: the most channels an array's first axis may hold to be read as channels-first
MAX_CHANNELS_FIRST = 16


def _channels_first(suffix: str, shape: tuple[int, ...]) -> bool:
    """Whether an array with one axis more than its image's dimensions is already
    channels-first: image files (PNG, TIFF, …) are channels-last; a ``.npy`` array is
    channels-first when its first axis is the shorter one and at most
    :data:`MAX_CHANNELS_FIRST` long (``[3, 512, 512]``), else channels-last
    (``[512, 512, 3]``)."""
    return suffix == ".npy" and shape[0] < shape[-1] and shape[0] <= MAX_CHANNELS_FIRST


def float_intensities(array: np.ndarray, path: str | Path) -> np.ndarray:
    """Image values as float32, 8-bit and 16-bit 2D image files scaled to [0, 1].

    Args:
        array: the values read from ``path``, any shape.
        path: the file they came from (its type decides the scaling).

    Returns:
        float32 array of the same shape: divided by 255 (``uint8``) or 65535
        (``uint16``) for PNG, JPEG, TIFF and BMP files; NIfTI, ``.npy`` and other
        dtypes keep their values.
    """
    scale = 1.0
    if suffix_of(path) in IMAGE_2D_SUFFIXES:
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype, 1.0)
    return array.astype(np.float32) / scale


def read_label_map(
    path: str | Path, spatial_dims: int | None = None
) -> tuple[np.ndarray, ArrayMeta]:
    """Read an integer label/mask file ``[*spatial]``.

    A 2D RGB(A) mask whose channels are equal is reduced to one channel; a trailing
    singleton axis is dropped.

    Raises:
        DataError: unreadable file, non-integer values or several differing channels.
    """
    array, meta = read_array(path)
    if spatial_dims is not None and array.ndim == spatial_dims + 1:
        if (
            array.shape[-1] == 1
            or array.shape[-1] in (3, 4)
            and all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, 3))
        ):
            array = array[..., 0]
        else:
            raise DataError(f"mask must be single-channel, got shape {array.shape}", path)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DataError(
                "mask must hold integer label values, found fractional/NaN values", path
            )
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"mask has non-integer dtype {array.dtype}", path)
    return array, meta


# --------------------------------------------------------------------------- writing
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place on success.

    The temporary file is fsynced before the rename and the folder after it (so a
    power loss cannot lose the new entry); the temporary file is removed if the block
    fails. The temporary name keeps the final suffix so format detection still works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + suffix_of(path), dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs are shared
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries to disk (after renames), where the platform allows."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | Path, what: str, where: str | Path | None = None) -> Any:
    """The content of the JSON file ``path``.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"a readable calibration file"``).
        where: the file or folder the message names (default: ``path``).

    Raises:
        EdueError: the file cannot be read or is not JSON: "not {what} (the error)".
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdueError(
            f"not {what} ({type(exc).__name__}: {exc})", path if where is None else where
        ) from None


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically (indented, UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default), encoding="utf-8")


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor
        return obj.detach().cpu().tolist()  # type: ignore[attr-defined]
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 1) -> None:
    """Write a uint8 ``[H, W]`` or ``[H, W, 3|4]`` array as PNG, atomically.

    ``compress_level`` 1 (of zlib's 0–9; Pillow's default is 6): maps of probabilities
    and variances come out a little larger for about half the CPU time.
    """
    from PIL import Image

    with atomic_path(path) as tmp:
        image = Image.fromarray(np.ascontiguousarray(array))
        image.save(tmp, format="PNG", compress_level=compress_level)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write an array as NIfTI with the given affine (identity when ``None``), atomically."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> None:
    """Write arrays to an ``.npz`` (readable by ``np.load``), atomically.

    Args:
        path: the file.
        compress: deflate at level 1 (not ``np.savez_compressed``'s 6: ~4 % larger in
            half the CPU time); ``False`` stores the arrays as they are — for float32
            probability maps deflate saves only ~10 % of the size at ~30× the CPU time
            of writing them (``edue predict`` writes its NPZ so).
        **arrays: name → array.
    """
    import zipfile

    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(
            tmp, "w", compression=method, compresslevel=1 if compress else None
        ) as archive,
    ):
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def to_uint8(array: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Scale a float map to uint8 (``[0, vmax] -> [0, 255]``; ``vmax`` = max if None)."""
    top = float(array.max()) if vmax is None else vmax
    top = top if top > 0 else 1.0
    return (np.clip(array / top, 0, 1) * 255 + 0.5).astype(np.uint8)
