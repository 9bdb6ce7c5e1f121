"""Exact MaxSim scoring speed, two parts.

``eval``: masked MaxSim for `sapindex eval`, Q queries x D pages as the eval runs it (float32).
``stored``: pages stored as float16 (an index, the first stage's copy) scored by numpy (convert, then
matmul: ``sap.maxsim_segments``) against the ONNX Runtime kernel (``search.kernel.maxsim``), for one
query's rescoring (256 and 1,024 pages of ~74 vectors) and one scan block, interleaved A, B, A, B.

Usage: python bench/maxsim_speed.py [--part eval|stored] [--queries 1000 --pages 1000 --query-tokens 20]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
from harness import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--query-tokens", type=int, default=20)
    parser.add_argument("--visual-tokens", type=int, default=768, help="ColQwen2 pages: up to ~768")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--part", choices=["eval", "stored"], default="eval")
    parser.add_argument("--rounds", type=int, default=9, help="stored: interleaved rounds")
    args = parser.parse_args()
    if args.part == "stored":
        stored(args)
        return

    from sapindex import sap
    from sapindex.eval.metrics import maxsim_matrix

    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.standard_normal((n, args.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    queries = [unit(args.query_tokens) for _ in range(args.queries)]
    print(f"# MaxSim scoring: {args.queries} queries x {args.pages} pages, {args.query_tokens} query tokens, "
          f"dim {args.dim}, numpy {np.__version__}, {machine()}")
    print("| page vectors | seconds per score matrix | matrices per full eval (7 methods x 3 ratios, random x5) |")
    print("|---|---|---|")
    for label, ratio in (("full", 1.0), ("keep 0.2", 0.2), ("keep 0.1", 0.1), ("keep 0.05", 0.05)):
        k = sap.keep_count(args.visual_tokens, ratio)
        pages = [unit(k) for _ in range(args.pages)]
        start = time.perf_counter()
        maxsim_matrix(queries, pages)
        seconds = time.perf_counter() - start
        count = 1 if ratio == 1.0 else 10  # sap, random x5, eos, adaptive-eos, pooling, cluster
        print(f"| {label} ({k}) | {seconds:.2f} | {count} |")


def _numpy_maxsim(queries, query_starts, pages, page_starts):
    """What sapindex did before the kernel: convert the float16 pages, then numpy's MaxSim."""
    from sapindex.sap import maxsim_segments

    return maxsim_segments(queries, query_starts, pages.astype(np.float32), page_starts)


def stored(args) -> None:
    """numpy against the ONNX Runtime kernel on float16 pages, interleaved; medians and ranges in ms."""
    from sapindex.benchdata import token_vectors as tv
    from sapindex.search import kernel

    pages = list(tv.spread_pages(1024, seed=3))
    q = tv.queries_near(pages, 1, seed=4)[0]
    cases = []
    for n in (256, 1024):
        v = np.concatenate(pages[:n]).astype(np.float16)
        starts = np.cumsum([0] + [len(p) for p in pages[:n - 1]])
        cases.append((f"{n} pages ({len(v)} vectors), 1 query", q, np.zeros(1, np.int64), v, starts, 1))
    block = np.concatenate(pages).astype(np.float16)[:16384]
    qs = np.concatenate(tv.queries_near(pages, 3, seed=5))
    cases.append(("scan block (16,384 vectors), 3 queries", qs, np.arange(3) * 20, block, np.arange(0, 16384, 74), 0))
    print(f"# stored float16 pages: numpy vs ONNX Runtime kernel, {args.rounds} interleaved rounds, "
          f"numpy {np.__version__}, {machine()}")
    print("| what | numpy ms (median, range) | kernel ms (median, range) | numpy / kernel |")
    print("|---|---|---|---|")
    for label, qv, qstarts, v, starts, threads in cases:
        variants = {"numpy": functools.partial(_numpy_maxsim, qv, qstarts, v, starts),
                    "kernel": functools.partial(kernel.maxsim, qv, qstarts, v, starts, threads=threads)}
        np.testing.assert_allclose(variants["numpy"](), variants["kernel"](), rtol=1e-5, atol=1e-4)
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
        a, b = (np.array(times[n]) for n in ("numpy", "kernel"))
        print(f"| {label} | {np.median(a):.2f} ({a.min():.2f}-{a.max():.2f}) | {np.median(b):.2f} "
              f"({b.min():.2f}-{b.max():.2f}) | {np.median(a) / np.median(b):.1f}x |")


if __name__ == "__main__":
    main()
