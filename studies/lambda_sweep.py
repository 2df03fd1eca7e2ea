"""The guidance weight λ swept on the embedded 2D and 3D datasets, for the published
guidance (``guidance_norm: none``) and the normalised one (``expert_rms``).

Each setting trains EDUE with the demo's configuration and budget (``edue demo``'s
``DEMO_2D`` / ``DEMO_3D``, seed 0) and is evaluated on the *validation* split — the
choice of the default is made there, never on the test split — and on the test split
for the record. Runs are independent; ``--jobs 2`` trains two at a time.

    python studies/lambda_sweep.py --out runs/lambda_sweep --jobs 2
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from _demo_runs import markdown as tables
from _demo_runs import train_and_evaluate

SETTINGS = {
    2: [("none", 5.0), ("none", 2.0), ("expert_rms", 0.1), ("expert_rms", 0.25),
        ("expert_rms", 0.5), ("expert_rms", 1.0), ("mse", 50.0), ("mse", 100.0)],
    3: [("none", 5.0), ("none", 2.0), ("expert_rms", 0.1), ("expert_rms", 0.25),
        ("expert_rms", 0.5), ("expert_rms", 1.0), ("mse", 50.0), ("mse", 100.0)],
}  # fmt: skip


def run_one(dims: int, norm: str, weight: float, out: str, threads: int) -> dict:
    method = {"guidance_norm": norm, "guidance_weight": weight}
    record = {"norm": norm, "weight": weight}
    return train_and_evaluate(dims, f"{dims}d_{norm}_{weight:g}", method, out, threads, record)


def markdown(results: list[dict]) -> str:
    """One table per dataset: validation and test figures of every setting."""
    return tables(results, {"norm": "guidance", "weight": "λ"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lambda_sweep")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dims", default="2,3")
    args = parser.parse_args()
    jobs = [
        (dims, norm, weight, args.out, max(1, 2 // args.jobs))
        for dims in (int(d) for d in args.dims.split(","))
        for norm, weight in SETTINGS[dims]
    ]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(run_one, *zip(*jobs, strict=True)))
    Path(args.out, "sweep.json").write_text(json.dumps(results, indent=1))
    Path(args.out, "sweep.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
