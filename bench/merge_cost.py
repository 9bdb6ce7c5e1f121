"""Issue 19: what each index method adds to a page's indexing time, next to encoding the page.

Two measurements, side by side in one process:

- the built-in micro model: encode ``--pages`` pages of a dataset (batch 8, the index default), then
  time each method's reduction of those same encodings (``sapindex.runtime.encoder.reduce``);
- real-size token counts: random unit vectors with a skewed centrality at ColQwen2's 736 and
  ColPali's 1,024 visual tokens (dim 128), where no model runs: the methods' cost depends only on
  the token count and dim. Compare with a real-size page's encoding time in bench/RESULTS.md
  (ColQwen2 at Qwen2-VL-2B size: tens of seconds per page on 2 cores).

    python bench/merge_cost.py --dataset bench-data/micro/synthetic-test --pages 24
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sapindex import compression, sap
from sapindex.compression import INDEX_METHODS, cluster, pooling
from sapindex.eval.datasets import load_dataset
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder, reduce

RATIO = 0.1


def per_page_ms(fn, items, repeat: int = 3) -> float:
    """Best of ``repeat`` passes over ``items``, in ms per item (the machine is shared: the best pass is the
    least disturbed one)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return 1000 * best


def methods_of(pages_centralities):
    scale = compression.calibrate_budget(pages_centralities, RATIO)
    return {name: (lambda p, name=name: reduce(p, name, RATIO, budget_scale=scale)) for name in INDEX_METHODS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="bench-data/micro/synthetic-test", help="a dataset `sapindex eval` reads")
    ap.add_argument("--pages", type=int, default=24)
    args = ap.parse_args()
    encoder = Encoder(Bundle.open(default_bundle_path()))
    images = [p.load() for p in load_dataset(args.dataset).pages[:args.pages]]
    encoder.encode_pages(images[:2])  # warm the sessions
    t0 = time.perf_counter()
    pages = []
    for start in range(0, len(images), 8):
        pages.extend(encoder.encode_pages(images[start:start + 8]))
    encode_ms = 1000 * (time.perf_counter() - t0) / len(images)
    n = [p.n_visual for p in pages]
    print(f"micro model: {len(pages)} pages, {min(n)}-{max(n)} visual tokens, keep {RATIO}; encoding "
          f"{encode_ms:.1f} ms/page")
    print("| method | ms/page | share of encoding |")
    print("|---|---|---|")
    reductions = methods_of([p.centrality for p in pages])
    reductions["pooling (eval baseline)"] = lambda p: pooling(p.embeddings, RATIO)
    reductions["cluster (eval baseline)"] = lambda p: cluster(p.embeddings, RATIO)
    for name, fn in reductions.items():
        ms = per_page_ms(fn, pages)
        print(f"| {name} | {ms:.2f} | {ms / encode_ms:.1%} |", flush=True)

    rng = np.random.default_rng(0)
    for tokens in (736, 1024):
        raw = [rng.standard_normal((tokens, 128)).astype(np.float32) for _ in range(8)]
        vectors = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in raw]
        cents = [rng.pareto(1.5, tokens) for _ in range(8)]
        k = sap.keep_count(tokens, RATIO)
        scale = compression.calibrate_budget(cents, RATIO)
        fns = {
            "sap": lambda vc, k=k: sap.highest(vc[1], k),
            "sap-merge": lambda vc, k=k: compression.anchor_merge(vc[0], vc[1], k),
            "sap-kmeans": lambda vc, k=k: compression.central_kmeans(vc[0], vc[1], k),
            "sap-budget": lambda vc, scale=scale: sap.highest(vc[1], compression.budget_count(vc[1], scale)),
            "pooling (eval baseline)": lambda vc: pooling(vc[0], RATIO),
            "cluster (eval baseline)": lambda vc: cluster(vc[0], RATIO),
        }
        print(f"\nreal-size token count {tokens} x 128 (random vectors), keep {RATIO}:")
        print("| method | ms/page |")
        print("|---|---|")
        for name, fn in fns.items():
            print(f"| {name} | {per_page_ms(fn, list(zip(vectors, cents, strict=True)), repeat=2):.1f} |", flush=True)


if __name__ == "__main__":
    main()
