"""Device selection, mixed precision and the distributed context of a run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edue.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the local CUDA device when one is available, else the CPU.

    Raises:
        ConfigError: ``cuda`` asked for on a machine without a GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' requested but no CUDA GPU is available (use --device cpu)"
            )
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None`` = full precision).

    ``auto`` picks bf16 where the device supports it (CPU, Ampere+ GPUs), else fp16 on
    GPUs; ``fp16`` on the CPU is refused (no fast kernels, no benefit).
    """
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@dataclass
class Runtime:
    """Where and how a run executes.

    Attributes:
        device: the torch device of this process.
        amp_dtype: autocast dtype or ``None``.
        rank: global rank (0 without distribution).
        world_size: number of processes.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs, checkpoints and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast region for the forward pass (no-op in full precision)."""
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                yield

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 on CUDA."""
        enabled = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        return torch.amp.GradScaler(self.device.type, enabled=enabled)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over processes (identity when not distributed)."""
        if not self.distributed:
            return values
        out = values.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size


def setup_runtime(device: str = "auto", amp: str = "none") -> Runtime:
    """Create the runtime; under ``torchrun`` also join the process group.

    NCCL is used on GPUs and gloo on the CPU; ranks come from torchrun's environment.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(dev, resolve_amp(amp, dev), rank, world)


def teardown_runtime(runtime: Runtime) -> None:
    """Leave the process group, if any."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
