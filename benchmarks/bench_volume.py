"""Sliding-window prediction of a two-channel volume: EDUE against the Deep Ensemble.

Both methods (the registry's subject and ensemble reference) are built from one 3D
configuration and predict through ``Predictor.members``, the call ``edue predict`` and
``edue evaluate`` make on a volume: MONAI sliding windows of the member stack, Gaussian
blending. Seconds: both interleaved round by round on the same volume. Peak memory:
each in a fresh process, the whole process's RSS high-water mark (``VmHWM``) after one
prediction; a whole-volume pass of EDUE without windows is measured the same way.

    .venv/bin/python benchmarks/bench_volume.py [--quick] [--size 128] [--roi 64]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import _common as C
import torch

from edue.methods import get_method

IN_CHANNELS, STRUCTURES = 2, ("GTVp", "GTVn")
DEFAULT_CHANNELS_3D = (16, 32, 64, 128)
OVERLAP, SW_BATCH, MEMBERS = 0.25, 4, 5
RATIO_TARGET, MEMORY_TARGET_MB = 4.0, 2048.0


def predictor(name: str, channels: Sequence[int], roi: int) -> Any:
    """A 3D ``Predictor`` of ``name`` (random weights); windows of ``roi``³ (0: none)."""
    extra = [f"method.ensemble_size={MEMBERS}", f"infer.overlap={OVERLAP}", "infer.blend=gaussian"]
    extra += [f"infer.sw_batch_size={SW_BATCH}"] + (
        [f"infer.roi_size=[{roi},{roi},{roi}]"] * bool(roi)
    )
    return C.predictor(C.method_config(name, channels, extra), IN_CHANNELS, STRUCTURES, 3)


def volume(size: int) -> torch.Tensor:
    """A random two-channel volume ``[1, 2, size, size, size]``."""
    return torch.randn(1, IN_CHANNELS, size, size, size, generator=torch.Generator().manual_seed(0))


def child_memory(name: str, size: int, roi: int, channels: list[int], threads: int) -> dict:
    """In a fresh process: the whole process's peak RSS of one prediction of the volume."""
    C.setup_threads(threads)
    import monai.inferers  # noqa: F401  (imported before the measurement)

    import edue.engine.inference.predictor  # noqa: F401

    with C.watch_rss() as rss:
        pred, x = predictor(name, channels, roi), volume(size)
        with torch.no_grad():
            out, seconds = C.timed_once(lambda: pred.members(x))
    return {
        "peak_rss_mb": rss.peak / C.MB,
        "base_rss_mb": rss.base / C.MB,
        "peak_delta_mb": rss.growth_mb(),
        "output_mb": C.tensor_mb(out),
        "members_shape": list(out.shape),
        "seconds": seconds,
    }


def run(
    quick: bool = False,
    size: int = 128,
    roi: int = 64,
    channels: Sequence[int] = DEFAULT_CHANNELS_3D,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    whole: bool = True,
) -> dict[str, Any]:
    """Seconds, ratio and peak memory of sliding-window prediction."""
    from edue.metrics import count_parameters

    if quick:
        size, roi, channels = min(size, 48), min(roi, 32), tuple(channels)[:3]
    bench = C.start(threads)
    r = C.roles()
    subject, ensemble = r.subject.name, r.ensemble().name
    preds = {name: predictor(name, channels, roi) for name in (subject, ensemble)}
    x, seen = volume(size), []
    hook = preds[subject].method.network.register_forward_pre_hook(
        lambda _m, args: seen.append(int(args[0].shape[0]))
    )
    fns = {name: (lambda p=p: p.members(x)) for name, p in preds.items()}
    with torch.no_grad():
        shapes = {name: list(fn().shape) for name, fn in fns.items()}  # also the warm-up
        hook.remove()
        none = {n: (lambda: None) for n in fns}
        times = C.interleaved(fns, rounds or (1 if quick else 3), none, progress=f"volume {size}³")
    windows = sum(seen)
    mem = {}
    for name, window in [(subject, roi), (ensemble, roi)] + [(subject, 0)] * whole:
        key = name if window else f"{name}_whole"
        mem[key] = C.in_child(
            child_memory, name=name, size=size, roi=window, channels=list(channels), threads=threads
        )
    params = {name: count_parameters(p.method) for name, p in preds.items()}
    rows = []
    for name, pred in preds.items():
        m = mem[name]
        passes = windows * get_method(name).passes(pred.config)
        ratio = C.ratio(C.paired_ratio(times[name], times[subject]))
        rows.append([C.label(name), shapes[name][0], params[name], passes, C.median(times[name])])
        rows[-1] += [ratio, m["peak_rss_mb"], m["peak_delta_mb"], m["output_mb"]]
    if whole:
        w = mem[f"{subject}_whole"]
        rows.append([f"{C.label(subject)}, whole volume in one pass", w["members_shape"][0]])
        rows[-1] += [params[subject], 1, w["seconds"], "", w["peak_rss_mb"], w["peak_delta_mb"]]
        rows[-1].append(w["output_mb"])
    passes = get_method(ensemble).passes(preds[ensemble].config)
    sub, ens = C.label(subject), C.label(ensemble)
    targets = [
        C.target(
            f"{ens} (M={passes}) / {sub} seconds",
            C.paired_ratio(times[ensemble], times[subject]),
            ">=",
            RATIO_TARGET,
        ),
        C.target(
            f"{sub} peak resident memory (whole process)",
            mem[subject]["peak_rss_mb"],
            "<=",
            MEMORY_TARGET_MB,
            unit="MB",
        ),
    ]
    shape = shapes[subject]
    notes = [
        f"{windows} windows of {roi}³ per volume (overlap {OVERLAP}, {SW_BATCH} per pass); "
        f"output: the blended member stack {shape} in float32.",
        "Before the model is built, the process holds "
        f"{min(v['base_rss_mb'] for v in mem.values()):.0f} MB.",
        f"{ens}'s peak is {mem[ensemble]['peak_rss_mb'] / mem[subject]['peak_rss_mb']:.2f}× "
        f"{sub}'s.",
        C.spread_note(times),
    ]
    if whole:
        notes.insert(
            3,
            f"Without windows, the whole {size}³ volume peaks at "
            f"{mem[f'{subject}_whole']['peak_rss_mb']:.0f} MB.",
        )
    headers = ["method", "members S", "parameters", "network passes", "seconds / volume"]
    headers += [f"× {sub}", "peak RSS MB (whole process)", "peak growth MB", "member stack MB"]
    return bench.result(
        "volume",
        f"3D sliding-window prediction ({size}³, cpu, {torch.get_num_threads()} threads)",
        f"{size}³ volume, {IN_CHANNELS} channels, {len(STRUCTURES)} structures; 3D "
        f"`model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`; `Predictor.members`"
        f" (MONAI sliding windows); cpu; warm-up then {len(times[subject])} interleaved rounds.",
        [C.table(f"Sliding-window prediction of a {size}³ volume", headers, rows)],
        targets,
        notes,
        size=size,
        roi=roi,
        params=params,
        raw_seconds=times,
        memory=mem,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels", "rounds")
    p.add_argument("--size", type=int, default=128, help="volume side")
    p.add_argument("--roi", type=int, default=64, help="window side")
    p.add_argument("--no-whole", dest="whole", action="store_false", help="no whole-volume pass")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
