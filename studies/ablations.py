"""Switches meant to protect Dice, each against the default EDUE, on the embedded 2D and
3D data with the demo's configuration and budget (seed 0, one run per setting).

    python studies/ablations.py --out runs/ablations --jobs 2

Like the λ sweep, the figures are reported on the validation split (and the test split
for the record); single runs: differences below ~0.01 Dice or ~0.03 Spearman are noise.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from _demo_runs import markdown as tables
from _demo_runs import train_and_evaluate

#: run name -> method.* values that differ from the default EDUE
SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "guidance_kept_out_of_final_head": {"guidance_detach_final": True},
    "heads_on_encoder_and_decoder": {"heads": "encoder+decoder"},
}


def run_one(dims: int, name: str, out: str, threads: int) -> dict:
    record = {"setting": name}
    return train_and_evaluate(dims, f"{dims}d_{name}", SETTINGS[name], out, threads, record)


def markdown(results: list[dict]) -> str:
    """One table per dataset."""
    return tables(results, {"setting": "setting"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dims", default="2,3")
    args = parser.parse_args()
    jobs = [
        (dims, name, args.out, max(1, 2 // args.jobs))
        for dims in (int(d) for d in args.dims.split(","))
        for name in SETTINGS
    ]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(run_one, *zip(*jobs, strict=True)))
    Path(args.out, "ablations.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
