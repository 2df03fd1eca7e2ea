"""Memory of a prediction: the budget (``infer.max_memory_mb``; by default half the
machine's memory, :func:`default_memory_budget_mb`), the live-tensor meter that measures
a pass (:class:`LiveTensorBytes`), the one-line message when an image cannot fit, and
handing freed memory back to the system. How the budget is spent, tile by tile:
:mod:`edue.engine.inference.tiling`.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edue.errors import DataError

MB = 1024**2


#: share of the machine's memory (or the GPU's) a prediction may use by default
DEFAULT_FRACTION = 0.5


#: the least default budget, however small the machine (MB)
FLOOR_MB = 512


#: the default budget when the machine's memory cannot be read (MB)
UNKNOWN_MACHINE_MB = 2048


#: margin on the tracked tensor bytes: allocator slack and backend scratch (oneDNN
#: reorders) made the resident memory of whole-image passes 1.13–1.35× the tracked peak
SAFETY = 1.35


#: fixed allowance of a prediction beyond its tensors (allocator arenas and
#: fragmentation, backend buffers): the resident memory of tiled predictions varied by
#: ±30 MB from run to run on the same image
OVERHEAD_BYTES = 64 * MB


_FLOAT = 4  # bytes of a float32


# --------------------------------------------------------------------------- budget
def round_up(value: float, multiple: int) -> int:
    """The least multiple of ``multiple`` at or above ``value``."""
    return int(math.ceil(value / multiple - 1e-9)) * multiple


def machine_memory_bytes() -> int | None:
    """The memory this process can use: the physical memory (``/proc/meminfo``'s
    ``MemTotal``, else ``os.sysconf``), or the cgroup's limit when it is lower
    (containers). ``None`` when neither can be read."""
    total: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        total = None
    if total is None:
        try:
            total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            total = None
    for limit_file in (
        "/sys/fs/cgroup/memory.max",  # cgroup v2 ("max": unlimited)
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1 (huge: unlimited)
    ):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0 and (total is None or int(text) < total):
            total = int(text)
    return total


def default_memory_budget_mb(device: torch.device | str | None = None) -> int:
    """The prediction memory budget when ``infer.max_memory_mb`` is ``null``.

    :data:`DEFAULT_FRACTION` (half) of the machine's memory (:func:`machine_memory_bytes`;
    on a CUDA device, of the GPU's memory), at least :data:`FLOOR_MB`;
    :data:`UNKNOWN_MACHINE_MB` when the memory cannot be read.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    total: int | None
    if dev.type == "cuda" and torch.cuda.is_available():
        total = int(torch.cuda.get_device_properties(dev).total_memory)
    else:
        total = machine_memory_bytes()
    if not total:
        return UNKNOWN_MACHINE_MB
    return max(FLOOR_MB, int(total * DEFAULT_FRACTION / MB))


# --------------------------------------------------------------------------- tensor bytes
class LiveTensorBytes(TorchDispatchMode):
    """The peak bytes of live tensors created while it is active, and the resampling
    operators run.

    Every tensor an operator returns is tracked (by a weak reference) until it is freed;
    storages shared by views count once. Tensors made before (the input, the weights)
    are not counted. Resampling operators (``upsample_*``, ``pixel_shuffle``), whether
    called by a module or functionally (``F.interpolate`` in the heads), are listed with
    their input and output shapes in :attr:`resampling`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tracked: list[tuple[weakref.ref[torch.Tensor], int, int]] = []
        self.peak = 0
        #: ``(operator name, input shape, output shape)`` of each resampling operator
        self.resampling: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(  # type: ignore[no-untyped-def,override]
        self, func, types, args=(), kwargs=None
    ):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if ("upsample" in name or "pixel_shuffle" in name) and isinstance(out, torch.Tensor):
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is not None:
                self.resampling.append((name, tuple(first.shape), tuple(out.shape)))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                try:
                    storage = t.untyped_storage()
                    self._tracked.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
                except (RuntimeError, NotImplementedError, TypeError):
                    continue
        alive = [entry for entry in self._tracked if entry[0]() is not None]
        self._tracked = alive
        live = {ptr: size for _, ptr, size in alive}
        self.peak = max(self.peak, sum(live.values()))
        return out


def _mb(nbytes: float) -> str:
    return f"{math.ceil(nbytes / MB):,} MB"


def memory_message(
    shape: Sequence[int],
    batch: int,
    stack_size: int,
    structures: int,
    need_bytes: float,
    budget_bytes: float,
    what: str = "the member stack, the image and the smallest tile",
    least_bytes: float | None = None,
) -> str:
    """The one line of the :class:`~edue.errors.DataError` of a prediction over budget.

    Args:
        shape: the image's spatial shape.
        batch: images in the batch.
        stack_size: maps in the member stack ``S'``.
        structures: structures ``K``.
        need_bytes: what ``what`` needs.
        budget_bytes: the budget.
        what: what needs ``need_bytes``.
        least_bytes: the least budget the prediction needs (default ``need_bytes``);
            the value suggested is 5 % above it, rounded up to 100 MB.
    """
    size = "×".join(str(int(s)) for s in shape)
    images = f"{batch} images" if batch > 1 else "an image"
    stack = f"[{stack_size}, {structures}, {', '.join(str(int(s)) for s in shape)}]"
    least = need_bytes if least_bytes is None else max(least_bytes, need_bytes)
    wanted = round_up(least / MB * 1.05, 100)
    return (
        f"{images} of {size} px needs at least {_mb(need_bytes)} for {what} "
        f"(member stack {stack} float32 per image), over the prediction memory budget of "
        f"{_mb(budget_bytes)}; raise it, e.g. infer.max_memory_mb={wanted}, or predict "
        f"smaller images"
    )


def check_stack_fits(
    shape: Sequence[int],
    batch: int,
    in_channels: int,
    stack_size: int,
    structures: int,
    budget_bytes: int,
) -> None:
    """Raise a one-line :class:`~edue.errors.DataError` when the whole image's member
    stack ``[S', B, K, *shape]`` float32 and the image alone exceed the budget (for
    images predicted in one pass without a plan: those under the probe's size)."""
    pixels = math.prod(shape)
    need = (stack_size * structures + in_channels) * batch * pixels * _FLOAT
    if need > budget_bytes:
        what = "its member stack and the image alone"
        raise DataError(
            memory_message(shape, batch, stack_size, structures, need, budget_bytes, what)
        )


_LIBC: Any = None


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc ``malloc_trim``; nothing
    elsewhere): between tiles, so that one tile's freed activations do not stay
    resident, fragmented, under the next one's."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)
