"""A million pages on one machine: the compressed first stage (``sapindex optimize``) against the
exact scan it approximates, at 10^5 and 10^6 pages, on two kept-vector distributions.

Data (``sapindex.benchdata.token_vectors``): ``spread`` (clustered, a slowly decaying spectrum: 90 %
of the variance needs ~76 of 128 axes, as a real retriever's vectors do) and ``micro`` (the built-in
micro model's real kept vectors at keep 0.1, resampled; low-rank). Queries: ``queries_near`` (20
tokens near one page's vectors) for ``spread``; the benchmark's real queries encoded by the bundle
for ``micro``. The exact answers are computed once by streaming every vector from disk (all
queries in one pass) and cached.

Steps (each resumable; ``--work`` keeps the index, the stage and the exact answers):
  build     write the index (pages of ~74 kept float16 vectors) with the index writer
  optimize  ``first_stage.build`` (time, peak RSS in a child process)
  exact     the exact top 10 of every query, one streamed pass
  search    in-process p50/p99 and recall@10 per (nprobe, kprime, depth), peak RSS, bytes per vector
  serve     ``sapindex serve`` with 1 and 8 clients: p50/p99, queries/s, server peak RSS

Usage: python bench/million_pages.py --pages 1000000 --dist spread [--steps build,optimize,exact,search,serve]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 5000


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def source(work: Path, dist: str, n_queries: int):
    """(page generator factory, query vectors, query texts or None)."""
    from sapindex.benchdata import token_vectors as tv

    if dist == "spread":
        first = list(tv.spread_pages(2000, seed=7))
        return (lambda n, start: tv.spread_pages(n, seed=7, start=start)), tv.queries_near(first, n_queries, 3), None
    sys.path.insert(0, str(HERE))
    from two_stage import source_data

    src = source_data(work, 300, n_queries)
    kept = [np.asarray(v, np.float32) for v in src["kept"]]
    return ((lambda n, start: tv.resampled_pages(kept, n, seed=7, start=start)),
            [np.asarray(q, np.float32) for q in src["queries"]][:n_queries], [str(t) for t in src["texts"]][:n_queries])


def build(path: Path, pages, n: int) -> float:
    from sapindex.index.store import Index, PageRow
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.defaults import default_bundle_path

    bundle = Bundle.open(default_bundle_path())
    meta = {"bundle_path": str(default_bundle_path().resolve()), "builtin": True, "family": bundle.family}
    started = time.perf_counter()
    with Index.create_or_open(path, bundle.fingerprint, bundle.dim, meta) as idx:
        have = idx.stats().pages
        for start in range(have - have % BATCH, n, BATCH):
            rows = []
            for j, v in enumerate(pages(min(start + BATCH, n), start)):
                i = start + j
                rows.append(PageRow(path=f"/archive/{i // 10:07d}.pdf", content_hash=f"{i:064x}", page=i % 10 + 1,
                                    width=1100, height=850, grid=(27, 27), n_visual=729,
                                    positions=np.arange(len(v), dtype=np.int32), vectors=v, keep_ratio=0.1,
                                    scores=np.linspace(1, 0, len(v))))
            idx.add_pages(rows)
            log(f"  {start + len(rows)} / {n} pages, {time.perf_counter() - started:.0f} s")
    return time.perf_counter() - started


def peak_rss_gb(pid: int | str = "self") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) / 1e6


def optimize(path: Path) -> dict:
    """``sapindex optimize`` in a child process: its info, wall time and peak RSS."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sapindex.cli", "optimize", str(path), "--json"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    info = json.loads(done.stdout)
    info["wall_s"] = time.perf_counter() - started
    info["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    return info


def exact_answers(path: Path, qs, work: Path, tag: str) -> list:
    """The exact top 10 of every query, in one streamed pass over the stage's vectors (cached)."""
    cache = work / f"exact-{tag}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from sapindex.index.store import Index
    from sapindex.runtime.encoder import Encoder
    from sapindex.search import Searcher
    from sapindex.search.searcher import open_encoder

    idx = Index.open(path)
    enc: Encoder = open_encoder(idx)
    started = time.perf_counter()
    shown = [0.0]

    def progress(done, total):
        if done / total >= shown[0] + 0.05:
            shown[0] = done / total
            log(f"  exact {done / total:.0%}, {time.perf_counter() - started:.0f} s")

    with Searcher(idx, enc) as s:
        hits = s.search_vectors(qs, 10, exact=True, progress=progress)
    out = [[(h.path, h.page, h.score) for h in q] for q in hits]
    log(f"exact answers: {time.perf_counter() - started:.0f} s for {len(qs)} queries")
    cache.write_text(json.dumps(out))
    return out


def recall(got, want, k=10) -> float:
    return float(np.mean([len({(h[0], h[1]) for h in g[:k]} & {(h[0], h[1]) for h in w[:k]}) / k
                          for g, w in zip(got, want)]))


def search_table(path: Path, qs, want, grid) -> list[dict]:
    """In-process latency and recall@10 per (nprobe, kprime, depth); the searcher's own peak RSS."""
    from sapindex.index.store import Index
    from sapindex.search import Searcher
    from sapindex.search.searcher import open_encoder

    idx = Index.open(path)
    rows = []
    t = time.perf_counter()
    with Searcher(idx, open_encoder(idx)) as s:
        open_s = time.perf_counter() - t
        for nprobe, kprime, depth in grid:
            s.nprobe, s.kprime, s.depth = nprobe, kprime, depth
            s.search_vectors(qs[:3], 10)
            lat, got = [], []
            for q in qs:
                t = time.perf_counter()
                got.append([(h.path, h.page, h.score) for h in s.search_vectors([q], 10)[0]])
                lat.append(time.perf_counter() - t)
            rows.append({"nprobe": nprobe, "kprime": kprime, "depth": depth, "recall@10": recall(got, want),
                         "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                         "open_s": open_s, "rss_gb": peak_rss_gb()})
            log(rows[-1])
    return rows


def serve_table(path: Path, texts, clients=(1, 8)) -> dict:
    sys.path.insert(0, str(HERE))
    from two_stage import serve_latency

    return serve_latency(path, texts, list(clients), exact=False)


WORDS = ("annual report revenue travel policy budget invoice total chart table figure summary quarter growth "
         "profit loss contract signature appendix schedule").split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1000000)
    ap.add_argument("--dist", choices=["spread", "micro"], default="spread")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--steps", default="build,optimize,exact,search,serve")
    ap.add_argument("--grid", default="32:1024:256,16:1024:256,32:512:256,32:1024:512",
                    help="nprobe:kprime:depth settings to measure")
    ap.add_argument("--work", type=Path, default=Path("/work/bench-m"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    pages, qs, texts = source(args.work, args.dist, args.queries)
    path = args.work / f"{args.dist}-{args.pages}"
    tag = f"{args.dist}-{args.pages}"
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
           "pages": args.pages, "dist": args.dist}
    if "build" in steps:
        out["build_s"] = build(path, pages, args.pages)
    if "optimize" in steps:
        out["optimize"] = optimize(path)
        log(out["optimize"])
    want = exact_answers(path, qs, args.work, tag) if {"exact", "search"} & set(steps) else None
    if "search" in steps:
        grid = [tuple(int(x) for x in g.split(":")) for g in args.grid.split(",")]
        out["search"] = search_table(path, qs, want, grid)
    if "serve" in steps:
        rng = np.random.default_rng(0)
        out["serve"] = serve_table(path, texts or [" ".join(rng.choice(WORDS, 6)) for _ in range(args.queries)])
        log(out["serve"])
    out["disk_gb"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
    (args.work / f"result-{tag}-{'-'.join(steps)}.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
