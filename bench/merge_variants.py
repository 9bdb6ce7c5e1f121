"""Issue 19: choose the variants of the anchor-merging methods on the TRAIN split (never the test set).

Scores every variant of :mod:`sapindex.compression.merging` (assignment, weights, per-page budget signal) next to
sap, pooling and cluster on a calibration dataset, from an existing ``sapindex eval`` output
directory's encoding cache (the same bundle and dataset), at keep 0.2 / 0.1 / 0.05: NDCG@5, its
retention against the full page, S.Ret, and the compression time per page. Prints a markdown table.

    python -m sapindex.benchdata.synthetic --out /tmp/m19/synthetic-calib --split train --pages 150 \\
        --queries 150 --seed 99 --vocab-size 1000 --min-font-px 22
    sapindex eval sapindex/assets/micro-colqwen2.sap /tmp/m19/synthetic-calib --methods full,sap \\
        --out /tmp/m19/eval-calib
    python bench/merge_variants.py sapindex/assets/micro-colqwen2.sap /tmp/m19/synthetic-calib /tmp/m19/eval-calib
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sapindex import compression, sap
from sapindex.compression import cluster, pooling
from sapindex.eval.cache import EncodingCache
from sapindex.eval.datasets import load_dataset
from sapindex.eval.metrics import maxsim_matrix, retrieval_metrics
from sapindex.eval.runner import mean_score_retention
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.encoder import Encoder

RATIOS = (0.2, 0.1, 0.05)


def coords(p):
    return compression.grid_coordinates(p.n_visual, p.grid, p.layout.global_grid)


def per_page(fn):
    """A variant that compresses each page on its own at a fixed ratio."""
    return lambda pages, r: [fn(p, sap.keep_count(p.n_visual, r)) for p in pages]


def coverage_curve(p, stat):
    """Entry ``k - 1``: the mean (or max) cosine distance of a token to its most similar of SAP's top ``k``."""
    v = p.embeddings.astype(np.float64)
    order = np.lexsort((np.arange(p.n_visual), -p.centrality.astype(np.float64)))
    best = np.maximum.accumulate(v @ v[order].T, axis=1)
    curve = np.minimum.accumulate(np.clip(1.0 - (best.min(axis=0) if stat == "max" else best.mean(axis=0)), 0, None))
    curve[-1] = 0.0
    return curve


def coverage_counts(curves, t):
    return np.array([int(np.argmax(c <= t)) + 1 for c in curves])


def budgeted(fn, stat):
    """The budget not shipped: one coverage threshold for every page (each keeps SAP anchors until
    its tokens' mean or max cosine distance to them is under it), fitted to the fixed ratio's total."""
    def run(pages, r):
        curves = [coverage_curve(p, stat) for p in pages]
        target = sum(sap.keep_count(p.n_visual, r) for p in pages)
        steps = np.unique(np.concatenate([[0.0], *curves]))
        lo, hi = 0, steps.size - 1  # totals fall along steps: bisect for the target
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if coverage_counts(curves, steps[mid]).sum() >= target else (lo, mid)
        counts = coverage_counts(curves, steps[lo])
        run.counts[r] = counts
        return [fn(p, int(k)) for p, k in zip(pages, counts, strict=True)]
    run.counts = {}
    return run


def spread(fn):
    """The shipped budget (``sap-budget``): the scale fitted on these pages (:func:`compression.calibrate_budget`),
    each page's count from its own effective central tokens (:func:`compression.budget_count`)."""
    def run(pages, r):
        scale = compression.calibrate_budget([p.centrality for p in pages], r)
        counts = np.array([compression.budget_count(p.centrality, scale) for p in pages])
        run.counts[r] = counts
        return [fn(p, int(k)) for p, k in zip(pages, counts, strict=True)]
    run.counts = {}
    return run


def sap_k(p, k):
    return p.embeddings[sap.highest(p.centrality, k)]


def merge(assign="cosine", weights="uniform"):
    return lambda p, k: compression.anchor_merge(p.embeddings, p.centrality, k, assign=assign, weights=weights,
                                             coords=coords(p)).vectors


def kmeans(p, k):
    return compression.central_kmeans(p.embeddings, p.centrality, k).vectors


