"""Inference latency per image of EDUE and its baselines, side by side.

The methods are the registered ones (``edue.methods.method_names()``, or ``--methods``);
the ratios are taken to the one-pass reference (the plain U-Net) and to the subject
(EDUE), as the registry's roles name them. Every method is built by
``edue.methods.build_method`` from one model configuration (default
``model.channels=[16,32,64,128,256]``, ``model.norm=batch``), put in eval mode, and
timed on the same random input through ``Method.predict_members`` under
``torch.no_grad`` — the call the project's ``Predictor`` makes: one pass for the plain
U-Net, EDUE and Layer Ensembles, ``N = 10`` passes for MC dropout and ``M = 5`` member
passes for Deep Ensembles. Methods are interleaved round by round; ratios are medians
of per-round ratios.

Peak memory: each method runs in a fresh subprocess (imports done first); the figure
is the process's RSS high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
just before building the model) after building it and two forward passes, minus its
RSS just before building it — weights, activations, output
and allocator caching included. On a CUDA device it is ``torch.cuda.max_memory_allocated``
growth instead.

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--size 128] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from edue.methods import get_method, method_label, method_names  # noqa: E402

IN_CHANNELS, STRUCTURES = C.IMAGE_CHANNELS, C.STRUCTURES


def one_pass_of_each_network(name: str, method: Any, x: torch.Tensor) -> Callable[[], object]:
    """A light warm-up: one pass of each distinct network (the conv kernels of the timed call).

    A one-pass method predicts once; a method sampling one network several times makes
    one pass of it; an ensemble of separately trained members one pass of a member.
    """
    spec = get_method(name)
    if spec.one_pass:
        return lambda: method.predict_members(x)
    if spec.trains_members_separately:
        return lambda: method.network[0](x)
    return lambda: method.network(x)


def head_overhead(
    edue: Any, plain: Any, x: torch.Tensor, rounds: int, device: torch.device
) -> dict[str, float]:
    """Where EDUE's extra time goes, timed apart from the (noisier) whole pass.

    On the features of one backbone pass: EDUE's heads (its four 1×1 convolutions,
    upsampling to full size, stacking, sigmoid — the steps of ``MultiHeadNet.forward``
    after the backbone, repeated here) against the plain U-Net's output convolution and
    sigmoid; plus the backbone passes themselves (EDUE's hooked one and the plain net).
    """
    import torch.nn.functional as F

    net = edue.network
    size = x.shape[2:]
    with torch.no_grad():
        net.backbone(x)
        feats = [net._features[name] for name in net.block_names]
        net._features.clear()

    def edue_heads() -> torch.Tensor:
        outs = []
        for feat, head in zip(feats, net.heads, strict=True):
            logits = head(feat)
            if logits.shape[2:] != size:
                logits = F.interpolate(logits, size=size, mode=net.mode, align_corners=False)
            outs.append(logits)
        return torch.sigmoid(torch.stack(outs).float())

    def plain_head() -> torch.Tensor:
        return torch.sigmoid(plain.network.out(feats[-1]).unsqueeze(0).float())

    def edue_backbone() -> None:
        net.backbone(x)
        net._features.clear()

    fns = {
        "edue_heads": edue_heads,
        "plain_head": plain_head,
        "edue_backbone": edue_backbone,
        "plain_network": lambda: plain.network(x),
    }
    with torch.no_grad():
        times = C.interleaved(fns, rounds, device=device)
    ms = {k: 1000 * C.median(v) for k, v in times.items()}
    ms["overhead"] = (ms["edue_heads"] - ms["plain_head"]) / ms["plain_network"]
    return ms


# --------------------------------------------------------------------------- memory
def child_memory(
    name: str, size: int, batch: int, channels: Sequence[int], threads: int
) -> dict[str, Any]:
    """Run in a fresh process: RSS growth of building ``name`` and predicting once."""
    C.setup_threads(threads)
    import edue.methods  # noqa: F401  (imports before the baseline)
    import edue.nets.heads  # noqa: F401

    with C.watch_rss() as rss:
        method = C.build_2d(name, channels).eval()
        x = torch.randn(batch, IN_CHANNELS, size, size, generator=torch.Generator().manual_seed(0))
        built_rss = C.current_rss_bytes()
        with torch.no_grad():
            for _ in range(2):
                out = method.predict_members(x)
    return {
        "method": name,
        "peak_delta_mb": rss.growth_mb(),
        "after_build_delta_mb": rss.growth_mb(built_rss),
        "weights_mb": C.module_mb(method),
        "output_mb": C.tensor_mb(out),
        "import_slack_mb": (rss.base_peak - rss.base) / C.MB,
        "peak_reset": rss.reset,
    }


def cuda_memory(
    name: str, size: int, batch: int, channels: Sequence[int], device: torch.device
) -> dict[str, Any]:
    """Peak CUDA memory growth of building ``name`` and predicting once (in-process)."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    method = C.build_2d(name, channels).to(device).eval()
    x = torch.randn(batch, IN_CHANNELS, size, size, device=device)
    with torch.no_grad():
        out = method.predict_members(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    result = {"method": name, "peak_delta_mb": (peak - base) / C.MB, "output_mb": C.tensor_mb(out)}
    del method, x, out
    torch.cuda.empty_cache()
    return result


def measure_memory(
    methods: Sequence[str],
    size: int,
    batch: int,
    channels: Sequence[int],
    threads: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Peak memory per method (fresh subprocess per method on the CPU)."""
    out = {}
    for name in methods:
        if device.type == "cuda":
            out[name] = cuda_memory(name, size, batch, channels, device)
            continue
        options = {
            "child_memory": name,
            "size": size,
            "memory_batch": batch,
            "channels": list(channels),
            "threads": threads,
        }
        out[name] = C.run_child(Path(__file__), options)
    return out


# --------------------------------------------------------------------------- latency
@dataclass
class Models:
    """The methods measured, built once on the device, and what the table says of them."""

    methods: list[str]
    models: dict[str, Any]
    params: dict[str, int]
    members: dict[str, int]
    passes: dict[str, int]


def build_models(methods: Sequence[str], channels: Sequence[int], device: torch.device) -> Models:
    """Every method in eval mode on ``device``, with parameters, members and passes."""
    from edue.metrics import count_parameters

    models = {name: C.build_2d(name, channels).to(device).eval() for name in methods}
    return Models(
        list(methods),
        models,
        {name: count_parameters(m) for name, m in models.items()},
        {name: int(m.n_members) for name, m in models.items()},
        {name: C.passes(name, channels) for name in models},
    )


def time_latency(
    measured: Models,
    batches: Sequence[int],
    size: int,
    rounds: int | None,
    quick: bool,
    device: torch.device,
    gen: torch.Generator,
) -> tuple[dict[int, dict[str, list[float]]], dict[int, int]]:
    """Seconds of ``predict_members`` per round, methods interleaved, for each batch size.

    Returns the timings (batch -> method -> seconds per round) and the rounds per batch.
    """
    timings: dict[int, dict[str, list[float]]] = {}
    rounds_used: dict[int, int] = {}
    models = measured.models
    for batch in batches:
        x = torch.randn(batch, IN_CHANNELS, size, size, generator=gen).to(device)
        fns = {n: (lambda m=m, x=x: m.predict_members(x)) for n, m in models.items()}
        warm = (
            fns if batch == 1 else {n: one_pass_of_each_network(n, m, x) for n, m in models.items()}
        )
        r = rounds or ((2 if quick else 11) if batch == 1 else (1 if quick else 3))
        rounds_used[batch] = r
        with torch.no_grad():
            timings[batch] = C.interleaved(
                fns, r, warmup=warm, device=device, progress=f"inference {size}² batch {batch}"
            )
    return timings, rounds_used


def latency_figures(
    timings: Mapping[int, Mapping[str, list[float]]], reference: str, subject: str
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per batch and method: ms per image, spread, paired ratios to the plain U-Net and EDUE."""
    per_batch: dict[int, dict[str, dict[str, Any]]] = {}
    for batch, times in timings.items():
        per_batch[batch] = {
            name: {
                "ms_per_image": 1000 * C.median(t) / batch,
                "spread": C.spread(t),
                "ratio_to_plain": C.paired_ratio(t, times[reference]),
                "ratio_to_edue": C.paired_ratio(t, times[subject]) if subject in times else None,
            }
            for name, t in times.items()
        }
    return per_batch


def latency_table(
    size: int,
    batches: Sequence[int],
    measured: Models,
    per_batch: Mapping[int, Mapping[str, Mapping[str, float]]],
    mem: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The table: members, passes, parameters, ms/image and × plain per batch, memory."""
    headers = ["method", "members S", "passes", "parameters"]
    for batch in batches:
        headers += [f"ms/image (batch {batch})", f"× plain (batch {batch})"]
    if mem:
        headers.append("peak memory MB (batch 1)")
    rows = []
    for name in measured.methods:
        row: list[Any] = [
            method_label(name),
            measured.members[name],
            measured.passes[name],
            measured.params[name],
        ]
        for batch in batches:
            entry = per_batch[batch][name]
            row += [entry["ms_per_image"], f"{entry['ratio_to_plain']:.2f}×"]
        if mem:
            row.append(mem[name]["peak_delta_mb"])
        rows.append(row)
    return C.table(f"Latency per image at {size}×{size}", headers, rows)


def latency_targets(
    batches: Sequence[int],
    measured: Models,
    per_batch: Mapping[int, Mapping[str, Mapping[str, float]]],
) -> list[dict[str, Any]]:
    """EDUE ≤ 1.1× the plain U-Net; Deep Ensemble ≥ 4.5× and MC dropout ≥ 8× EDUE."""
    r = C.roles()
    subject, reference = r.subject, r.one_pass_reference
    if subject.name not in measured.methods:
        return []
    multi = [(r.ensemble_reference, "M", 4.5), (r.sampler, "N", 8.0)]
    targets = []
    for batch in batches:
        tag = f" (batch {batch})"
        figures = per_batch[batch]
        targets.append(
            C.target(
                f"{subject.label} / {C.reference_wording(reference)} latency" + tag,
                figures[subject.name]["ratio_to_plain"],
                "<=",
                1.1,
            )
        )
        for spec, letter, threshold in multi:
            if spec is None or spec.name not in measured.methods:
                continue
            passes = measured.passes[spec.name]
            targets.append(
                C.target(
                    f"{spec.label} ({letter}={passes}) / {subject.label} latency" + tag,
                    figures[spec.name]["ratio_to_edue"],
                    ">=",
                    threshold,
                )
            )
    return targets


# --------------------------------------------------------------------------- notes
def overhead_note(overhead: Mapping[str, float]) -> str:
    """Where EDUE's extra time goes (:func:`head_overhead`)."""
    return (
        f"Where EDUE's extra time goes (batch 1, timed apart, medians): its heads (4 1×1 "
        f"convolutions, upsampling, stack, sigmoid) {overhead['edue_heads']:.2f} ms vs the "
        f"plain output convolution + sigmoid {overhead['plain_head']:.2f} ms; backbone pass "
        f"{overhead['edue_backbone']:.1f} ms (EDUE, hooked) vs plain network "
        f"{overhead['plain_network']:.1f} ms — intrinsic EDUE overhead "
        f"{100 * overhead['overhead']:+.1f} % of a plain pass."
    )


def parameters_note(measured: Models, subject: str, reference: str) -> str:
    """EDUE's parameters against the plain U-Net's."""
    params = measured.params
    extra = params[subject] - params[reference]
    return (
        f"Parameters: {method_label(subject)} {params[subject]:,} vs "
        f"{C.reference_wording(get_method(reference))} {params[reference]:,} "
        f"({extra:+,}, {100 * extra / params[reference]:+.3f} %: {measured.members[subject]} "
        "1×1 heads replace the single output convolution)."
    )


def memory_note(mem: Mapping[str, Mapping[str, Any]], device: torch.device) -> str:
    """How peak memory was measured (and each method's weights on the CPU)."""
    if device.type != "cpu":
        return "Peak memory = torch.cuda.max_memory_allocated growth (weights included)."
    slack = max(v["import_slack_mb"] for v in mem.values())
    resets = all(v["peak_reset"] for v in mem.values())
    return (
        "Peak memory = RSS high-water mark (VmHWM, reset just before building the model) "
        "of a fresh subprocess after building the model and two batch-1 predictions, minus "
        "its RSS just before building it (weights, activations, outputs, allocator caches"
        + ("" if resets else f"; VmHWM reset failed, import peak ≤ {slack:.1f} MB above")
        + "). Weights alone: "
        + ", ".join(f"{method_label(n)} {v['weights_mb']:.1f} MB" for n, v in mem.items())
        + "."
    )


def noise_notes(timings: Mapping[int, Mapping[str, list[float]]], reference: str) -> list[str]:
    """Ratios of the fastest round of each method (EDUE/plain, ensembles/EDUE) per batch."""
    r = C.roles()
    pairs = [
        (C.name_of(a), C.name_of(b))
        for a, b in (
            (r.subject, r.one_pass_reference),
            (r.ensemble_reference, r.subject),
            (r.sampler, r.subject),
        )
    ]
    notes = []
    for batch, times in timings.items():
        best = {n: min(t) for n, t in times.items()}
        shown = [
            f"{method_label(a)}/{method_label(b)} {best[a] / best[b]:.2f}×"
            for a, b in pairs
            if a in best and b in best
        ]
        if shown and len(times[reference]) > 1:
            notes.append(
                f"Noise check, batch {batch}: ratios of the fastest round of each method "
                f"(least disturbed): {', '.join(shown)}."
            )
    return notes


def dropout_p(method: Any) -> float:
    """Dropout probability of a method's dropout layers (the first one's)."""
    dropout = torch.nn.modules.dropout._DropoutNd
    return next(float(m.p) for m in method.modules() if isinstance(m, dropout))


def settings_text(
    size: int,
    channels: Sequence[int],
    device: torch.device,
    measured: Models,
    rounds_used: Mapping[int, int],
) -> str:
    """What was measured, how: sizes, model, the multi-pass methods' passes, rounds."""
    r = C.roles()
    multi = []
    if r.sampler:
        name = r.sampler.name
        sampler = measured.models[name] if name in measured.models else C.build_2d(name, channels)
        multi.append(f"{r.sampler.label} N={C.passes(name, channels)} (p={dropout_p(sampler)})")
    if r.ensemble_reference:
        multi.append(
            f"{r.ensemble_reference.label} M={C.passes(r.ensemble_reference.name, channels)}"
        )
    heads = "".join(
        f", {method_label(name)} {len(m.network.heads)} heads (skip_first {m.skip_first})"
        for name, m in measured.models.items()
        if getattr(m, "skip_first", None) is not None
    )
    return (
        f"{size}×{size} images, {IN_CHANNELS} channels, {STRUCTURES} structures; "
        f"`model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`; eval mode, "
        f"`torch.no_grad`, `Method.predict_members`; {', '.join(multi)}{heads}; "
        f"device {device.type}, {torch.get_num_threads()} torch threads; "
        + ", ".join(
            f"batch {b}: warm-up then median of {n} interleaved rounds"
            for b, n in rounds_used.items()
        )
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
    """Latency, ratios, parameters and peak memory of each method; returns the figures.

    ``methods`` defaults to every registered method; the plain U-Net (the one-pass
    reference) is always measured, first.
    """
    bench = C.start(threads)
    dev = torch.device(device)
    reference, subject = C.reference_pair()
    measured = build_models(C.reference_first(methods or method_names()), channels, dev)
    batches = list(batches or ((1,) if quick else (1, 8)))
    gen = torch.Generator().manual_seed(0)
    timings, rounds_used = time_latency(measured, batches, size, rounds, quick, dev, gen)
    overhead = None
    if subject in measured.models:
        x = torch.randn(1, IN_CHANNELS, size, size, generator=gen).to(dev)
        models = measured.models
        overhead = head_overhead(models[subject], models[reference], x, 5 if quick else 21, dev)
    mem = measure_memory(measured.methods, size, 1, channels, threads, dev) if memory else {}
    per_batch = latency_figures(timings, reference, subject)

    notes = [overhead_note(overhead)] if overhead else []
    if subject in measured.models:
        notes.append(parameters_note(measured, subject, reference))
    if mem:
        notes.append(memory_note(mem, dev))
    notes += noise_notes(timings, reference)
    notes.append(C.spread_note(max(e["spread"] for b in per_batch.values() for e in b.values())))
    threads_now = torch.get_num_threads()
    return bench.result(
        "inference",
        f"Inference latency ({size}², {dev.type}, {threads_now} threads)",
        settings_text(size, channels, dev, measured, rounds_used),
        tables=[latency_table(size, batches, measured, per_batch, mem)],
        targets=latency_targets(batches, measured, per_batch),
        notes=notes,
        size=size,
        channels=list(channels),
        device=dev.type,
        params=measured.params,
        members=measured.members,
        passes=measured.passes,
        per_batch={str(b): v for b, v in per_batch.items()},
        raw_seconds={str(b): v for b, v in timings.items()},
        memory=mem,
        edue_overhead_ms=overhead,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--size", type=int, default=256, help="image size (default 256)")
    C.add_channels_argument(parser)
    C.add_methods_argument(parser)
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8)")
    parser.add_argument("--rounds", type=int, help="timed rounds per batch size")
    C.add_device_argument(parser)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--memory-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        return C.child_answer(
            child_memory(
                args.child_memory, args.size, args.memory_batch, args.channels, args.threads
            )
        )
    result = run(
        quick=args.quick,
        size=args.size,
        channels=args.channels,
        methods=args.methods,
        batches=args.batches,
        rounds=args.rounds,
        threads=args.threads,
        device=args.device,
        memory=not args.no_memory,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
