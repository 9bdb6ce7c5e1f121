"""int8 schemes side by side at real width: speed and closeness to fp32 of sapindex's two int8
schemes (``sapindex.exporter.quantize``), and of the blockwise scheme at other block sizes.

The graph is ``harness.build_layer_stack``'s stack of transformer-like layers at Qwen2-VL-2B's text
width (q/k/v, o, gate/up, down); the input is one page's tokens, Gaussian, and again with a few
outlier channels 30x larger (as hidden states of trained transformers have: what one activation
scale per tensor handles worst). Each variant is quantized by ``quantize_graph`` exactly as
`export --dtype int8` does (4-bit blockwise rows: the same quantizer at 4 bits, which sapindex
does not offer), then run by ONNX Runtime on the CPU with the runtime's session settings for its
dtype, alternating with the others.
Usage: python bench/int8_schemes.py [--layers 4 --width 1536 --mlp 8960 --tokens 768 --repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import build_layer_stack, machine

BLOCKS = (32, 64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--mlp", type=int, default=8960)
    parser.add_argument("--tokens", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime as ort

    from sapindex.exporter import quantize
    from sapindex.runtime.session import session_options

    rng = np.random.default_rng(1)
    gaussian = rng.standard_normal((args.tokens, args.width), dtype=np.float32)
    outliers = gaussian.copy()
    outliers[:, rng.choice(args.width, 4, replace=False)] *= 30
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "fp32" / "stack.onnx"
        source.parent.mkdir()
        weights = build_layer_stack(source, args.layers, args.width, args.mlp)
        variants = {"fp32": source}
        for scheme, block, bits in [("dynamic", None, 8), *(("blockwise", b, 8) for b in BLOCKS),
                                    *(("blockwise", b, 4) for b in (32, 128))]:
            name = scheme if block is None else f"blockwise, block {block}" + (", 4 bits" if bits == 4 else "")
            folder = Path(tmp) / name.replace(", ", "-").replace(" ", "")
            shutil.copytree(source.parent, folder)
            if block is not None:
                quantize.BLOCK, quantize.BITS = block, bits  # the module's settings, read at each pass
            quantize.quantize_graph(folder / "stack.onnx", scheme)
            variants[name] = folder / "stack.onnx"
        sessions = {name: ort.InferenceSession(str(path), session_options(dtype="fp32" if name == "fp32" else "int8"),
                                               providers=["CPUExecutionProvider"])
                    for name, path in variants.items()}
        outputs = {name: {label: s.run(None, {"x": x})[0] for label, x in (("gaussian", gaussian),
                                                                             ("outliers", outliers))}
                   for name, s in sessions.items()}
        seconds: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.repeats):  # alternating, so that load on a shared machine hits all alike
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, {"x": gaussian})
                seconds[name].append(time.perf_counter() - started)
        sizes = {name: sum(f.stat().st_size for f in path.parent.iterdir()) for name, path in variants.items()}

    print(f"# int8 schemes at real width: {args.layers} layers at width {args.width} / MLP {args.mlp} "
          f"({weights / 1e9:.2f} GB of fp32 weights), {args.tokens} tokens, median of {args.repeats} runs; "
          f"onnxruntime {ort.__version__}; {machine()}\n")
    print("| variant | seconds | speed vs fp32 | size vs fp32 | smallest cosine vs fp32, Gaussian input | "
          "with outlier channels |")
    print("|---|---|---|---|---|---|")
    base = float(np.median(seconds["fp32"]))
    for name in sessions:
        cos = [_min_cosine(outputs[name][label], outputs["fp32"][label]) for label in ("gaussian", "outliers")]
        median = float(np.median(seconds[name]))
        print(f"| {name} | {median:.3f} | {base / median:.2f}x | {sizes[name] / sizes['fp32']:.2f} | "
              f"{cos[0]:.6f} | {cos[1]:.6f} |")


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


if __name__ == "__main__":
    main()
