"""``sapindex eval``: what pruning costs, on a dataset with known relevant pages, torch-free.

One encoding pass per page serves every method and ratio: the bundle's text graph returns the
final vectors, the SAP window centrality and the final layer's EOS attention row. Encodings are
cached in ``OUT/cache`` chunk by chunk (:mod:`sapindex.eval.cache`), so an interrupted eval
resumes where it stopped; ``sap-fast`` alone re-encodes the pages, once per ratio, because its
vectors depend on the kept set (:func:`encode_fast`). Every method (:data:`sapindex.compression.METHODS`) is
query-agnostic and compresses each page to ``keep_count(n, ratio)`` vectors (adaptive-eos: the
same count on average over the pages); scores are exact MaxSim. The report it returns is
described, and written, by :mod:`sapindex.eval.report`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sapindex import __version__, sap
from sapindex.compression import METHODS, Method, calibrate_adaptive_eos, calibrate_budget
from sapindex.errors import SapIndexError
from sapindex.eval.cache import EncodingCache
from sapindex.eval.datasets import EvalDataset, load_dataset
from sapindex.eval.metrics import maxsim_matrix, retrieval_metrics
from sapindex.eval.report import HEADLINE, REPORT_FORMAT, REPORT_VERSION, recommend
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.encoder import Encoder, PageTokens, PrunedPage
from sapindex.runtime.options import IndexOptions, check_fast_mode, check_position_correction


@dataclass
class EvalConfig:
    bundle: str
    dataset: str
    out: str
    keep_ratios: tuple[float, ...] = sap.EVAL_KEEP_RATIOS
    methods: tuple[str, ...] | None = None  # None: every method that applies to the bundle
    batch_size: int = 8
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    command: str = ""


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SapIndexError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return methods


def bundle_methods(bundle: Bundle, methods: tuple[str, ...] | None) -> tuple[str, ...]:
    """``methods``, or by default all of :data:`METHODS` that apply: the ``causal_only`` ones
    (``sap-poscorr``) only on causal bundles; ``sap-fast`` only when asked for (it re-encodes every
    page once per ratio). Asking for a causal-only method on a prefix-LM bundle, or for ``sap-fast``
    on a format-1 bundle, is refused."""
    if methods is None:
        return tuple(m for m in METHODS if not METHODS[m].fast
                     and (not METHODS[m].causal_only or bundle.attention == "causal"))
    if any(METHODS[m].causal_only for m in methods):
        check_position_correction(bundle)
    if any(METHODS[m].fast for m in methods):
        check_fast_mode(bundle)
    return tuple(methods)


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise SapIndexError(f"--keep-ratios {text!r}: expected comma-separated numbers like 0.2,0.1,0.05") from None
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise SapIndexError(f"--keep-ratios {text!r}: every ratio must be in (0, 1]")
    return ratios


def encode_dataset(encoder: Encoder, dataset: EvalDataset, cache: EncodingCache, batch_size: int,
                   progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, PageTokens], list[str]]:
    """Every page's encoding (cached ones reused); returns them and the ids of pages that failed.

    ``progress(pages_done, pages_total)`` at the start (the cached pages count as done) and after
    each batch.
    """
    pages = cache.load()
    failed = []
    todo = [p for p in dataset.pages if p.id not in pages]
    total = len(dataset.pages)
    if progress:
        progress(total - len(todo), total)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        images, ids = [], []
        for page in chunk:
            try:
                images.append(page.load())
                ids.append(page.id)
            except SapIndexError as exc:
                failed.append(f"{page.id}: {exc}")
        if images:
            encoded = encoder.encode_pages(images)
            cache.save(ids, encoded)
            pages.update(zip(ids, encoded, strict=True))
        if progress:
            progress(total - len(todo) + start + len(chunk), total)
    return pages, failed


def encode_fast(encoder: Encoder, dataset: EvalDataset, page_ids: list[str], ratio: float, batch_size: int,
                progress: Callable[[int], None] | None = None) -> list[PrunedPage]:
    """The pages ``page_ids`` as ``index --mode fast --keep-ratio ratio`` stores them (in that order);
    ``progress(pages)`` after each batch."""
    by_id = {p.id: p for p in dataset.pages}
    out = []
    for start in range(0, len(page_ids), batch_size):
        chunk = page_ids[start:start + batch_size]
        out.extend(encoder.encode_pages_pruned([by_id[i].load() for i in chunk],
                                               IndexOptions(keep_ratio=ratio, method="sap", mode="fast")))
        if progress:
            progress(len(chunk))
    return out


def fast_vs_exact(fast: list[PrunedPage], pages: list[PageTokens], ratio: float) -> dict:
    """How far fast-mode vectors are from the exact vectors of the same tokens: the cosine per kept
    token (mean, 1st percentile, min) and the pages whose kept set differs from exact SAP's (none: the
    head is the same)."""
    cosines, differ = [], 0
    for f, page in zip(fast, pages, strict=True):
        exact = METHODS["sap"].compress(page.embeddings, ratio=ratio, centrality=page.centrality)
        differ += not np.array_equal(f.positions, exact.positions)
        cosines.append((f.vectors * page.embeddings[f.positions]).sum(axis=1))
    cosines = np.concatenate(cosines)
    return {"mean": float(cosines.mean()), "p01": float(np.percentile(cosines, 1)), "min": float(cosines.min()),
            "kept_sets_differing": differ}


def compress_pages(method: Method, pages: list[PageTokens], ratio: float, seed: int,
                   fitted: dict[str, float]) -> list[np.ndarray]:
    """Every page compressed by ``method`` at ``ratio``: a list of ``[k, dim]`` arrays; ``fitted``: the
    calibrated parameters (:func:`calibrate`)."""
    return [method.compress(p.embeddings, ratio=ratio, eos=p.eos, centrality=p.centrality,
                            seq_rank=p.layout.seq_rank, seed=seed, **fitted).vectors for p in pages]


def calibrate(method: Method, pages: list[PageTokens], held_out: np.ndarray, ratio: float) -> dict[str, float]:
    """The parameters a calibrated method fits for ``ratio``: Adaptive-EOS's ``k`` on the held-out half
    of the pages (as DocPruner fits it), sap-budget's scale on every page (a corpus budget: the same
    total as the fixed ratio on this corpus). Query-agnostic both."""
    fitted = {}
    if "adaptive_k" in method.needs:
        fitted["adaptive_k"] = calibrate_adaptive_eos([pages[i].eos for i in held_out], ratio)
    if "budget_scale" in method.needs:
        fitted["budget_scale"] = calibrate_budget([p.centrality for p in pages], ratio)
    return fitted


def mean_score_retention(scores: np.ndarray, full: np.ndarray, relevant: np.ndarray) -> float:
    """S.Ret: mean MaxSim over relevant (query, page) pairs, pruned / full."""
    denominator = full[relevant].mean()
    return float(scores[relevant].mean() / denominator) if denominator else 1.0


def run_eval(cfg: EvalConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    bundle = Bundle.open(cfg.bundle)
    methods = bundle_methods(bundle, cfg.methods)
    dataset = load_dataset(cfg.dataset)
    encoder = Encoder(bundle, device=cfg.device, threads=cfg.threads)
    out = Path(cfg.out)
    cache = EncodingCache(out / "cache", bundle, dataset)
    # fast methods re-encode every page once per ratio after the exact pass: one bar for all of it
    fast_passes = len(cfg.keep_ratios) * sum(METHODS[m].fast for m in methods)
    extra = fast_passes * len(dataset.pages)
    encoded, failed = encode_dataset(encoder, dataset, cache, cfg.batch_size,
                                     progress and (lambda done, total: progress(done, total + extra)))
    reached = len(dataset.pages)

    page_ids = [p.id for p in dataset.pages if p.id in encoded]
    pages = [encoded[i] for i in page_ids]
    known = set(page_ids)
    queries = [q for q in dataset.queries if any(pid in known for pid in dataset.qrels.get(q.id, {}))]
    if not queries or not pages:
        raise SapIndexError(f"{cfg.dataset}: no query with a relevant page could be evaluated")
    query_ids = [q.id for q in queries]
    q_vecs = []
    for start in range(0, len(queries), 32):
        q_vecs.extend(encoder.encode_queries([q.text for q in queries[start:start + 32]]))
    relevant = np.array([[dataset.qrels[q].get(p, 0) > 0 for p in page_ids] for q in query_ids])  # [Q, D]

    full_vectors = compress_pages(METHODS["full"], pages, 1.0, cfg.seed, {})
    full_scores = maxsim_matrix(q_vecs, full_vectors)
    full_metrics = retrieval_metrics(full_scores, query_ids, page_ids, dataset.qrels)
    held_out = np.random.default_rng(cfg.seed).permutation(len(pages))[: max(1, len(pages) // 2)]
    results: dict[str, dict] = {"full": {"1.0": _cell(full_metrics, full_metrics, 1.0, pages, full_vectors)}}
    for name in (m for m in methods if m != "full"):
        method = METHODS[name]
        results[name] = {}
        for ratio in cfg.keep_ratios:
            fitted = calibrate(method, pages, held_out, ratio)
            seeds = method.seeds if len(method.seeds) > 1 else (cfg.seed,)  # one run: the eval's seed
            runs = []
            for seed in seeds:
                if method.fast:
                    def step(n: int) -> None:
                        nonlocal reached
                        reached += n
                        if progress:
                            progress(reached, len(dataset.pages) + extra)

                    fast = encode_fast(encoder, dataset, page_ids, ratio, cfg.batch_size, step)
                    vectors = [f.vectors for f in fast]
                else:
                    vectors = compress_pages(method, pages, ratio, seed, fitted)
                scores = maxsim_matrix(q_vecs, vectors)
                metrics = retrieval_metrics(scores, query_ids, page_ids, dataset.qrels)
                sret = mean_score_retention(scores, full_scores, relevant)
                runs.append(_cell(metrics, full_metrics, sret, pages, vectors))
                if method.fast:
                    runs[-1]["cosine_vs_exact"] = fast_vs_exact(fast, pages, ratio)
            results[name][f"{ratio:g}"] = _mean_cells(runs) if len(runs) > 1 else runs[0]
            results[name][f"{ratio:g}"].update(fitted)
            if not method.matched:
                results[name][f"{ratio:g}"]["per_page_vectors"] = _spread(vectors)
    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "sapindex_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "bundle": {"path": str(bundle.path), "fingerprint": bundle.fingerprint, "family": bundle.family,
                   "window": list(bundle.window)},
        "dataset": {"path": cfg.dataset, "format": dataset.format, "fingerprint": dataset.fingerprint,
                    "pages": len(page_ids), "queries": len(query_ids),
                    "skipped": {k: len(v) for k, v in dataset.skipped.items()},
                    "skipped_examples": {k: v[:5] for k, v in dataset.skipped.items() if v},
                    "pages_failed_to_encode": failed},
        "keep_ratios": list(cfg.keep_ratios),
        "methods": list(methods),
        "headline": HEADLINE,
        "results": results,
    }
    report["recommendation"] = recommend(report)
    return report


def _cell(metrics: dict, full: dict, sret: float, pages: list[PageTokens], vectors) -> dict:
    means = {k: float(v) for k, v in metrics.items() if "@" in k}  # ndcg@5, recall@1, mrr@10, ...
    kept = sum(len(v) for v in vectors)
    total = sum(p.n_visual for p in pages)
    return {
        "metrics": means,
        "retention": {k: (means[k] / full[k] if full.get(k) else None) for k in means},
        "s_ret": sret,
        "vectors": kept,
        "vector_fraction": kept / total,
    }


def _spread(vectors) -> dict:
    """The distribution of per-page vector counts (methods whose counts vary from page to page)."""
    counts = np.array([len(v) for v in vectors])
    return {"min": int(counts.min()), "p10": float(np.percentile(counts, 10)), "median": float(np.median(counts)),
            "p90": float(np.percentile(counts, 90)), "max": int(counts.max())}


def _mean_cells(runs: list[dict]) -> dict:
    """Mean of several seeds, with the std of the headline metric."""
    out = {"metrics": {}, "retention": {}, "seeds": len(runs)}
    for key in runs[0]["metrics"]:
        out["metrics"][key] = float(np.mean([r["metrics"][key] for r in runs]))
        vals = [r["retention"][key] for r in runs if r["retention"][key] is not None]
        out["retention"][key] = float(np.mean(vals)) if vals else None
    out["std"] = {HEADLINE: float(np.std([r["metrics"][HEADLINE] for r in runs]))}
    for key in ("s_ret", "vectors", "vector_fraction"):
        out[key] = float(np.mean([r[key] for r in runs]))
    return out
