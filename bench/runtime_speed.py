"""Runtime benchmarks, one process, same weights and pages for every contender:

1. pages/s: torch-free ONNX Runtime (numpy preprocessing + graphs) vs colpali-engine PyTorch eager;
2. the SAP scoring overhead: the text graph with the in-graph centrality vs without;
3. index bytes and search latency, full index vs SAP-pruned at keep ratio 0.1.

Models: the tiny test model, and a "real-width" ColQwen2 (Qwen2-VL-2B widths: text 1536 wide,
12 heads / 2 KV heads, MLP 8960; vision 1280 wide, 16 heads) with few layers, random weights.
Usage: python bench/runtime_speed.py [--real-text-layers 2 --real-vision-blocks 4 --pages 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import best_of, page_rates, small_page_images

os.environ["HF_HUB_OFFLINE"] = "1"


def export_text_variant(adapter, window, path, centrality):
    import torch

    from sapindex.exporter.export import export_graph
    from sapindex.exporter.graphs.qwen2_vl import TextGraph, VisionGraph

    inputs = adapter.page_inputs(small_page_images(2, seed=9))
    with torch.no_grad():
        feats = VisionGraph(adapter.model.visual, windowed=False)(inputs["pixel_values"], inputs["image_grid_thw"])
    export_graph(TextGraph(adapter.model, window, centrality=centrality).eval(),
                 (inputs["input_ids"], inputs["attention_mask"], feats, inputs["image_grid_thw"]), path, "text", 18,
                 adapter.info.family.name, adapter.info.family.graph_io(1))  # one text graph, as format 1
    return feats


def bench_model(label, model_dir, work, n_pages, batch_sizes, repeats):
    from sapindex.models.adapters import load_adapter
    from sapindex.runtime.bundle import Bundle, manifest_bytes
    from sapindex.runtime.encoder import Encoder
    from sapindex.runtime.session import make_session
    from sapindex.testing.pipeline import calibrate_and_export
    from sapindex.testing.toy_pages import write_pairs

    pairs = write_pairs(work / f"{label}-pairs", n=4)
    export_s = calibrate_and_export(model_dir, pairs, work / f"{label}-calib", work / f"{label}.sap").export_seconds
    bundle = Bundle.open(work / f"{label}.sap")
    encoder = Encoder(bundle)
    adapter = load_adapter(model_dir)
    images = small_page_images(n_pages)
    size_mb = manifest_bytes(bundle.manifest) / 1e6
    print(f"\n### {label}: {adapter.info.parameter_count() / 1e6:.1f} M parameters, {adapter.n_layers} decoder layers, "
          f"bundle {size_mb:.1f} MB, export + validation {export_s:.0f} s, {n_pages} pages "
          f"(~{np.mean([p.n_visual for p in encoder.encode_pages(images[:2])]):.0f} visual tokens each)\n")
    print("| batch size | ONNX Runtime pages/s (torch-free, incl. preprocessing) "
          "| PyTorch eager pages/s (colpali-engine) | ratio |")
    print("|---|---|---|---|")
    for bs in batch_sizes:
        ort_rate, torch_rate = page_rates(encoder, adapter, images, bs, repeats)
        print(f"| {bs} | {ort_rate:.2f} | {torch_rate:.2f} | {ort_rate / torch_rate:.2f}x |")

    # both as one text graph (bundle format 1's form), with and without the in-graph centrality
    feats = export_text_variant(adapter, bundle.window, work / f"{label}-plain-text.onnx", centrality=False)
    export_text_variant(adapter, bundle.window, work / f"{label}-sap-text.onnx", centrality=True)
    plain, sap_text = (make_session(work / f"{label}-{name}-text.onnx") for name in ("plain", "sap"))
    batch = encoder.preprocessor.pages(images[:4])
    (image_embeds,) = encoder.sessions.vision.run(None, {"pixel_values": batch["pixel_values"],
                                                         "image_grid_thw": batch["image_grid_thw"]})
    feed = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "image_embeds": image_embeds,
            "image_grid_thw": batch["image_grid_thw"]}
    # interleaved, many repeats: the difference is small next to timing noise on a shared CPU
    with_c, without = float("inf"), float("inf")
    for _ in range(5 * repeats + 5):
        with_c = min(with_c, best_of(lambda: sap_text.run(None, feed), 1))
        without = min(without, best_of(lambda: plain.run(None, feed), 1))
    vision_s = best_of(lambda: encoder.sessions.vision.run(None, {"pixel_values": batch["pixel_values"],
                                                                  "image_grid_thw": batch["image_grid_thw"]}), repeats)
    print(f"\nSAP centrality in the text graph (window {list(bundle.window)}, batch of 4): "
          f"{with_c * 1e3:.1f} ms with vs {without * 1e3:.1f} ms without "
          f"({(with_c - without) / without * 100:+.1f} % of the text graph, "
          f"{(with_c - without) / (without + vision_s) * 100:+.1f} % of the page encode); "
          f"vision graph {vision_s * 1e3:.1f} ms")
    del feats
    return encoder, bundle


def bench_index(encoder, bundle, work, n_pages, repeats):
    from sapindex.index.store import Index, IndexWriter, PageRow
    from sapindex.runtime.encoder import prune
    from sapindex.search.scan import search_index

    images = small_page_images(n_pages, seed=3)
    pages = []
    for i in range(0, n_pages, 8):
        pages.extend(encoder.encode_pages(images[i:i + 8]))

    class Src:
        def __init__(self, i, img):
            self.path, self.page, self.content_hash, self.size = f"doc{i}.png", 1, f"h{i}", img.size

    queries = encoder.encode_queries(["total revenue in march", "north river chart", "policy summary table"])
    print(f"\n### index size and search latency ({n_pages} pages, {queries[0].shape[0]}-token queries, "
          "float16 storage)\n")
    print("| index | vectors stored | bytes on disk | bytes/page | search ms/query (exact MaxSim): median (range) "
          "| full / this, per round |")
    print("|---|---|---|---|---|---|")
    indexes = {}
    for name, ratio in (("full (all visual tokens)", 1.0), ("SAP keep 0.10", 0.10), ("SAP keep 0.05", 0.05)):
        path = work / f"index-{ratio}"
        with IndexWriter.create_or_open(path, bundle.fingerprint, bundle.dim) as idx:
            idx.add_pages([PageRow.from_encoded(Src(i, img), prune(p, ratio), keep_ratio=ratio)
                           for i, (img, p) in enumerate(zip(images, pages, strict=True))])
            idx.compact()
        indexes[name] = Index.open(path)
    times: dict[str, list[float]] = {name: [] for name in indexes}
    for _ in range(max(repeats, 5)):  # interleaved: A, B, C, A, B, C
        for name, idx in indexes.items():
            times[name].append(best_of(lambda idx=idx: [search_index(idx, q, k=5) for q in queries], 1)
                               / len(queries) * 1e3)
    full = np.array(times["full (all visual tokens)"])
    for name, idx in indexes.items():
        stats, t = idx.stats(), np.array(times[name])
        ratio = full / t
        print(f"| {name} | {stats.vectors} | {stats.bytes_on_disk:,} | {stats.bytes_on_disk / n_pages:,.0f} "
              f"| {np.median(t):.1f} ({t.min():.1f}-{t.max():.1f}) "
              f"| {np.median(ratio):.1f}x ({ratio.min():.1f}-{ratio.max():.1f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--index-pages", type=int, default=400)
    parser.add_argument("--real-text-layers", type=int, default=2)
    parser.add_argument("--real-vision-blocks", type=int, default=2)
    parser.add_argument("--real-pages", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from sapindex.testing.tiny import build_tiny_model

    print(f"# runtime benchmarks: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = build_tiny_model(work / "tiny", "colqwen2", max_visual_tokens=256)
        encoder, bundle = bench_model("tiny ColQwen2", tiny, work, args.pages, (1, 8), args.repeats)
        bench_index(encoder, bundle, work, args.index_pages, args.repeats)
        if not args.skip_real:
            real = build_tiny_model(work / "real", "colqwen2", n_layers=args.real_text_layers, hidden=1536, heads=12,
                                    kv_heads=2, mlp=8960, vision_depth=args.real_vision_blocks, vision_width=1280,
                                    vision_heads=16, vision_mlp_ratio=4, max_visual_tokens=768)
            bench_model(f"real-width ColQwen2, {args.real_text_layers} of 28 decoder layers, "
                        f"{args.real_vision_blocks} of 32 vision blocks", real, work, args.real_pages, (1,), 1)


if __name__ == "__main__":
    main()
