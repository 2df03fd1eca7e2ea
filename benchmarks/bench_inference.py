"""Inference latency per image of every registered method, side by side.

Each method is built from one model configuration, put in eval mode and timed through
``Method.predict_members`` under ``torch.no_grad`` (what ``Predictor`` calls), the
methods interleaved round by round. Where EDUE's extra time goes is timed inside the
same library calls, split by forward hooks: the subject's backbone, then its heads
(``MultiHeadNet.forward`` and the read-out), against the one-pass reference's output
layer. Peak memory: each method in a fresh process, the growth of its RSS high-water
mark (``VmHWM``) over building it and two predictions (on CUDA: allocated memory).

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--size 128] [--batches 1 8]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import _common as C
import torch

from edue.methods import get_method, method_names, prob_unet, ssn

LATENCY_TARGET, ENSEMBLE_TARGET, SAMPLER_TARGET = 1.1, 4.5, 8.0
#: every sample of a sampling method (SSN, the Probabilistic U-Net) against one U-Net pass
SSN_TARGET, PROB_UNET_TARGET = 1.3, 2.0


def warm_pass(name: str, method: Any, x: torch.Tensor) -> Callable[[], object]:
    """One pass of each distinct network of a method (warm-up of the timed call)."""
    spec = get_method(name)
    if spec.one_pass:
        return lambda: method.predict_members(x)
    network = method.network[0] if spec.trains_members_separately else method.network
    return lambda: network(x)


def split_call(
    method: Any, module: torch.nn.Module, pre: bool, x: torch.Tensor, device: torch.device
) -> tuple[Callable[[], object], list[float], list[float], Any]:
    """``method.predict_members(x)``, the seconds of each call before and after a forward
    hook (``pre``: a pre-hook) of ``module`` fires, and the hook's handle."""
    split: list[float] = []
    before: list[float] = []
    after: list[float] = []

    def stamp(*_: object) -> None:
        split.append(C.clock(device))

    hook = module.register_forward_pre_hook if pre else module.register_forward_hook
    handle = hook(stamp)

    def call() -> object:
        split.clear()
        start = C.clock(device)
        out = method.predict_members(x)
        end = C.clock(device)
        before.append(split[0] - start)
        after.append(end - split[0])
        return out

    return call, before, after, handle


def head_overhead(
    edue: Any, plain: Any, x: torch.Tensor, rounds: int, device: torch.device
) -> dict[str, float] | None:
    """Milliseconds of the subject's backbone and heads and of the reference's output
    layer, inside their own prediction calls; the heads' extra share of a plain pass."""
    out_layer = getattr(plain.network, "out", None)
    if not isinstance(out_layer, torch.nn.Module) or not hasattr(edue.network, "backbone"):
        return None
    edue_call, backbone, heads, hook = split_call(edue, edue.network.backbone, False, x, device)
    plain_call, _, plain_head, plain_hook = split_call(plain, out_layer, True, x, device)
    with torch.no_grad():
        times = C.interleaved({"edue": edue_call, "plain": plain_call}, rounds, device=device)
    hook.remove()
    plain_hook.remove()
    ms = {
        "edue_heads": 1000 * C.median(heads[-rounds:]),
        "plain_head": 1000 * C.median(plain_head[-rounds:]),
        "edue_backbone": 1000 * C.median(backbone[-rounds:]),
        "plain_network": 1000 * C.median(times["plain"]),
    }
    ms["overhead"] = (ms["edue_heads"] - ms["plain_head"]) / ms["plain_network"]
    return ms


# --------------------------------------------------------------------------- memory
def child_memory(name: str, size: int, batch: int, channels: list[int], threads: int) -> dict:
    """In a fresh process: RSS growth of building ``name`` and predicting twice."""
    C.setup_threads(threads)
    import edue.methods  # noqa: F401  (imported before the baseline)

    with C.watch_rss() as rss:
        method = C.build_2d(name, channels).eval()
        x = torch.randn(batch, C.IMAGE_CHANNELS, size, size)
        with torch.no_grad():
            for _ in range(2):
                out = method.predict_members(x)
    return {
        "peak_delta_mb": rss.growth_mb(),
        "weights_mb": C.module_mb(method),
        "output_mb": C.tensor_mb(out),
        "import_slack_mb": (rss.base_peak - rss.base) / C.MB,
        "peak_reset": rss.reset,
    }


