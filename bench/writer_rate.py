"""How fast the one LanceDB writer of an index commits pages: what bounds a scale-out run (issue 17).

Every `index` batch is one atomic commit by the single writer, however many encoders feed it. This
measures pages/s and commits/s of `Index.add_pages` for batch sizes 1..512, on pages like a real
ColQwen2's at keep 0.1 (74 kept float16 vectors of 128 dims), on an index that already holds
``--prefill`` pages in many small commits (their fragments and versions are what later commits
pay for), before and after `compact`.

Usage: python bench/writer_rate.py [--prefill 2000] [--pages 2048]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import machine


def rows(start: int, n: int, k: int = 74, dim: int = 128):
    from sapindex.index.store import PageRow

    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        v = rng.standard_normal((k, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(PageRow(path=f"/w/{i // 10}.pdf", content_hash=f"{i // 10:064x}", page=i % 10 + 1, width=1100,
                           height=850, grid=(27, 27), n_visual=729, positions=np.arange(k, dtype=np.int32) * 9,
                           vectors=v, keep_ratio=0.1, scores=np.linspace(1, 0, k)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefill", type=int, default=2000, help="pages committed 8 at a time before measuring")
    ap.add_argument("--pages", type=int, default=2048, help="pages written per batch size")
    ap.add_argument("--batch-sizes", default="1,8,64,512")
    args = ap.parse_args()
    from sapindex.index.store import IndexWriter

    root = Path(tempfile.mkdtemp(prefix="writer-rate-"))
    print(f"# Single-writer commit rate: {machine()}; "
          f"pages of 74 kept float16 vectors x 128, index prefilled with {args.prefill} pages in commits of 8\n")
    print("| state | batch (pages per commit) | pages/s | commits/s | ms per commit |")
    print("|---|---|---|---|---|")
    try:
        with IndexWriter.create_or_open(root / "idx", "fp", 128) as idx:
            for i in range(0, args.prefill, 8):
                idx.add_pages(rows(i, min(8, args.prefill - i)))
            at = args.prefill
            for state in ("many fragments", "after compact"):
                if state == "after compact":
                    idx.compact()
                for b in [int(x) for x in args.batch_sizes.split(",")]:
                    n = max(b, min(args.pages, b * 64))
                    batches = [rows(at + j, b) for j in range(0, n, b)]
                    at += n
                    t = time.perf_counter()
                    for batch in batches:
                        idx.add_pages(batch)
                    el = time.perf_counter() - t
                    per = 1000 * el / len(batches)
                    print(f"| {state} | {b} | {n / el:.0f} | {len(batches) / el:.1f} | {per:.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
