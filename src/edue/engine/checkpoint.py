"""Checkpoints that are written atomically and loaded without executing code.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values
(dicts, lists, strings, numbers), loaded with ``torch.load(weights_only=True)``, whose
restricted unpickler refuses any other global — a crafted file cannot run code. It
records the ``edue`` version and a SHA-256 of the weights, checked on load.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config

from edue._version import __version__
from edue.errors import CheckpointError
from edue.io import atomic_path

FORMAT = "edue-checkpoint"


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes and bytes of a state dict's tensors (sorted)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every random state a run uses, as tensors and plain values."""
    np_state = np.random.get_state()  # noqa: NPY002 - the global state libraries use
    np_tuple: tuple[Any, ...] = tuple(np_state)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_tuple[0], torch.from_numpy(np_tuple[1].astype(np.int64)), *np_tuple[2:]],
        "python": _py_state_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_plain(state: tuple) -> list:  # type: ignore[type-arg]
    return [state[0], list(state[1]), state[2]]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    legacy = (np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:])
    np.random.set_state(legacy)  # noqa: NPY002 - the global state libraries use
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temp file, fsync, rename).

    Args:
        path: destination.
        payload: must contain ``model`` (a state dict) and ``config`` (a plain dict);
            may contain optimizer/scheduler states, epoch, RNG states and more.

    Returns:
        The path written.
    """
    body = dict(payload)
    body["format"] = FORMAT
    body["edue_version"] = __version__
    body["weights_sha256"] = weights_hash(body["model"])
    with atomic_path(path) as tmp:
        torch.save(body, tmp)
    return Path(path)


def renamed_checkpoint(source: str | Path, out: str | Path, method: str) -> Path:
    """Copy a checkpoint under another registered method's name (one trained with exactly
    the same network, loss and seed, that reads its outputs differently).

    Returns:
        The checkpoint written.
    """
    state = load_checkpoint(source)
    state["method"] = method
    state["config"]["method"]["name"] = method
    for key in ("format", "edue_version", "weights_sha256"):
        state.pop(key, None)
    return save_checkpoint(out, state)


def reconfigured_checkpoint(source: str | Path, config: Config) -> Path:
    """Copy a checkpoint into ``config.out_dir`` (``best.pt``, with ``config.yaml``) under
    ``config``, which must train exactly as the source's and differ only in how the
    outputs are read (``method.segmentation``, ``method.score``).

    Returns:
        The checkpoint written.
    """
    from edue.config import save_config

    state = load_checkpoint(source)
    state["config"] = config.to_dict()
    state["method"] = config.method.name
    for key in ("format", "edue_version", "weights_sha256"):
        state.pop(key, None)
    out = Path(config.out_dir)
    save_config(config, out / "config.yaml")
    return save_checkpoint(out / "best.pt", state)


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint file (or the folder itself when given one)."""
    path = Path(checkpoint)
    return path.parent if path.is_file() else path


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file or a run folder (its ``best.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt", "ensemble.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError("folder holds no checkpoint (best.pt, last.pt or ensemble.pt)", path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    return path


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint without executing code and check its integrity.

    Raises:
        CheckpointError: missing, corrupt, unsafe (would run code), not an edue
            checkpoint, or whose weights do not match their recorded hash.
    """
    path = resolve_checkpoint(path)
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"refused: the file asks to call '{found.group(1)}', which a checkpoint never "
                "holds (it could run code); nothing was executed",
                path,
            ) from None
        raise CheckpointError(
            "not a readable checkpoint (corrupt, truncated or not a torch file)", path
        ) from None
    except Exception:  # any other decoder failure: truncated, garbage, foreign file
        raise CheckpointError(
            "not a readable checkpoint (corrupt, truncated or not a torch file)", path
        ) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError("not an edue checkpoint", path)
    lacking = [k for k in ("model", "config") if not isinstance(body.get(k), dict)]
    if lacking:
        raise CheckpointError(
            f"incomplete checkpoint: no {' or '.join(repr(k) for k in lacking)} entry", path
        )
    if verify and weights_hash(body["model"]) != body.get("weights_sha256"):
        raise CheckpointError(
            "weights do not match their recorded SHA-256 (file altered or corrupt)", path
        )
    check_version(body.get("edue_version"), path)
    return body  # type: ignore[no-any-return]


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def check_version(recorded: object, path: str | Path) -> None:
    """The version policy of checkpoints: one written by a newer *major* version of edue
    is refused (its layout may have changed in ways this version cannot read); any other
    difference (minor or patch, or an unrecorded version) is read with a warning.

    Raises:
        CheckpointError: the checkpoint's major version is above this edue's.
    """
    if recorded == __version__:
        return
    mine, theirs = _major(__version__), _major(str(recorded)) if recorded else None
    if theirs is not None and mine is not None and theirs > mine:
        raise CheckpointError(
            f"written by edue {recorded}, a newer major version than this edue "
            f"{__version__}; upgrade edue to read it",
            path,
        )
    warnings.warn(f"{path}: written by edue {recorded}, this is edue {__version__}", stacklevel=3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
