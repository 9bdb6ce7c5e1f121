"""Fused attention outside the SAP window: does ONNX Runtime's MultiHeadAttention run faster?

The bundle's graphs write attention out in eager form (scores, mask, softmax, product), which
materialises ``[heads, P, P]`` fp32 probabilities; SAP needs them only in the window layers (and
the last layer, for the EOS baseline). onnxscript's ORT fusions (``optimize_for_ort``) rewrite
every attention whose probabilities have no other use into ONNX Runtime's ``MultiHeadAttention``
contrib op (plus fused norms, rotary and GELU), leaving the window layers as they are. This
script fuses a copy of a bundle, checks parity with the original (embeddings, centrality, kept
sets) and times both on the same pages, alternating, in one process.
Usage: python bench/fused_attention.py [--family colqwen2 --text-layers 8 --vision-blocks 8 --pages 2 --rounds 2]
       [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import build_bundle, page_images

os.environ["HF_HUB_OFFLINE"] = "1"


def fused_copy(bundle: Path, out: Path) -> dict[str, dict[str, int]]:
    """``out``: ``bundle`` with each graph rewritten by ``optimize_for_ort``; returns the fusion counts."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
    counts = {}
    for name in json.loads((bundle / "manifest.json").read_text())["graphs"]:  # format 1 or 2
        model = ir.load(str(bundle / f"{name}.onnx"))
        model, fused = optimize_for_ort(model)
        ir.save(model, str(out / f"{name}.onnx"), external_data=f"{name}.onnx.data")
        counts[name] = {k: v for k, v in fused.items() if v}
    return counts


def open_unverified(path: Path):
    """The bundle at ``path`` without the manifest's file checks (the fused copy's files differ)."""
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder

    return Encoder(Bundle(path, json.loads((path / "manifest.json").read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="colqwen2")
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--vision-blocks", type=int, default=8)
    parser.add_argument("--pages", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=None)
    args = parser.parse_args()
    from sapindex import sap

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or build_bundle(work, args.family, args.text_layers, args.vision_blocks)
        counts = fused_copy(bundle, work / "fused.sap")
        encoders = {"eager form (as exported)": open_unverified(bundle), "fused": open_unverified(work / "fused.sap")}
        images = page_images(args.pages)
        outputs, best = {}, {name: float("inf") for name in encoders}
        for name, encoder in encoders.items():
            outputs[name] = encoder.encode_pages(images[:1])  # warm-up, and the parity page
        for _ in range(args.rounds):
            for name, encoder in encoders.items():
                started = time.perf_counter()
                for image in images:
                    encoder.encode_pages([image])
                best[name] = min(best[name], (time.perf_counter() - started) / len(images))
    (a,), (b,) = outputs.values()
    same = all(np.array_equal(sap.top_k(a.centrality, r), sap.top_k(b.centrality, r)) for r in (0.05, 0.1, 0.2))
    print(f"# fused attention: {args.family} at real width, {args.text_layers} decoder layers, {args.vision_blocks} "
          f"vision blocks, pages of {a.n_visual} visual tokens; best of {args.rounds} rounds of {args.pages} pages; "
          f"{platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
    print("fusions applied: " + "; ".join(f"{graph} {fused}" for graph, fused in counts.items()) + "\n")
    print("| graphs | s/page | vs eager form |")
    print("|---|---|---|")
    base = best["eager form (as exported)"]
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")
    print(f"\nparity, fused vs eager form: max |diff| embeddings {np.abs(a.embeddings - b.embeddings).max():.1e}, "
          f"centrality {np.abs(a.centrality - b.centrality).max():.1e}, kept sets at 0.05/0.1/0.2 "
          f"{'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
