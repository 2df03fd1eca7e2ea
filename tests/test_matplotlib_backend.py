"""Importing edue, and drawing its figures, must leave matplotlib's backend alone.

A notebook user who picked a backend and then imported edue must keep that backend, so
no module may call ``matplotlib.use`` or create figures through ``pyplot``. The check runs
in a fresh interpreter, where no test has imported matplotlib yet. Figures use no global
state, so they can also be drawn from several threads at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib
    import json
    import pkgutil
    import sys
    from pathlib import Path

    import matplotlib

    matplotlib.use("template")
    before = matplotlib.get_backend()

    import edue
    import edue.report
    import edue.report.figures
    import edue.report.volume_figures

    report_imports_pyplot = "matplotlib.pyplot" in sys.modules

    imported, failed = [], {}
    for info in pkgutil.walk_packages(edue.__path__, prefix="edue."):
        if info.name == "edue.__main__":
            continue  # running it would start the command line
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # reported, and fails the test
            failed[info.name] = f"{type(exc).__name__}: {exc}"
        else:
            imported.append(info.name)
    after_import = matplotlib.get_backend()

    import numpy as np
    import torch

    from edue.prediction import Prediction
    from edue.report.figures import overlay_figure
    from edue.report.volume_figures import orthogonal_slices_figure

    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    members = torch.from_numpy(rng.random((3, 2, 16, 16)).astype(np.float32))
    overlay_figure(rng.random((3, 16, 16)), Prediction(members), out / "overlay.png", "2d")
    members = torch.from_numpy(rng.random((3, 1, 6, 8, 8)).astype(np.float32))
    orthogonal_slices_figure(
        rng.random((1, 6, 8, 8)), Prediction(members), out / "slices.png", "3d"
    )
    print(
        json.dumps(
            {
                "before": before,
                "after_import": after_import,
                "after_draw": matplotlib.get_backend(),
                "report_imports_pyplot": report_imports_pyplot,
                "pyplot_figures": (
                    sys.modules["matplotlib.pyplot"].get_fignums()
                    if "matplotlib.pyplot" in sys.modules
                    else []
                ),
                "imported": imported,
                "failed": failed,
            }
        )
    )
    """
)


def test_importing_and_drawing_keep_the_users_backend(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["MPLCONFIGDIR"] = str(tmp_path / "mplconfig")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["failed"], result["failed"]
    assert "edue.report.figures" in result["imported"]
    assert "edue.report.volume_figures" in result["imported"]
    assert result["before"] == "template"
    assert result["after_import"] == "template"
    assert result["after_draw"] == "template"
    # A third-party dependency may import pyplot on its own (MONAI does), which is
    # harmless; edue's report layer must not, and must not register figures with it.
    assert not result["report_imports_pyplot"]
    assert result["pyplot_figures"] == []
    for name in ("overlay.png", "slices.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _draw_overlay(path: Path, seed: int) -> bytes:
    import numpy as np
    import torch

    from edue.prediction import Prediction
    from edue.report.figures import overlay_figure

    rng = np.random.default_rng(seed)
    members = torch.from_numpy(rng.random((3, 2, 24, 24)).astype(np.float32))
    overlay_figure(rng.random((3, 24, 24)), Prediction(members), path, f"seed {seed}")
    return path.read_bytes()


def test_figures_drawn_in_parallel_threads_match_sequential_ones(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    seeds = list(range(6))
    sequential = [_draw_overlay(tmp_path / f"seq{s}.png", s) for s in seeds]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda s: _draw_overlay(tmp_path / f"par{s}.png", s), seeds))
    assert parallel == sequential
    assert len(set(sequential)) == len(seeds)  # each seed draws a different figure


def test_report_package_is_cheap_and_exports_its_public_names() -> None:
    script = textwrap.dedent(
        """
        import json
        import sys

        import edue.report as report

        cheap = [m for m in ("matplotlib", "torch", "numpy") if m in sys.modules]
        missing = [n for n in report.__all__ if getattr(report, n, None) is None]
        print(json.dumps({
            "loaded_on_import": cheap,
            "missing": missing,
            "in_dir": sorted(set(report.__all__) - set(dir(report))),
            "pyplot": "matplotlib.pyplot" in sys.modules,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded_on_import"] == []
    assert result["missing"] == [] and result["in_dir"] == []
    assert not result["pyplot"]

    import edue.report

    assert len(set(edue.report.__all__)) == len(edue.report.__all__)
    with pytest.raises(AttributeError, match="not_a_public_name"):
        edue.report.not_a_public_name  # noqa: B018
