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
import concurrent.futures as cf
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from harness import peak_rss_kb, source_data

BATCH = 5000


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def source(work: Path, dist: str, n_queries: int, n_pages: int):
    """(page generator factory, query vectors, query texts or None)."""
    from sapindex.benchdata import token_vectors as tv

    if dist.startswith("spread"):
        topics = tv.SPREAD_TOPICS if dist == "spread-dense" else tv.topics_for(n_pages)
        first = list(tv.spread_pages(2000, seed=7, topics=topics))
        return ((lambda n, start: tv.spread_pages(n, seed=7, start=start, topics=topics)),
                tv.queries_near(first, n_queries, 3), None)
    src = source_data(work, 300, n_queries)
    kept = [np.asarray(v, np.float32) for v in src["kept"]]
    return ((lambda n, start: tv.resampled_pages(kept, n, seed=7, start=start)),
            [np.asarray(q, np.float32) for q in src["queries"]][:n_queries], [str(t) for t in src["texts"]][:n_queries])


def build(path: Path, pages, n: int) -> float:
    from sapindex.index.store import IndexWriter, PageRow
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.defaults import default_bundle_path

    bundle = Bundle.open(default_bundle_path())
    meta = {"bundle_path": str(default_bundle_path().resolve()), "builtin": True, "family": bundle.family}
    started = time.perf_counter()
    with IndexWriter.create_or_open(path, bundle.fingerprint, bundle.dim, meta) as idx:
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
                          for g, w in zip(got, want, strict=True)]))


def search_table(path: Path, qs, want, grid) -> list[dict]:
    """In-process latency and recall@10 per (nprobe, kprime, depth[, pool factor]); the searcher's own peak RSS."""
    from sapindex.index.store import Index
    from sapindex.search import Searcher, compressed
    from sapindex.search.searcher import open_encoder

    idx = Index.open(path)
    rows, default_pool = [], compressed.POOL_FACTOR
    t = time.perf_counter()
    with Searcher(idx, open_encoder(idx)) as s:
        open_s = time.perf_counter() - t
        for nprobe, kprime, depth, *pool in grid:
            s.nprobe, s.kprime, s.depth = nprobe, kprime, depth
            compressed.POOL_FACTOR = pool[0] if pool else default_pool
            s.search_vectors(qs[:3], 10)
            lat, got = [], []
            for q in qs:
                t = time.perf_counter()
                got.append([(h.path, h.page, h.score) for h in s.search_vectors([q], 10)[0]])
                lat.append(time.perf_counter() - t)
            rows.append({"nprobe": nprobe, "kprime": kprime, "depth": depth, "pool": compressed.POOL_FACTOR,
                         "recall@10": recall(got, want),
                         "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                         "open_s": open_s, "rss_gb": peak_rss_kb() / 1e6})
            log(rows[-1])
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_latency(index: Path, texts, clients_list, exact: bool) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sapindex.cli", "serve", str(index), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read()) from None
            time.sleep(0.2)
    load_s = time.perf_counter() - started

    def ask(text):
        body = json.dumps({"query": text, "k": 10, **({"exact": True} if exact else {})}).encode()
        req = urllib.request.Request(url + "/search", data=body, headers={"Content-Type": "application/json"})
        t = time.perf_counter()
        urllib.request.urlopen(req, timeout=600).read()
        return time.perf_counter() - t

    out = {"load_s": load_s}
    try:
        ask(texts[0])
        for clients in clients_list:
            with cf.ThreadPoolExecutor(clients) as pool:
                t = time.perf_counter()
                lat = list(pool.map(ask, texts))
                wall = time.perf_counter() - t
            out[clients] = {"p50_ms": float(np.percentile(lat, 50) * 1e3),
                            "p99_ms": float(np.percentile(lat, 99) * 1e3), "qps": len(texts) / wall}
        out["rss_gb"] = peak_rss_kb(proc.pid) / 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def serve_table(path: Path, texts, clients=(1, 8)) -> dict:
    return serve_latency(path, texts, list(clients), exact=False)


WORDS = ("annual report revenue travel policy budget invoice total chart table figure summary quarter growth "
         "profit loss contract signature appendix schedule").split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1000000)
    ap.add_argument("--dist", choices=["spread", "spread-dense", "micro"], default="spread",
                    help="spread: ~30 pages a topic at any scale; spread-dense: 4,096 topics (a stress case)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--steps", default="build,optimize,exact,search,serve")
    ap.add_argument("--grid", default="32:1024:256,16:1024:256,32:512:256,32:1024:512",
                    help="nprobe:kprime:depth[:pool factor] settings to measure (pool 1: no centroid refinement)")
    ap.add_argument("--work", type=Path, default=Path("/work/bench-m"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    pages, qs, texts = source(args.work, args.dist, args.queries, args.pages)
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
    stage = next(path.glob("first_stage-*"), None)
    out["disk_gb"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
    out["stage_gb"] = sum(f.stat().st_size for f in stage.iterdir()) / 1e9 if stage else 0.0
    (args.work / f"result-{tag}-{'-'.join(steps)}.json").write_text(json.dumps(out, indent=2, default=str))
    report(out)


def report(out: dict) -> None:
    """The run as RESULTS.md tables."""
    print(f"# {out['pages']:,} pages, {out['dist']} distribution: {out['machine']}, {out['date']}\n")
    print(f"index {out['disk_gb']:.1f} GB on disk, of which the first stage {out['stage_gb']:.1f} GB"
          + (f"; written in {out['build_s']:.0f} s" if "build_s" in out else "") + "\n")
    if "optimize" in out:
        o = out["optimize"]
        print(f"`optimize`: {o['n_lists']} lists, {o['pq_bytes']} B codes, {o['bytes_per_vector']} bytes a vector "
              f"(token index file / vectors), {o['vectors']:,} vectors, {o['wall_s']:.0f} s, peak RSS "
              f"{o['peak_rss_gb']:.1f} GB\n")
    if "search" in out:
        print("| nprobe | kprime | depth | pool | recall@10 vs exact | p50 ms | p99 ms | searcher open s "
              "| searcher peak RSS GB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in out["search"]:
            print(f"| {r['nprobe']} | {r['kprime']} | {r['depth']} | {r['pool']} x | {r['recall@10']:.3f} | "
                  f"{r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['open_s']:.1f} | {r['rss_gb']:.2f} |")
        print()
    if "serve" in out:
        sv = out["serve"]
        print(f"Through `sapindex serve` (HTTP, the micro bundle encodes each query; server start "
              f"{sv['load_s']:.1f} s, server peak RSS {sv['rss_gb']:.2f} GB):\n")
        print("| clients | p50 ms | p99 ms | queries/s |")
        print("|---|---|---|---|")
        for c in (1, 8):
            if c in sv:
                print(f"| {c} | {sv[c]['p50_ms']:.1f} | {sv[c]['p99_ms']:.1f} | {sv[c]['qps']:.1f} |")
        print()


if __name__ == "__main__":
    main()