def cuda_memory(name: str, size: int, channels: Sequence[int], device: torch.device) -> dict:
    """Peak CUDA memory growth of building ``name`` and predicting once."""
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    method = C.build_2d(name, channels).to(device).eval()
    with torch.no_grad():
        out = method.predict_members(torch.randn(1, C.IMAGE_CHANNELS, size, size, device=device))
    peak = torch.cuda.max_memory_allocated(device)
    figures = {"peak_delta_mb": (peak - base) / C.MB, "weights_mb": C.module_mb(method)}
    del method, out
    torch.cuda.empty_cache()
    return figures


def measure_memory(
    methods: Sequence[str], size: int, channels: Sequence[int], threads: int, dev: torch.device
) -> dict[str, dict[str, Any]]:
    """Peak memory per method at batch 1 (a fresh process per method on the CPU)."""
    if dev.type == "cuda":
        return {name: cuda_memory(name, size, channels, dev) for name in methods}
    return {
        name: C.in_child(
            child_memory, name=name, size=size, batch=1, channels=list(channels), threads=threads
        )
        for name in methods
    }


# --------------------------------------------------------------------------- report
def latency_targets(
    per_batch: Mapping[int, Mapping[str, Mapping[str, float]]],
    passes: Mapping[str, int],
    members: Mapping[str, int],
) -> list[dict[str, Any]]:
    """The subject against the reference; the multi-pass methods against the subject; the
    sampling methods (all their samples) against the reference."""
    r = C.roles()
    subject, reference = r.subject, r.one_pass_reference
    out = []
    for batch, figures in per_batch.items():
        if subject.name not in figures:
            continue
        name = f"{subject.label} / {reference.label} latency (batch {batch})"
        out.append(C.target(name, figures[subject.name]["ratio_to_plain"], "<=", LATENCY_TARGET))
        for spec, letter, wanted in (
            (r.ensemble_reference, "M", ENSEMBLE_TARGET),
            (r.sampler, "N", SAMPLER_TARGET),
        ):
            if spec is not None and spec.name in figures:
                name = f"{spec.label} ({letter}={passes[spec.name]}) / {subject.label} latency"
                value = figures[spec.name]["ratio_to_edue"]
                out.append(C.target(f"{name} (batch {batch})", value, ">=", wanted))
        for spec, wanted in ((ssn.SPEC, SSN_TARGET), (prob_unet.SPEC, PROB_UNET_TARGET)):
            if spec.name in figures:
                name = f"{spec.label} ({members[spec.name]} samples) / {reference.label} latency"
                value = figures[spec.name]["ratio_to_plain"]
                out.append(C.target(f"{name} (batch {batch})", value, "<=", wanted))
    return out


