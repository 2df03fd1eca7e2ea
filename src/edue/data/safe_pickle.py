"""Reading pickle files without running the code they may carry.

A pickle can name any importable callable and have it called while loading (the
``__reduce__`` protocol), so a downloaded pickle can run arbitrary code. The
:class:`RestrictedUnpickler` resolves only the globals needed to rebuild plain
containers (dict, list, tuple, set, str, bytes, numbers) and numpy arrays, scalars and
dtypes; any other global is refused with a :class:`~edue.errors.DataError` naming the
file and the global, *before* anything is called.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

from edue.errors import DataError

#: Largest single ``read``; some platforms fail on reads of 2 GiB or more.
CHUNK_BYTES = 2**31 - 1

_NUMPY_ARRAY = frozenset({"_reconstruct", "scalar", "ndarray", "dtype"})
_NUMPY_BUFFER = frozenset({"_frombuffer"})

#: ``module -> names`` that the restricted unpickler may resolve.
ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": _NUMPY_ARRAY,
    "numpy._core.multiarray": _NUMPY_ARRAY,
    "numpy.core.numeric": _NUMPY_BUFFER,
    "numpy._core.numeric": _NUMPY_BUFFER,
    # protocol-2 pickles encode ``bytes`` as _codecs.encode(str, "latin1")
    "_codecs": frozenset({"encode"}),
    "builtins": frozenset(
        {
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "bytearray",
            "bytes",
            "str",
            "int",
            "float",
            "complex",
            "bool",
        }
    ),
    # Python 2 pickles name the builtins module differently
    "__builtin__": frozenset(
        {
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "bytearray",
            "str",
            "int",
            "float",
            "complex",
            "bool",
        }
    ),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds containers and numpy arrays.

    Args:
        file: binary file object positioned at the pickle.
        source: file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, source: str | Path) -> None:
        super().__init__(file, encoding="latin1")
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if it is in :data:`ALLOWED_GLOBALS`.

        Raises:
            DataError: the global is not allowed (naming the file and the global).
        """
        if name not in ALLOWED_GLOBALS.get(module, frozenset()):
            raise DataError(
                f"pickle refers to '{module}.{name}', which is not allowed (only plain "
                "containers and numpy arrays are accepted; the file may be unsafe)",
                self.source,
            )
        if module == "__builtin__":
            module = "builtins"
        with warnings.catch_warnings():  # numpy 2 warns when numpy.core is imported
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids (external objects) are never resolved."""
        raise DataError("pickle uses persistent ids, which are not allowed", self.source)


def read_bytes_chunked(path: str | Path, chunk: int = CHUNK_BYTES) -> bytes:
    """Read a whole file in reads of at most ``chunk`` bytes.

    Raises:
        DataError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    data = bytearray()
    try:
        with open(path, "rb") as fh:
            while True:
                block = fh.read(chunk)
                if not block:
                    break
                data += block
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", path) from None
    return bytes(data)


def safe_loads(data: bytes, source: str | Path = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Raises:
        DataError: a refused global, or a truncated/corrupt pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or corrupt stream
        raise DataError(f"cannot unpickle ({type(exc).__name__}: {exc})", source) from None


def safe_load(path: str | Path) -> Any:
    """Read a pickle file in chunks and unpickle it safely (see :func:`safe_loads`)."""
    return safe_loads(read_bytes_chunked(path), path)
