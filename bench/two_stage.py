"""Two-stage search at scale: first stages compared by recall@10 against exact MaxSim and latency,
the chosen one through `sapindex serve` with 1 and 8 clients, build time, RAM, disk; and the
pruned-vs-full MaxSim speed-up.

Data (honestly described): real SAP-kept vectors (keep 0.1) and real queries of the built-in micro
model on ``--source-pages`` pages of the synthetic test benchmark, encoded by its bundle. Each
synthetic page of an N-page index mixes the kept vectors of 3 random source pages in random
(Dirichlet) shares, about as many vectors as one real page keeps, each with Gaussian noise (sigma
0.02 per coordinate, cosine ~0.97 to its source) and renormalised: a real vector distribution,
unique pages, and for each query many pages that hold part of its relevant page. Queries are the
benchmark's real queries.

Usage: python bench/two_stage.py [--scales 10000,100000] [--queries 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

BATCH_PAGES = 5000
MIX = 3  # source pages mixed into each synthetic page
NOISE = 0.02  # Gaussian noise per coordinate before renormalising (cosine ~0.97 to the source vector)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def source_data(work: Path, n_pages: int, n_queries: int) -> dict:
    """Kept (0.1) and full vectors of the source pages, and the queries (texts and vectors)."""
    cache = work / f"source-{n_pages}-{n_queries}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        return {k: z[k] for k in z.files}
    from sapindex.benchdata.synthetic import build_benchmark
    from sapindex.eval.datasets import load_dataset
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.defaults import default_bundle_path
    from sapindex.runtime.encoder import Encoder, prune

    bench = work / "benchmark"
    if not (bench / "manifest.json").exists():
        build_benchmark(bench, n_pages=n_pages, n_queries=n_queries, seed=1234, vocab_size=1000, min_font_px=22)
    ds = load_dataset(bench)
    enc = Encoder(Bundle.open(default_bundle_path()))
    kept, full = [], []
    for i in range(0, len(ds.pages), 8):
        for tokens in enc.encode_pages([p.load() for p in ds.pages[i:i + 8]]):
            kept.append(prune(tokens, 0.1).vectors)
            full.append(tokens.embeddings)
    texts = [q.text for q in ds.queries]
    qv = enc.encode_queries(texts)
    out = {"kept": np.array(kept, dtype=object), "full": np.array(full, dtype=object),
           "texts": np.array(texts, dtype=object), "queries": np.array(qv, dtype=object)}
    np.savez(cache, **out)
    return out


def synthetic_pages(src_kept, n: int, seed: int):
    """Yield batches of (kept vectors per page) for n synthetic pages (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_src = len(src_kept)
    for start in range(0, n, BATCH_PAGES):
        batch = []
        for _ in range(min(BATCH_PAGES, n - start)):
            parts = rng.integers(n_src, size=MIX)
            share = rng.dirichlet(np.ones(MIX))
            size = len(src_kept[parts[0]])
            counts = np.maximum(1, np.round(share * size).astype(int))
            v = np.concatenate([np.asarray(src_kept[p], np.float32)[rng.choice(len(src_kept[p]), size=min(c, len(
                src_kept[p])), replace=False)] for p, c in zip(parts, counts)])
            v += rng.normal(0, NOISE, v.shape).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            batch.append(v)
        yield start, batch


def build_index(path: Path, src_kept, n: int) -> float:
    from sapindex.index.store import Index, PageRow
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.defaults import default_bundle_path

    bundle = Bundle.open(default_bundle_path())
    started = time.perf_counter()
    meta = {"bundle_path": str(default_bundle_path().resolve()), "builtin": True, "family": bundle.family}
    with Index.create_or_open(path, bundle.fingerprint, bundle.dim, meta) as idx:
        for start, batch in synthetic_pages(src_kept, n, seed=n):
            rows = []
            for j, v in enumerate(batch):
                i = start + j
                rows.append(PageRow(path=f"/synthetic/{i // 10:06d}.pdf", content_hash=f"{i:064x}", page=i % 10 + 1,
                                    width=1100, height=850, grid=(27, 27), n_visual=729,
                                    positions=np.arange(len(v), dtype=np.int32), vectors=v,
                                    keep_ratio=0.1, scores=np.linspace(1, 0, len(v))))
            idx.add_pages(rows)
            log(f"  {start + len(batch)} / {n} pages")
        idx.compact()
    return time.perf_counter() - started


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q))