def notes_of(
    overhead: Mapping[str, float] | None,
    params: Mapping[str, int],
    mem: Mapping[str, Mapping[str, Any]],
    timings: Mapping[int, Mapping[str, list[float]]],
) -> list[str]:
    """The figures the table does not show: the head split, parameters, weights, the
    fastest rounds' ratios, the spread."""
    reference, subject = C.reference_pair()
    notes = []
    if overhead:
        notes.append(
            f"Inside the calls (batch 1, medians): {C.label(subject)}'s backbone "
            f"{overhead['edue_backbone']:.1f} ms, then its heads and read-out "
            f"{overhead['edue_heads']:.2f} ms vs {C.label(reference)}'s output layer "
            f"{overhead['plain_head']:.2f} ms of a {overhead['plain_network']:.1f} ms pass: "
            f"{100 * overhead['overhead']:+.1f} % of a {C.label(reference)} pass."
        )
    if subject in params:
        extra = params[subject] - params[reference]
        notes.append(
            f"Parameters: {C.label(subject)} {extra:+,} over {C.label(reference)} "
            f"({100 * extra / params[reference]:+.3f} %)."
        )
    if mem:
        weights = ", ".join(f"{C.label(n)} {v['weights_mb']:.1f}" for n, v in mem.items())
        notes.append(f"Weights, MB: {weights}.")
        if not all(v.get("peak_reset", True) for v in mem.values()):
            slack = max(v["import_slack_mb"] for v in mem.values())
            notes.append(f"VmHWM reset failed: peaks may include {slack:.1f} MB of imports.")
    r = C.roles()
    pairs = [(r.subject, r.one_pass_reference), (r.ensemble_reference, r.subject)]
    pairs.append((r.sampler, r.subject))
    for batch, times in timings.items():
        best = {n: min(t) for n, t in times.items()}
        shown = [
            f"{a.label}/{b.label} {best[a.name] / best[b.name]:.2f}×"
            for a, b in pairs
            if a and b and a.name in best and b.name in best
        ]
        if shown and len(times[reference]) > 1:
            notes.append(f"Fastest rounds' ratios, batch {batch}: {', '.join(shown)}.")
    notes += [C.spread_note(t) for t in timings.values()]
    return notes


def ssn_pass_and_samples(
    models: Mapping[str, Any],
    reference: str,
    size: int,
    rounds: int,
    dev: torch.device,
    gen: torch.Generator,
) -> dict[str, float] | None:
    """SSN's single pass (the distribution's parameters) and its pass plus its samples,
    timed side by side with the reference's pass at batch 1: medians in ms and ratios."""
    if ssn.SPEC.name not in models:
        return None
    model, ref = models[ssn.SPEC.name], models[reference]
    x = torch.randn(1, C.IMAGE_CHANNELS, size, size, generator=gen).to(dev)
    fns = {
        "reference": lambda: ref.predict_members(x),
        "pass": lambda: model(x),
        "pass_and_samples": lambda: model.predict_members(x),
    }
    with torch.no_grad():
        times = C.interleaved(fns, rounds, None, dev, f"SSN pass and samples {size}²")
    out = {f"{k}_ms": 1000 * C.median(t) for k, t in times.items()}
    out["pass_ratio"] = C.paired_ratio(times["pass"], times["reference"])
    out["pass_and_samples_ratio"] = C.paired_ratio(times["pass_and_samples"], times["reference"])
    out["samples"] = float(model.n_members)
    return out


def ssn_note(split: Mapping[str, float] | None, reference: str) -> list[str]:
    """One line: SSN's single pass and its pass plus samples against the reference."""
    if not split:
        return []
    return [
        f"SSN at batch 1, timed side by side: the single pass (the distribution) "
        f"{split['pass_ms']:.1f} ms = {split['pass_ratio']:.2f}× a {C.label(reference)} pass "
        f"({split['reference_ms']:.1f} ms); the pass plus {int(split['samples'])} samples "
        f"{split['pass_and_samples_ms']:.1f} ms = {split['pass_and_samples_ratio']:.2f}×."
    ]


def settings_text(
    size: int, channels: Sequence[int], dev: torch.device, models: Mapping[str, Any], rounds: Any
) -> str:
    """What was measured: sizes, model, the multi-pass methods' passes, rounds."""
    r = C.roles()
    multi = []
    dropout = torch.nn.modules.dropout._DropoutNd
    for spec, letter in ((r.sampler, "N"), (r.ensemble_reference, "M")):
        if spec is not None and spec.name in models:
            ps = [m.p for m in models[spec.name].modules() if isinstance(m, dropout)]
            p = f", p={ps[0]}" if ps and not spec.trains_members_separately else ""
            multi.append(f"{spec.label} {letter}={C.passes(spec.name, channels)}{p}")
    for name, m in models.items():
        if getattr(m, "skip_first", None) is not None:
            heads = len(m.network.heads)
            multi.append(f"{C.label(name)} {heads} heads (skip_first {m.skip_first})")
    return (
        f"{size}×{size}, {C.IMAGE_CHANNELS} channels, {C.STRUCTURES} structures; "
        f"`model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`; eval, "
        f"`no_grad`, `Method.predict_members`; {', '.join(multi) or 'one-pass methods'}; "
        f"{dev.type}, {torch.get_num_threads()} torch threads; interleaved rounds: "
        + ", ".join(f"batch {b}: {n}" for b, n in rounds.items())
        + "."
    )


