"""What the study scripts share: train EDUE with the demo's configuration and budget plus
a few changed ``method.*`` values, evaluate it on the validation and test splits, and
tabulate the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edue import result_keys as rk

KEYS = (
    rk.template(rk.SOFT_DICE, rk.MEAN),
    rk.template(rk.IMAGE_SPEARMAN),
    rk.template(rk.PIXEL_NCC, rk.MEAN),
    rk.template(rk.NLL, rk.MEAN),
    rk.template(rk.IMAGE_PARTIAL_SPEARMAN),
)


def train_and_evaluate(
    dims: int, name: str, method: dict[str, Any], out: str, threads: int, record: dict
) -> dict:
    """Train (or reuse) ``out/name`` and return ``record`` with the val/test figures; the
    result is kept as ``out/name/result.json`` and read back by a later call."""
    import torch

    from edue.data.pipeline import prepare_data
    from edue.demo import demo_config
    from edue.engine.evaluation.evaluate import evaluate_predictor
    from edue.engine.inference.predictor import Predictor
    from edue.engine.training.trainer import train_or_resume

    saved = Path(out) / name / "result.json"
    if saved.is_file():
        return json.loads(saved.read_text())  # type: ignore[no-any-return]
    torch.set_num_threads(threads)
    config = demo_config(Path(out), "edue", quick=False, dims=dims)
    for key, value in method.items():
        setattr(config.method, key, value)
    config.out_dir = str(Path(out) / name)
    run = train_or_resume(config)
    subsets = prepare_data(config.data).subsets
    predictor = Predictor.from_checkpoint(run)
    result = {"dims": dims, **record}
    for split in ("val", "test"):
        cases = [subsets[split].load(i) for i in range(len(subsets[split]))]
        m = evaluate_predictor(predictor, cases, run / f"eval_{split}", ood=False)["metrics"]
        for s in subsets["test"].structures:
            for key in KEYS:
                result[f"{split}/{key.format(s=s)}"] = m.get(key.format(s=s))
    saved.write_text(json.dumps(result, indent=1))
    return result


def markdown(results: list[dict], labels: dict[str, str]) -> str:
    """One table per dataset: the ``labels`` columns (result key -> header), then Dice /
    Spearman / NCC per split and structure."""
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
            f"| {' | '.join(labels.values())} | {head} |",
            "|---" * len(labels) + "|" + "---|" * (2 * len(structures)),
        ]
        for r in rows:
            cells = [
                f"{r[f'{split}/soft_dice/{s}/mean']:.3f} / {r[f'{split}/image_spearman/{s}']:.2f}"
                f" / {r[f'{split}/pixel_ncc/{s}/mean']:.2f}"
                for split in ("val", "test")
                for s in structures
            ]
            named = [f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in labels]
            lines.append("| " + " | ".join(named + cells) + " |")
        lines.append("")
    return "\n".join(lines)
