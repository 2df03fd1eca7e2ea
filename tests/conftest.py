"""Shared fixtures: tiny seeded cases and a tiny trained run, made in temp folders."""

from __future__ import annotations

import os
import shutil
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


#: Names a headless-capable Chromium or Chrome goes by on PATH, in order of preference.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Environment variable naming the browser to use instead (a path or a command name); a
#: value that names no program means that there is no browser.
CHROMIUM_ENV = "EDUE_CHROMIUM"


def find_chromium() -> str | None:
    """A headless-capable Chromium or Chrome, or ``None``.

    The program named by ``EDUE_CHROMIUM`` when that is set (``None`` when it names no
    executable), else the first of :data:`CHROMIUM_NAMES` found on PATH.
    """
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return shutil.which(override)
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


def in_ci() -> bool:
    """Whether the tests run in continuous integration (``CI=true``, any case)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def chromium_or_skip(purpose: str) -> str:
    """The browser for a test that needs one (:func:`find_chromium`).

    Without a browser the test is skipped with the reason, except under ``CI=true``,
    where it fails: browser checks must not drop out of CI unnoticed (``.ci/run``
    installs Debian's ``chromium``).

    Args:
        purpose: what the browser is for, completing "no chromium on PATH to ...".

    Returns:
        The browser's path.
    """
    found = find_chromium()
    if found is not None:
        return found
    override = os.environ.get(CHROMIUM_ENV)
    why = f" ({CHROMIUM_ENV}={override} names no program)" if override else ""
    if in_ci():
        pytest.fail(
            f"CI=true but no chromium on PATH{why} to {purpose}; "
            "install one (Debian: apt-get install chromium, as .ci/run does)",
            pytrace=False,
        )
    pytest.skip(f"no chromium on PATH{why} to {purpose}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a headless browser; skips without one, fails under ``CI=true``."""
    return chromium_or_skip("render the HTML pages in a browser")


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


@pytest.fixture(scope="session")
def tiny_run_any_size(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` as if trained on images of several sizes: no training size recorded,
    so it predicts every image at the image's own size (no resampling)."""
    import shutil

    import torch

    from edue.engine.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("tiny_run_any_size") / "run"
    shutil.copytree(tiny_run, out)
    for path in out.glob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["data"]["grid"] = {"size": None, "spacing": None}
        save_checkpoint(path, state)
    return out
