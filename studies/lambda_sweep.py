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

SETTINGS = {
    2: [("none", 5.0), ("none", 2.0), ("expert_rms", 0.1), ("expert_rms", 0.25),
        ("expert_rms", 0.5), ("expert_rms", 1.0), ("mse", 50.0), ("mse", 100.0)],
    3: [("none", 5.0), ("none", 2.0), ("expert_rms", 0.1), ("expert_rms", 0.25),
        ("expert_rms", 0.5), ("expert_rms", 1.0), ("mse", 50.0), ("mse", 100.0)],
}  # fmt: skip


def run_one(dims: int, norm: str, weight: float, out: str, threads: int) -> dict:
    import torch

    from edue.demo import demo_config
    from edue.engine.data import build_datasets, open_configured_source, split_indices
    from edue.engine.evaluate import evaluate_predictor
    from edue.engine.infer import Predictor
    from edue.engine.train import train_or_resume

    torch.set_num_threads(threads)
    name = f"{dims}d_{norm}_{weight:g}"
    config = demo_config(Path(out), "edue", quick=False, dims=dims)
    config.method.guidance_norm = norm
    config.method.guidance_weight = weight
    config.out_dir = str(Path(out) / name)
    if (Path(out) / name / "sweep.json").is_file():  # done by an earlier sweep
        return json.loads((Path(out) / name / "sweep.json").read_text())  # type: ignore[no-any-return]
    run = train_or_resume(config)
    source = open_configured_source(config)
    subsets = build_datasets(config, source, split_indices(config, source))
    predictor = Predictor.from_checkpoint(run)
    result = {"dims": dims, "norm": norm, "weight": weight}
    for split in ("val", "test"):
        cases = [subsets[split].load(i) for i in range(len(subsets[split]))]
        m = evaluate_predictor(predictor, cases, run / f"eval_{split}", ood=False)["metrics"]
        for s in source.structures:
            for key in (
                "soft_dice/{s}/mean",
                "image_spearman/{s}",
                "pixel_ncc/{s}/mean",
                "nll/{s}/mean",
                "image_partial_spearman/{s}",
            ):
                result[f"{split}/{key.format(s=s)}"] = m.get(key.format(s=s))
    (run / "sweep.json").write_text(json.dumps(result, indent=1))
    return result


def markdown(results: list[dict]) -> str:
    """One table per dataset: validation and test figures of every setting."""
    lines = []
    for dims in sorted({r["dims"] for r in results}):
        rows = [r for r in results if r["dims"] == dims]
        structures = [k.split("/")[2] for k in rows[0] if k.startswith("val/soft_dice/")]
        head = " | ".join(
            f"{split} Dice / Spearman / NCC {s}" for split in ("val", "test") for s in structures
        )
        lines += [
            f"### {dims}D",
            "",
            f"| guidance | λ | {head} |",
            "|---|---|" + "---|" * (2 * len(structures)),
        ]
        for r in rows:
            cells = [
                f"{r[f'{split}/soft_dice/{s}/mean']:.3f} / {r[f'{split}/image_spearman/{s}']:.2f}"
                f" / {r[f'{split}/pixel_ncc/{s}/mean']:.2f}"
                for split in ("val", "test")
                for s in structures
            ]
            lines.append(f"| {r['norm']} | {r['weight']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


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
