"""Exact masked MaxSim scoring speed for `sapindex eval`: Q queries x D pages, as the eval runs it.

Usage: python bench/maxsim_speed.py [--queries 1000 --pages 1000 --query-tokens 20 --visual-tokens 768]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--query-tokens", type=int, default=20)
    parser.add_argument("--visual-tokens", type=int, default=768, help="ColQwen2 pages: up to ~768")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()

    from sapindex import sap
    from sapindex.eval.metrics import maxsim_matrix

    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.standard_normal((n, args.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    queries = [unit(args.query_tokens) for _ in range(args.queries)]
    print(f"# MaxSim scoring: {args.queries} queries x {args.pages} pages, {args.query_tokens} query tokens, "
          f"dim {args.dim}, {platform.machine()} {os.cpu_count()} cores, numpy {np.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
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


if __name__ == "__main__":
    main()