def recall_at(got, want, k=10):
    return float(np.mean([len({(h.path, h.page) for h in g[:k]} & {(h.path, h.page) for h in w[:k]}) / k
                          for g, w in zip(got, want)]))


def timed(fn, items):
    lat, out = [], []
    for x in items:
        t = time.perf_counter()
        out.append(fn(x))
        lat.append(time.perf_counter() - t)
    return lat, out


# ------------------------------------------------------------------ alternative first stages (bench only)

def rescore(searcher, q, cand, k):
    """Exact rescoring of candidate pages (snapshot order), as the searcher's own last step."""
    from sapindex.index.store.search import TopK

    snap, cand = searcher._snap, np.sort(cand)
    top = TopK(k)
    top.add(snap.score_pages(q, cand), *snap.names(cand))
    return top.hits()


def page_matrix(searcher, fn):
    return np.concatenate([np.stack([fn(b.vectors[s:e].astype(np.float32))
                                     for s, e in zip(b.starts, np.append(b.starts[1:], len(b.vectors)))])
                           for b in searcher._snap.blocks])


def muvera(dim, reps=4, k_sim=4, d_proj=16, seed=0):
    """MUVERA fixed-dimensional encodings (SimHash buckets, random +-1 projections, no fill)."""
    rng = np.random.default_rng(seed)
    planes = rng.standard_normal((reps, dim, k_sim)).astype(np.float32)
    proj = (rng.integers(0, 2, (reps, dim, d_proj)) * 2 - 1).astype(np.float32) / np.sqrt(d_proj)
    powers = 2 ** np.arange(k_sim)

    def encode(v, doc):
        out = np.zeros((reps, 2 ** k_sim, d_proj), np.float32)
        for r in range(reps):
            bucket = ((v @ planes[r]) > 0).astype(np.int64) @ powers
            p = v @ proj[r]
            np.add.at(out[r], bucket, p)
            if doc:
                counts = np.bincount(bucket, minlength=2 ** k_sim)[:, None]
                out[r] /= np.maximum(counts, 1)
        return out.reshape(-1)
    return encode