# --------------------------------------------------------------------------- run
def run(
    quick: bool = False,
    size: int = 256,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    methods: Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
    memory: bool = True,
) -> dict[str, Any]:
    """Latency, ratios, parameters and peak memory of each method (the reference
    always, first)."""
    from edue.metrics import count_parameters

    bench = C.start(threads)
    dev = torch.device(device)
    reference, subject = C.reference_pair()
    names = C.reference_first(methods or method_names())
    models = {n: C.build_2d(n, channels).to(dev).eval() for n in names}
    params = {n: count_parameters(m) for n, m in models.items()}
    members = {n: int(m.n_members) for n, m in models.items()}
    passes = {n: C.passes(n, channels) for n in names}
    batches = list(batches or ((1,) if quick else (1, 8)))
    gen = torch.Generator().manual_seed(0)
    timings, rounds_used = {}, {}
    for batch in batches:
        x = torch.randn(batch, C.IMAGE_CHANNELS, size, size, generator=gen).to(dev)
        fns = {n: (lambda m=m, x=x: m.predict_members(x)) for n, m in models.items()}
        warm = None if batch == 1 else {n: warm_pass(n, m, x) for n, m in models.items()}
        rounds_used[batch] = rounds or ((2 if quick else 11) if batch == 1 else (1 if quick else 3))
        with torch.no_grad():
            timings[batch] = C.interleaved(
                fns, rounds_used[batch], warm, dev, f"inference {size}² batch {batch}"
            )
    ssn_split = ssn_pass_and_samples(models, reference, size, 5 if quick else 11, dev, gen)
    overhead = None
    if subject in models:
        x = torch.randn(1, C.IMAGE_CHANNELS, size, size, generator=gen).to(dev)
        overhead = head_overhead(models[subject], models[reference], x, 5 if quick else 21, dev)
    mem = measure_memory(names, size, channels, threads, dev) if memory else {}
    per_batch = {
        batch: {
            n: {
                "ms_per_image": 1000 * C.median(t) / batch,
                "spread": C.spread(t),
                "ratio_to_plain": C.paired_ratio(t, times[reference]),
                "ratio_to_edue": C.paired_ratio(t, times[subject]) if subject in times else None,
            }
            for n, t in times.items()
        }
        for batch, times in timings.items()
    }
    headers = ["method", "members S", "passes", "parameters"]
    for b in batches:
        headers += [f"ms/image (batch {b})", f"× {C.label(reference)} (batch {b})"]
    rows = []
    for n in names:
        row = [C.label(n), members[n], passes[n], params[n]]
        for b in batches:
            row += [per_batch[b][n]["ms_per_image"], C.ratio(per_batch[b][n]["ratio_to_plain"])]
        rows.append(row + ([mem[n]["peak_delta_mb"]] if mem else []))
    headers += ["peak memory MB (batch 1)"] if mem else []
    return bench.result(
        "inference",
        f"Inference latency ({size}², {dev.type}, {torch.get_num_threads()} threads)",
        settings_text(size, channels, dev, models, rounds_used),
        [C.table(f"Latency per image at {size}×{size}", headers, rows)],
        latency_targets(per_batch, passes, members),
        notes_of(overhead, params, mem, timings) + ssn_note(ssn_split, reference),
        size=size,
        channels=list(channels),
        device=dev.type,
        params=params,
        members=members,
        passes=passes,
        per_batch={str(b): v for b, v in per_batch.items()},
        raw_seconds={str(b): v for b, v in timings.items()},
        memory=mem,
        edue_overhead_ms=overhead,
        ssn_pass_and_samples=ssn_split,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels", "methods", "device", "rounds")
    p.add_argument("--size", type=int, default=256, help="image size")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip memory")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