VARIANTS = {
    "sap": per_page(sap_k),
    "sap-merge cosine, uniform": per_page(merge()),
    "sap-merge cosine, centrality": per_page(merge(weights="centrality")),
    "sap-merge grid, uniform": per_page(merge("grid")),
    "sap-merge grid, centrality": per_page(merge("grid", "centrality")),
    "sap-merge both, uniform": per_page(merge("both")),
    "sap-merge both, centrality": per_page(merge("both", "centrality")),
    "sap-kmeans (centrality-weighted k-means++)": per_page(kmeans),
    "sap-budget (mean coverage), SAP selection": budgeted(sap_k, "mean"),
    "sap-budget (max coverage), SAP selection": budgeted(sap_k, "max"),
    "sap-budget (mean coverage), sap-merge cosine": budgeted(merge(), "mean"),
    "sap-budget (mean coverage), sap-kmeans": budgeted(kmeans, "mean"),
    "sap-budget (effective central tokens), SAP selection": spread(sap_k),
    "sap-budget (max coverage), sap-kmeans": budgeted(kmeans, "max"),
    "sap-budget (effective central tokens), sap-kmeans": spread(kmeans),
    "pooling": lambda pages, r: [pooling(p.embeddings, r).vectors for p in pages],
    "cluster": lambda pages, r: [cluster(p.embeddings, r, 0).vectors for p in pages],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("dataset")
    ap.add_argument("eval_out", help="a `sapindex eval` --out directory whose cache holds this dataset's encodings")
    ap.add_argument("--only", default=None, help="comma-separated substrings of the variants to run")
    args = ap.parse_args()
    bundle = Bundle.open(args.bundle, verify=False)
    ds = load_dataset(args.dataset)
    encoded = EncodingCache(Path(args.eval_out) / "cache", bundle, ds).load()
    ids = [p.id for p in ds.pages if p.id in encoded]
    pages = [encoded[i] for i in ids]
    enc = Encoder(bundle, graphs=("text",))
    queries = [q for q in ds.queries if any(pid in encoded for pid in ds.qrels.get(q.id, {}))]
    qv = []
    for s in range(0, len(queries), 32):
        qv += enc.encode_queries([q.text for q in queries[s:s + 32]])
    qids = [q.id for q in queries]
    relevant = np.array([[ds.qrels[q].get(p, 0) > 0 for p in ids] for q in qids])
    full_scores = maxsim_matrix(qv, [p.embeddings for p in pages])
    full = retrieval_metrics(full_scores, qids, ids, ds.qrels)["ndcg@5"]
    print(f"{args.dataset}: {len(pages)} pages, {len(qids)} queries, full NDCG@5 {full:.3f}")
    print("| variant | " + " | ".join(f"NDCG@5 (ret.) / S.Ret @ {r:g}" for r in RATIOS) + " | ms/page |")
    print("|---|" + "---|" * (len(RATIOS) + 1))
    wanted = args.only.split(",") if args.only else None
    for name, run in VARIANTS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        cells, seconds = [], 0.0
        for r in RATIOS:
            t0 = time.perf_counter()
            vectors = run(pages, r)
            seconds += time.perf_counter() - t0
            scores = maxsim_matrix(qv, vectors)
            m = retrieval_metrics(scores, qids, ids, ds.qrels)["ndcg@5"]
            total = sum(len(v) for v in vectors)
            target = sum(sap.keep_count(p.n_visual, r) for p in pages)
            note = "" if total == target else f" [{total}/{target} vectors]"
            cells.append(f"{m:.3f} ({m / full:.0%}) / {mean_score_retention(scores, full_scores, relevant):.3f}{note}")
        counts = getattr(run, "counts", {})
        for r, c in counts.items():
            cells_note = (f"per-page counts at {r:g}: min {c.min()}, p10 {np.percentile(c, 10):.0f}, median "
                          f"{np.median(c):.0f}, p90 {np.percentile(c, 90):.0f}, max {c.max()}")
            print(f"<!-- {name}: {cells_note} -->")
        print(f"| {name} | " + " | ".join(cells) + f" | {1000 * seconds / (len(RATIOS) * len(pages)):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