def first_stage_table(searcher, qs, exact_hits, depths, n_pages, work) -> list[dict]:
    """Recall@10 and latency of each first stage + exact rescoring of ``depth`` candidates."""
    rows = []
    k, d = searcher._stage.codebook.size, searcher._stage.projection.shape[1]
    # ours: token centroids alone (candidates == depth: no projection rescoring), then with it
    configs = [(f"centroids (K={k}, nprobe 16)", depth, depth) for depth in depths]
    configs += [(f"centroids (K={k}, nprobe 16) -> {c} rescored on {d}-d projections", c, depth)
                for c, depth in ((4096, 256), (4096, 512), (8192, 512))]
    for label, candidates, depth in configs:
        searcher.nprobe, searcher.candidates, searcher.depth = 16, candidates, depth
        searcher.search_vectors(qs[:3], 10)  # postings built outside the timing
        lat, got = timed(lambda q: searcher.search_vectors([q], 10)[0], qs)
        rows.append({"first_stage": label, "depth": depth, "recall@10": recall_at(got, exact_hits),
                     "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)})
        log(rows[-1])
    # pooled page vectors (mean of the kept vectors)
    t = time.perf_counter()
    pooled = page_matrix(searcher, lambda v: v.mean(axis=0))
    build = time.perf_counter() - t
    for depth in depths:
        lat, got = timed(lambda q: rescore(searcher, q, np.argpartition(-(pooled @ q.sum(axis=0)), depth)[:depth], 10),
                         qs)
        rows.append({"first_stage": "pooled mean vector", "depth": depth, "recall@10": recall_at(got, exact_hits),
                     "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "build_s": build})
        log(rows[-1])
    # MUVERA FDE, brute force over the encodings
    enc = muvera(qs[0].shape[1])
    t = time.perf_counter()
    fde = page_matrix(searcher, lambda v: enc(v, True))
    build = time.perf_counter() - t
    for depth in depths:
        lat, got = timed(lambda q: rescore(searcher, q, np.argpartition(-(fde @ enc(q, False)), depth)[:depth], 10), qs)
        rows.append({"first_stage": f"MUVERA FDE ({fde.shape[1]} dims, brute force)", "depth": depth,
                     "recall@10": recall_at(got, exact_hits), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                     "build_s": build})
        log(rows[-1])
    return rows


def lancedb_multivector(searcher, qs, exact_hits, work: Path, depth: int) -> list[dict]:
    """LanceDB's own multivector IVF_PQ index (cosine) over the same kept vectors (float32): its own
    top 10, and its top ``depth`` rescored exactly like the other first stages."""
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    snap = searcher._snap
    vecs = np.concatenate([b.vectors for b in snap.blocks]).astype(np.float32)
    lengths = np.concatenate([np.diff(np.append(b.starts, len(b.vectors))) for b in snap.blocks])
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    col = pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)),
                                                                              vecs.shape[1]))
    db = lancedb.connect(str(work / "lancedb-mv"))
    table = db.create_table("pages", pa.table({"idx": np.arange(snap.n_pages), "vectors": col}), mode="overwrite")
    t = time.perf_counter()
    table.create_index("vectors", config=IvfPq(distance_type="cosine"))
    build = time.perf_counter() - t

    def top(q, n):
        return np.asarray(table.search(q, vector_column_name="vectors").limit(n).select(["idx"])
                          .to_arrow()["idx"].to_numpy())

    def named(idx):
        paths, pages = snap.names(np.asarray(idx))
        return set(zip(paths.tolist(), pages.tolist()))

    top(qs[0], 10)
    lat, got = timed(lambda q: top(q, 10), qs)
    want = [{(h.path, h.page) for h in w[:10]} for w in exact_hits]
    rows = [{"first_stage": "LanceDB multivector IVF_PQ (its own top 10, no rescoring)", "depth": "-",
             "recall@10": float(np.mean([len(named(g) & w) / 10 for g, w in zip(got, want)])),
             "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "build_s": build}]
    lat, got = timed(lambda q: rescore(searcher, q, top(q, depth), 10), qs)
    rows.append({"first_stage": "LanceDB multivector IVF_PQ", "depth": depth, "recall@10": recall_at(got, exact_hits),
                 "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "build_s": build})
    shutil.rmtree(work / "lancedb-mv", ignore_errors=True)
    return rows


# ------------------------------------------------------------------ through the service

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
                raise RuntimeError(proc.stderr.read())
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
            out[clients] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "qps": len(texts) / wall}
        status = Path(f"/proc/{proc.pid}/status").read_text()
        out["rss_gb"] = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) / 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def spinning_line(path: Path, texts) -> None:
    """Query encoding + search in one process, ORT's intra-op threads spinning (its default) or not."""
    from sapindex.index.store import Index
    from sapindex.runtime.encoder import Encoder
    from sapindex.search import Searcher

    p50 = {}
    for spinning in (True, False):
        idx = Index.open(path)
        with Searcher(idx, Encoder(Searcher.open(path).encoder.bundle, graphs=("text",), spinning=spinning)) as s:
            s.search(texts[0], k=10)
            lat, _ = timed(lambda t: s.search(t, k=10), texts[:60])
            p50[spinning] = pct(lat, 50)
    print(f"Query encoding + search in one process ({path.name}, default settings), p50: ONNX Runtime threads "
          f"spinning (its default) {p50[True]:.1f} ms, not spinning (what the searcher uses) {p50[False]:.1f} ms.\n")


def serve_table(path: Path, texts, clients) -> None:
    from sapindex.search.searcher import CANDIDATES, DEPTH, NPROBE, TWO_STAGE_MIN_PAGES

    spinning_line(path, texts)

    print(f"Through `sapindex serve` {path.name} (HTTP, the micro bundle encodes each query; defaults: two-stage "
          f"from {TWO_STAGE_MIN_PAGES} pages, nprobe {NPROBE}, {CANDIDATES} rescored on projections, {DEPTH} "
          "exactly):\n")
    print("| search | clients | p50 ms | p99 ms | queries/s | server load s | server peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for exact in (False, True):
        s = serve_latency(path, texts if not exact else texts[:40], clients, exact)
        for c in clients:
            print(f"| {'exact' if exact else 'default'} | {c} | {s[c]['p50_ms']:.1f} | {s[c]['p99_ms']:.1f} | "
                  f"{s[c]['qps']:.1f} | {s['load_s']:.1f} | {s['rss_gb']:.2f} |")
    print()
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scales", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--source-pages", type=int, default=300)
    ap.add_argument("--depths", default="512,1024,2048")
    ap.add_argument("--lancedb-at", type=int, default=10000, help="scale to build LanceDB's index at (0: skip)")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sapindex-two-stage"))
    ap.add_argument("--serve-only", action="store_true",
                    help="only the service table, on indexes and first stages an earlier run left in --work")
    args = ap.parse_args()
    from sapindex import sap
    from sapindex.search import Searcher
    from sapindex.search import first_stage as fs

    args.work.mkdir(parents=True, exist_ok=True)
    src = source_data(args.work, args.source_pages, args.queries)
    qs = [np.asarray(q, np.float32) for q in src["queries"]][:args.queries]
    texts = [str(t) for t in src["texts"]][:args.queries]
    depths = [int(d) for d in args.depths.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    mean_kept = np.mean([len(v) for v in src["kept"]])
    mean_full = np.mean([len(v) for v in src["full"]])
    print(f"# Two-stage search: {platform.machine()} {os.cpu_count()} cores, numpy {np.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; {len(qs)} real queries, {args.source_pages} source pages "
          f"({mean_kept:.0f} kept of {mean_full:.0f} vectors per page at keep 0.1)\n")
    for n in [int(s) for s in args.scales.split(",")]:
        path = args.work / f"idx-{n}"
        if not (path / "sapindex.json").exists():
            log(f"building {n} pages")
            build_s = build_index(path, src["kept"], n)
        else:
            build_s = float("nan")
        if args.serve_only:
            serve_table(path, texts, clients)
            continue
        for old in list(path.glob("first_stage*")):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        searcher = Searcher.open(path)
        lat, exact_hits = timed(lambda q: searcher.search_vectors([q], 10, exact=True)[0], qs)
        exact_row = {"first_stage": "none (exact scan)", "depth": "all", "recall@10": 1.0, "p50_ms": pct(lat, 50),
                     "p99_ms": pct(lat, 99)}
        from sapindex.index.store import Index

        with Index.open_writer(path) as w:
            info = fs.build(w)
        searcher.close()
        searcher = Searcher.open(path, two_stage_min_pages=0)
        rows = [exact_row, *first_stage_table(searcher, qs, exact_hits, depths, n, args.work)]
        if n == args.lancedb_at:
            rows.extend(lancedb_multivector(searcher, qs, exact_hits, args.work, 1024))
            log(rows[-2:])
        stage_bytes = dir_bytes(path / info["dir"])
        print(f"## {n:,} pages ({searcher._snap.n_vectors:,} kept vectors)\n")
        print(f"index {dir_bytes(path) / 1e9:.2f} GB on disk (first stage {stage_bytes / 1e6:.0f} MB of it), "
              f"written in {build_s:.0f} s; `optimize` (K={info['n_centroids']}, {info['projection_dims']}-d "
              f"projections keeping {info['projection_variance']:.1%} of the variance) {info['seconds']:.1f} s\n")
        print("| first stage | rescored | recall@10 vs exact | p50 ms | p99 ms | first-stage build s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            b = f"{r['build_s']:.1f}" if "build_s" in r else "-"
            print(f"| {r['first_stage']} | {r['depth']} | {r['recall@10']:.4f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {b} |")
        searcher.close()
        print()
        sys.stdout.flush()
        serve_table(path, texts, clients)
    if args.serve_only:
        return
    # pruned vs full MaxSim, one exact scan's kernel over the same pages
    n = min(int(s) for s in args.scales.split(","))
    rng = np.random.default_rng(0)
    pick = rng.integers(len(src["kept"]), size=min(n, 2000))
    for label, key in (("kept (keep 0.1)", "kept"), ("full", "full")):
        pages = [np.asarray(src[key][i], np.float32) for i in pick]
        vecs = np.concatenate(pages)
        starts = np.concatenate([[0], np.cumsum([len(p) for p in pages])[:-1]]).astype(np.int64)
        lat, _ = timed(lambda q: sap.maxsim_segments(q, np.zeros(1, np.int64), vecs, starts), qs[:50])
        if key == "kept":
            kept_ms = pct(lat, 50)
        else:
            full_ms = pct(lat, 50)
    print(f"Pruned vs full MaxSim over {len(pick)} pages: {kept_ms:.1f} ms vs {full_ms:.1f} ms per query, "
          f"**{full_ms / kept_ms:.1f}x** (the paper reports 7.9x at keep 0.10).")


if __name__ == "__main__":
    main()
