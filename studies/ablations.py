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

#: run name -> method.* values that differ from the default EDUE
SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "guidance_kept_out_of_final_head": {"guidance_detach_final": True},
    "heads_on_encoder_and_decoder": {"heads": "encoder+decoder"},
}


def run_one(dims: int, name: str, out: str, threads: int) -> dict:
    import torch

    from edue.demo import demo_config
    from edue.engine.data import build_datasets, open_configured_source, split_indices
    from edue.engine.evaluate import evaluate_predictor
    from edue.engine.infer import Predictor
    from edue.engine.train import train_or_resume

    torch.set_num_threads(threads)
    config = demo_config(Path(out), "edue", quick=False, dims=dims)
    for key, value in SETTINGS[name].items():
        setattr(config.method, key, value)
    config.out_dir = str(Path(out) / f"{dims}d_{name}")
    run = train_or_resume(config)
    source = open_configured_source(config)
    subsets = build_datasets(config, source, split_indices(config, source))
    predictor = Predictor.from_checkpoint(run)
    result: dict = {"dims": dims, "setting": name}
    for split in ("val", "test"):
        cases = [subsets[split].load(i) for i in range(len(subsets[split]))]
        m = evaluate_predictor(predictor, cases, run / f"eval_{split}", ood=False)["metrics"]
        for s in source.structures:
            for key in ("soft_dice/{s}/mean", "image_spearman/{s}", "pixel_ncc/{s}/mean"):
                result[f"{split}/{key.format(s=s)}"] = m.get(key.format(s=s))
    return result


def markdown(results: list[dict]) -> str:
    """One table per dataset."""
    lines = []
    for dims in sorted({r["dims"] for r in results}):
        rows = [r for r in results if r["dims"] == dims]
        structures = [k.split("/")[2] for k in rows[0] if k.startswith("val/soft_dice/")]
        head = " | ".join(
            f"{split} Dice / Spearman / NCC {s}" for split in ("val", "test") for s in structures
        )
        lines += [f"### {dims}D", "", f"| setting | {head} |", "|---|" + "---|" * 4]
        for r in rows:
            cells = [
                f"{r[f'{split}/soft_dice/{s}/mean']:.3f} / {r[f'{split}/image_spearman/{s}']:.2f}"
                f" / {r[f'{split}/pixel_ncc/{s}/mean']:.2f}"
                for split in ("val", "test")
                for s in structures
            ]
            lines.append(f"| {r['setting']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


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
