"""ONNX Runtime against eager PyTorch for an exported EDUE network.

The same graph (:class:`edue.engine.predict.export.ExportWrapper`: members, segmentation
probability and variance) is run by eager PyTorch and, exported to ONNX, by ONNX Runtime
(CPU, the same number of threads), side by side, interleaved round by round, on the same
random images at 256², batch 1. Target: ONNX Runtime is not slower (ratio ≤ 1.0).

    .venv/bin/python benchmarks/bench_export.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C
import torch

TARGET = 1.0


def run(
    quick: bool = False,
    size: int = 256,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    threads: int = C.DEFAULT_THREADS,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Seconds per image of eager PyTorch and ONNX Runtime, and their ratio."""
    import onnxruntime as ort

    from edue.engine.predict.export import ExportWrapper, write_onnx

    bench = C.start(threads)
    _, subject = C.reference_pair()
    method = C.build_2d(subject, channels).eval()
    wrapper = ExportWrapper(method, 16).eval()
    x = torch.randn(1, C.IMAGE_CHANNELS, size, size, generator=torch.Generator().manual_seed(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(wrapper, x, path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    fns = {"eager PyTorch": lambda: wrapper(x), "ONNX Runtime": lambda: session.run(None, feed)}
    with torch.no_grad():
        eager = tuple(t.numpy() for t in wrapper(x))
        parity = max(
            float(abs(a - b).max()) for a, b in zip(session.run(None, feed), eager, strict=True)
        )
        n = rounds or (3 if quick else 21)
        times = C.interleaved(fns, n, fns, "cpu", f"export {size}²")
    ratio = C.paired_ratio(times["ONNX Runtime"], times["eager PyTorch"])
    rows = [[k, 1000 * C.median(t)] for k, t in times.items()]
    return bench.result(
        "export",
        f"Exported network, ONNX Runtime vs eager PyTorch ({size}², cpu, "
        f"{torch.get_num_threads()} threads)",
        f"{C.label(subject)} (model.channels {list(channels)}), batch 1, {n} rounds; the "
        "graph gives members, segmentation probability and variance",
        [C.table("Milliseconds per image", ["runtime", "ms/image"], rows)],
        [C.target("ONNX Runtime / eager PyTorch latency (batch 1)", ratio, "<=", TARGET)],
        [
            f"Largest difference between the two runtimes' outputs: {parity:.1e}.",
            C.spread_note(times),
        ],
        ratio=ratio,
        parity=parity,
        ms={k: 1000 * C.median(t) for k, t in times.items()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels", "rounds")
    p.add_argument("--size", type=int, default=256, help="image size")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
