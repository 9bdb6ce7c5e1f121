"""int8 quantization's memory and time, side by side: ONNX Runtime's ``quantize_dynamic`` in one
pass against sapindex's quantizer in passes (``sapindex.exporter.quantize``), on the same graph.

Why: quantizing holds weights in memory; a 3.75 B model's text graph is ~11 GB of fp32 weights,
so a quantizer whose peak is a multiple of the graph cannot run on a 24 GB machine. The graph
here is a stack of transformer-like layers at a real width (q/k/v sharing an input, gate/up
sharing one, o and down alone), written with external data as an export writes it; each
quantizer runs in a fresh process, and its peak RSS is measured above the process's own
baseline (imports included in neither). Both results are checked to run and agree.
Usage: python bench/quantize_memory.py [--layers 8 --width 1536 --mlp 8960]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import build_layer_stack, child_json, machine, peak_rss_kb


def child(method: str, path: Path) -> None:
    """Quantize ``path`` in place with ``method``; prints seconds and peak growth as JSON."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sapindex.exporter.quantize import SCHEMES, quantize_graph

    before = peak_rss_kb() * 1024
    started = time.perf_counter()
    if method == "ort-single-pass":
        out = path.with_name("q.onnx")
        quantize_dynamic(path, out, op_types_to_quantize=SCHEMES["dynamic"]["ops"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True})
    else:
        quantize_graph(path, "dynamic")
    seconds = time.perf_counter() - started
    growth = peak_rss_kb() * 1024 - before
    print(json.dumps({"seconds": seconds, "peak_growth_bytes": growth}))


def outputs(path: Path, width: int) -> np.ndarray:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((4, width), dtype=np.float32)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--mlp", type=int, default=8960)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    results = {}
    with tempfile.TemporaryDirectory(prefix="sap-quantize-") as tmp:
        for method in ("ort-single-pass", "sapindex-passes"):
            directory = Path(tmp) / method
            directory.mkdir()
            weights = build_layer_stack(directory / "stack.onnx", args.layers, args.width, args.mlp)
            results[method] = child_json(__file__, method, "--child", method, directory / "stack.onnx")
            quantized = directory / ("q.onnx" if method == "ort-single-pass" else "stack.onnx")
            results[method]["out"] = outputs(quantized, args.width)
    ours, theirs = results["sapindex-passes"]["out"], results["ort-single-pass"]["out"]
    same = np.isfinite(ours).all() and np.array_equal(ours, theirs)
    print(f"# int8 quantization memory: {args.layers} layers at width {args.width} / MLP {args.mlp}, "
          f"{weights / 1e9:.2f} GB of fp32 weights; {machine()}\n")
    print("| quantizer | seconds | peak above baseline GB | peak / fp32 weights |")
    print("|---|---|---|---|")
    for method, r in results.items():
        growth = r["peak_growth_bytes"]
        print(f"| {method} | {r['seconds']:.1f} | {growth / 1e9:.2f} | {growth / weights:.2f}x |")
    print(f"\nThe two quantized graphs give identical (finite) outputs on the same input: {same}.")


if __name__ == "__main__":
    main()
