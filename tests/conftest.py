"""Shared fixtures: tiny seeded cases and a tiny trained run, made in temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edue.data.case import MultiRaterCase

torch.set_num_threads(1)


def make_case(
    rng: np.random.Generator,
    n_raters: int = 3,
    size: int = 16,
    structures: tuple[str, ...] = ("disc", "cup"),
    case_id: str = "case",
) -> MultiRaterCase:
    """A random 2D case with nested structures (each inside the previous)."""
    image = rng.random((3, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n_raters, len(structures), size, size), dtype=np.uint8)
    for r in range(n_raters):
        radius = size * 0.4
        for k in range(len(structures)):
            radius = radius * 0.6 if k else radius + rng.uniform(-1.5, 1.5)
            masks[r, k] = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
            if k:
                masks[r, k] &= masks[r, k - 1]
    return MultiRaterCase(image=image, masks=masks, case_id=case_id, structures=structures)


def find_chromium() -> str | None:
    """A headless-capable Chromium or Chrome on PATH, or ``None``."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def free_port() -> int:
    """A free TCP port on the loopback address (for a gloo process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join_process_group_env(rank: int, world: int, port: int) -> None:
    """The environment ``torch.distributed`` reads, for rank ``rank`` of ``world`` here."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )


@pytest.fixture(autouse=True, scope="session")
def _cache_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Disk caches of prepared cases go to a temp folder (children inherit it), never to
    the user's cache folder."""
    os.environ["EDUE_CACHE_DIR"] = str(tmp_path_factory.mktemp("edue-cache"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


TINY_OVERRIDES = [
    "data.format=synthetic",
    "data.options={size: 32}",
    "data.split={train: 12, val: 4, test: 4}",
    "model.channels=[4, 8, 16]",
    "train.epochs=2",
    "train.batch_size=4",
    "train.device=cpu",
    "method.skip_first=1",
    "method.mc_samples=3",
    "method.ensemble_size=2",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch EDUE run on 12 synthetic 32² cases (shared by several tests)."""
    from edue.config import load_config
    from edue.engine.training.trainer import train

    out = tmp_path_factory.mktemp("tiny_run")
    config = load_config(None, [*TINY_OVERRIDES, f"out_dir={out}"])
    return train(config)
