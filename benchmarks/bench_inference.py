"""Inference latency per image of EDUE and its baselines, side by side.

Every method is built by ``edue.methods.build_method`` from one model configuration
(default ``model.channels=[16,32,64,128,256]``, ``model.norm=batch``), put in eval
mode, and timed on the same random input through ``Method.predict_members`` under
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
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("plain", "edue", "layer_ensembles", "mc_dropout", "deep_ensemble")
IN_CHANNELS, STRUCTURES = 3, 2


def build(
    name: str,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    for_training: bool = False,
    seed: int = 0,
    extra: Sequence[str] = (),
) -> Any:
    """A method as ``edue.methods.build_method`` builds it from the default config."""
    from edue.config import load_config
    from edue.methods import build_method

    overrides = [
        f"method.name={name}",
        f"model.channels=[{','.join(str(int(c)) for c in channels)}]",
        "model.norm=batch",
        *extra,
    ]
    config = load_config(None, overrides)
    torch.manual_seed(seed)
    return build_method(config, IN_CHANNELS, STRUCTURES, 2, for_training=for_training)


def passes(method: Any) -> int:
    """Forward passes of the network per prediction."""
    if method.name == "mc_dropout":
        return int(method.samples)
    if method.name == "deep_ensemble":
        return len(method.network)
    return 1


def _light_warmup(method: Any, x: torch.Tensor) -> Any:
    """One pass of each distinct network (the conv kernels of the timed call)."""
    if method.name == "mc_dropout":
        return lambda: method.network(x)
    if method.name == "deep_ensemble":
        return lambda: method.network[0](x)
    return lambda: method.predict_members(x)


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

    gc.collect()
    reset = C.reset_peak_rss()
    base_rss, base_peak = C.current_rss_bytes(), C.peak_rss_bytes()
    method = build(name, channels).eval()
    x = torch.randn(batch, IN_CHANNELS, size, size, generator=torch.Generator().manual_seed(0))
    built_rss = C.current_rss_bytes()
    with torch.no_grad():
        for _ in range(2):
            out = method.predict_members(x)
    peak = C.peak_rss_bytes()
    weights = sum(p.numel() * p.element_size() for p in method.parameters())
    weights += sum(b.numel() * b.element_size() for b in method.buffers())
    return {
        "method": name,
        "peak_delta_mb": (peak - base_rss) / C.MB,
        "after_build_delta_mb": (built_rss - base_rss) / C.MB,
        "weights_mb": weights / C.MB,
        "output_mb": out.numel() * out.element_size() / C.MB,
        "import_slack_mb": (base_peak - base_rss) / C.MB,
        "peak_reset": reset,
    }


def cuda_memory(
    name: str, size: int, batch: int, channels: Sequence[int], device: torch.device
) -> dict[str, Any]:
    """Peak CUDA memory growth of building ``name`` and predicting once (in-process)."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    method = build(name, channels).to(device).eval()
    x = torch.randn(batch, IN_CHANNELS, size, size, device=device)
    with torch.no_grad():
        out = method.predict_members(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    result = {
        "method": name,
        "peak_delta_mb": (peak - base) / C.MB,
        "output_mb": out.numel() * out.element_size() / C.MB,
    }
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
        out[name] = C.run_child(
            Path(__file__),
            [
                "--child-memory",
                name,
                "--size",
                str(size),
                "--memory-batch",
                str(batch),
                "--channels",
                *[str(c) for c in channels],
                "--threads",
                str(threads),
            ],
        )
    return out


# --------------------------------------------------------------------------- run
def run(
    quick: bool = False,
    size: int = 256,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    methods: Sequence[str] = METHODS,
    batches: Sequence[int] | None = None,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
    memory: bool = True,
) -> dict[str, Any]:
    """Latency, ratios, parameters and peak memory of each method; returns the figures."""
    started = time.perf_counter()
    C.setup_threads(threads)
    info = C.machine()
    dev = torch.device(device)
    methods = ["plain", *[m for m in methods if m != "plain"]]
    batches = list(batches or ((1,) if quick else (1, 8)))
    models = {name: build(name, channels).to(dev).eval() for name in methods}
    from edue.metrics import count_parameters

    params = {name: count_parameters(m) for name, m in models.items()}
    members = {name: int(m.n_members) for name, m in models.items()}
    n_passes = {name: passes(m) for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    timings: dict[int, dict[str, list[float]]] = {}
    rounds_used: dict[int, int] = {}
    for batch in batches:
        x = torch.randn(batch, IN_CHANNELS, size, size, generator=gen).to(dev)
        fns = {n: (lambda m=m, x=x: m.predict_members(x)) for n, m in models.items()}
        warm = fns if batch == 1 else {n: _light_warmup(m, x) for n, m in models.items()}
        r = rounds or ((2 if quick else 11) if batch == 1 else (1 if quick else 3))
        rounds_used[batch] = r
        with torch.no_grad():
            timings[batch] = C.interleaved(
                fns, r, warmup=warm, device=dev, progress=f"inference {size}² batch {batch}"
            )
    overhead = None
    if "edue" in models:
        x = torch.randn(1, IN_CHANNELS, size, size, generator=gen).to(dev)
        overhead = head_overhead(models["edue"], models["plain"], x, 5 if quick else 21, dev)
    mem = measure_memory(methods, size, 1, channels, threads, dev) if memory else {}

    per_batch: dict[int, dict[str, dict[str, float]]] = {}
    for batch, times in timings.items():
        per_batch[batch] = {
            name: {
                "ms_per_image": 1000 * C.median(t) / batch,
                "spread": C.spread(t),
                "ratio_to_plain": C.paired_ratio(t, times["plain"]),
                "ratio_to_edue": C.paired_ratio(t, times["edue"]) if "edue" in times else None,
            }
            for name, t in times.items()
        }

    headers = ["method", "members S", "passes", "parameters"]
    for batch in batches:
        headers += [f"ms/image (batch {batch})", f"× plain (batch {batch})"]
    if mem:
        headers.append("peak memory MB (batch 1)")
    rows = []
    for name in methods:
        row: list[Any] = [C.METHOD_LABELS[name], members[name], n_passes[name], params[name]]
        for batch in batches:
            entry = per_batch[batch][name]
            row += [entry["ms_per_image"], f"{entry['ratio_to_plain']:.2f}×"]
        if mem:
            row.append(mem[name]["peak_delta_mb"])
        rows.append(row)
    tables = [C.table(f"Latency per image at {size}×{size}", headers, rows)]

    targets = []
    for batch in batches:
        tag = f" (batch {batch})"
        if "edue" in methods:
            targets.append(
                C.target(
                    "EDUE / plain U-Net latency" + tag,
                    per_batch[batch]["edue"]["ratio_to_plain"],
                    "<=",
                    1.1,
                )
            )
        if "deep_ensemble" in methods and "edue" in methods:
            targets.append(
                C.target(
                    "Deep Ensemble (M=5) / EDUE latency" + tag,
                    per_batch[batch]["deep_ensemble"]["ratio_to_edue"],
                    ">=",
                    4.5,
                )
            )
        if "mc_dropout" in methods and "edue" in methods:
            targets.append(
                C.target(
                    "MC dropout (N=10) / EDUE latency" + tag,
                    per_batch[batch]["mc_dropout"]["ratio_to_edue"],
                    ">=",
                    8.0,
                )
            )

    notes = []
    if overhead:
        notes.append(
            f"Where EDUE's extra time goes (batch 1, timed apart, medians): its heads (4 1×1 "
            f"convolutions, upsampling, stack, sigmoid) {overhead['edue_heads']:.2f} ms vs the "
            f"plain output convolution + sigmoid {overhead['plain_head']:.2f} ms; backbone pass "
            f"{overhead['edue_backbone']:.1f} ms (EDUE, hooked) vs plain network "
            f"{overhead['plain_network']:.1f} ms — intrinsic EDUE overhead "
            f"{100 * overhead['overhead']:+.1f} % of a plain pass."
        )
    if "edue" in methods:
        extra = params["edue"] - params["plain"]
        notes.append(
            f"Parameters: EDUE {params['edue']:,} vs plain U-Net {params['plain']:,} "
            f"({extra:+,}, {100 * extra / params['plain']:+.3f} %: {members['edue']} 1×1 heads "
            "replace the single output convolution)."
        )
    if mem and dev.type == "cpu":
        slack = max(v["import_slack_mb"] for v in mem.values())
        resets = all(v["peak_reset"] for v in mem.values())
        notes.append(
            "Peak memory = RSS high-water mark (VmHWM, reset just before building the model) "
            "of a fresh subprocess after building the model and two batch-1 predictions, minus "
            "its RSS just before building it (weights, activations, outputs, allocator caches"
            + ("" if resets else f"; VmHWM reset failed, import peak ≤ {slack:.1f} MB above")
            + "). Weights alone: "
            + ", ".join(f"{C.METHOD_LABELS[n]} {v['weights_mb']:.1f} MB" for n, v in mem.items())
            + "."
        )
    elif mem:
        notes.append("Peak memory = torch.cuda.max_memory_allocated growth (weights included).")
    for batch, times in timings.items():
        best = {n: min(t) for n, t in times.items()}
        pairs = [("edue", "plain"), ("deep_ensemble", "edue"), ("mc_dropout", "edue")]
        shown = [
            f"{C.METHOD_LABELS[a]}/{C.METHOD_LABELS[b]} {best[a] / best[b]:.2f}×"
            for a, b in pairs
            if a in best and b in best
        ]
        if shown and len(times["plain"]) > 1:
            notes.append(
                f"Noise check, batch {batch}: ratios of the fastest round of each method "
                f"(least disturbed): {', '.join(shown)}."
            )
    worst = max(e["spread"] for b in per_batch.values() for e in b.values())
    notes.append(
        f"Timing spread (max−min)/median over rounds, worst method: {100 * worst:.0f} %"
        + (" — the machine was busy; ratios are paired per round." if worst > 0.25 else ".")
    )
    le = models.get("layer_ensembles")
    le_heads = (
        f", Layer Ensembles {len(le.network.heads)} heads (skip_first {le.skip_first})"
        if le
        else ""
    )
    settings = (
        f"{size}×{size} images, {IN_CHANNELS} channels, {STRUCTURES} structures; "
        f"`model.channels=[{','.join(map(str, channels))}]`, `model.norm=batch`; eval mode, "
        f"`torch.no_grad`, `Method.predict_members`; MC dropout N=10 (p=0.2), Deep Ensemble "
        f"M=5{le_heads}; device {dev.type}, "
        f"{torch.get_num_threads()} torch threads; "
        + ", ".join(
            f"batch {b}: warm-up then median of {rounds_used[b]} interleaved rounds"
            for b in batches
        )
        + "."
    )
    return {
        "name": "inference",
        "title": f"Inference latency ({size}², {dev.type}, {torch.get_num_threads()} threads)",
        "machine": info,
        "settings": settings,
        "size": size,
        "channels": list(channels),
        "device": dev.type,
        "params": params,
        "members": members,
        "passes": n_passes,
        "per_batch": {str(b): v for b, v in per_batch.items()},
        "raw_seconds": {str(b): v for b, v in timings.items()},
        "memory": mem,
        "edue_overhead_ms": overhead,
        "tables": tables,
        "targets": targets,
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_arguments(parser)
    parser.add_argument("--size", type=int, default=256, help="image size (default 256)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(C.DEFAULT_CHANNELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8)")
    parser.add_argument("--rounds", type=int, help="timed rounds per batch size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--memory-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        print(
            json.dumps(
                child_memory(
                    args.child_memory, args.size, args.memory_batch, args.channels, args.threads
                )
            )
        )
        return 0
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
