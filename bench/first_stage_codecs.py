"""Choosing the first stage's codec by measurement: faiss's IVF quantisers against a numpy
PLAID-style stage (k-means centroids + 2-bit residual per dimension, decompressed for the probed
lists) on the same pages, queries and candidate rule.

Every variant retrieves each query token's ``kprime`` best vectors from ``nprobe`` lists, ranks pages
by ``compressed.estimate_top`` and rescores the best ``depth`` exactly; recall@10 is against the exact
MaxSim ranking. Reported: bytes a vector (the index file over the vectors), build time, the time to
produce the candidates (p50, one query of 20 tokens), recall@10.

Usage: python bench/first_stage_codecs.py [--pages 20000] [--dist spread,micro] [--real-queries] [--pq-only]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import source_data

RESIDUAL = " by residual"  # fast-scan PQ codes the raw vector unless told to code its residual to the list's centroid


def data(dist: str, n: int, work: Path, real_queries: bool):
    """(pages, queries): ``queries_near`` (20 tokens near one page's), or for ``micro`` with
    ``real_queries`` the benchmark's queries encoded by the micro bundle (far flatter scores)."""
    from sapindex.benchdata import token_vectors as tv

    if dist == "spread":
        pages = list(tv.spread_pages(n, seed=7))
        return pages, tv.queries_near(pages, 100, seed=3)
    src = source_data(work, 300, 100)
    pages = list(tv.resampled_pages([np.asarray(v, np.float32) for v in src["kept"]], n, seed=7))
    return pages, ([np.asarray(q, np.float32) for q in src["queries"]] if real_queries
                   else tv.queries_near(pages, 100, seed=3))


class NumpyPlaid:
    """Centroids (faiss k-means, the same training as IVF) + 2-bit residuals with per-dimension
    bucket cut-offs at the residuals' quartiles and bucket means as their values (PLAID)."""

    def __init__(self, vecs: np.ndarray, n_lists: int, train: np.ndarray):
        import faiss

        km = faiss.Kmeans(vecs.shape[1], n_lists, niter=20, seed=0, spherical=True)
        km.train(train)
        self.centroids = km.centroids
        _, assign = km.index.search(vecs, 1)
        self.codes = assign[:, 0].astype(np.int32)
        res = vecs - self.centroids[self.codes]
        cuts = np.quantile(res[:200000], [0.25, 0.5, 0.75], axis=0)  # [3, dim]
        buckets = (res[:, None, :] > cuts[None]).sum(1).astype(np.uint8)  # [n, dim] in 0..3
        sample, sb = res[:200000], buckets[:200000]
        self.values = np.stack([(sample * (sb == b)).sum(0) / np.maximum((sb == b).sum(0), 1)
                                for b in range(4)]).astype(np.float32)  # [4, dim] bucket means
        packed = buckets.reshape(len(vecs), -1, 4)
        self.packed = (packed[..., 0] | packed[..., 1] << 2 | packed[..., 2] << 4 | packed[..., 3] << 6)
        order = np.argsort(self.codes, kind="stable")
        self.order = order
        self.starts = np.searchsorted(self.codes[order], np.arange(n_lists + 1))
        self.nbytes = self.packed.nbytes + 4 * len(vecs) + self.centroids.nbytes  # codes + ids (int32)

    def search(self, q: np.ndarray, k: int, nprobe: int):
        cs = q @ self.centroids.T
        top = np.argpartition(-cs, nprobe, axis=1)[:, :nprobe]
        d_out = np.full((len(q), k), -np.inf, np.float32)
        i_out = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            ids = np.concatenate([self.order[self.starts[c]:self.starts[c + 1]] for c in top[r]])
            b = self.packed[ids]
            unpacked = np.stack([b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6], -1).reshape(len(ids), -1)
            res = self.values[unpacked, np.arange(unpacked.shape[1])]
            s = cs[r, self.codes[ids]] + res @ q[r]
            kk = min(k, len(s))
            best = np.argpartition(-s, kk - 1)[:kk]
            d_out[r, :kk], i_out[r, :kk] = s[best], ids[best]
        return d_out, i_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20000)
    ap.add_argument("--dist", default="spread,micro")
    ap.add_argument("--work", type=Path, default=Path("/work/bench-m"))
    ap.add_argument("--real-queries", action="store_true", help="micro: the encoded benchmark queries")
    ap.add_argument("--pq-only", action="store_true", help="only the PQ variants, raw and by residual")
    args = ap.parse_args()
    import faiss

    from sapindex.search import compressed
    from sapindex.search.first_stage import n_lists_for

    print(f"# First-stage codecs: {os.uname().machine} {os.cpu_count()} cores, faiss {faiss.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; {args.pages} pages, 100 queries of 20 tokens, nprobe 32, kprime 1024, "
          "depth 256\n")
    for dist in args.dist.split(","):
        pages, qs = data(dist, args.pages, args.work, args.real_queries)
        vecs = np.concatenate(pages)
        lens = np.array([len(p) for p in pages])
        offs = np.concatenate([[0], np.cumsum(lens)])
        owner = np.repeat(np.arange(len(pages)), lens)
        n_lists = n_lists_for(len(vecs))
        train = vecs[np.random.default_rng(0).choice(len(vecs), min(len(vecs), 64 * n_lists), replace=False)]

        def exact(q, cand, vecs=vecs, offs=offs):
            return np.array([(q @ vecs[offs[p]:offs[p + 1]].T).max(1).sum() for p in cand])

        truth = [set(np.argsort(-exact(q, range(len(pages))))[:10]) for q in qs]
        real = ", real queries" if args.real_queries and dist == "micro" else ""
        print(f"## {dist}{real}: {len(pages)} pages, {len(vecs)} vectors, {n_lists} lists\n")
        print("| codec | bytes a vector | build s | candidates p50 ms | recall@10 |")
        print("|---|---|---|---|---|")
        variants = [f"faiss IVF{n_lists}_HNSW32,PQ{m}x4fs{r}" for m in (32, 64) for r in ("", RESIDUAL)]
        if not args.pq_only:
            variants += [f"faiss IVF{n_lists}_HNSW32,RaBitQ", f"faiss IVF{n_lists}_HNSW32,SQ4",
                         "numpy centroids + 2-bit residuals (PLAID)"]
        for name in variants:
            t = time.perf_counter()
            if name.startswith("faiss"):
                index = faiss.index_factory(vecs.shape[1], name.split(" ")[1], faiss.METRIC_INNER_PRODUCT)
                if "x4fs" in name:
                    index.by_residual = name.endswith(RESIDUAL)
                index.train(train)
                index.add(vecs)
                with tempfile.NamedTemporaryFile() as f:
                    faiss.write_index(index, f.name)
                    nbytes = os.path.getsize(f.name)
                params = faiss.SearchParametersIVF(nprobe=32)

                def search(q, index=index, params=params):
                    return index.search(q, 1024, params=params)
            else:
                index = NumpyPlaid(vecs, n_lists, train)
                nbytes = index.nbytes

                def search(q, index=index):
                    return index.search(q, 1024, 32)
            build = time.perf_counter() - t
            lat, rec = [], []
            for q, want in zip(qs, truth, strict=True):
                t = time.perf_counter()
                d, i = search(q)
                cand = compressed.estimate_top(d, np.where(i >= 0, owner[np.maximum(i, 0)], -1), 256, None,
                                               len(pages))
                lat.append(time.perf_counter() - t)
                got = cand[np.argsort(-exact(q, cand))[:10]]
                rec.append(len(set(got) & want) / 10)
            print(f"| {name} | {nbytes / len(vecs):.1f} | {build:.1f} | {np.median(lat) * 1e3:.1f} | "
                  f"{np.mean(rec):.3f} |", flush=True)
        print()


if __name__ == "__main__":
    main()
