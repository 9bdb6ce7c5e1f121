"""``sapindex eval``: what pruning costs, on a dataset with known relevant pages, torch-free.

One encoding pass per page serves every method and ratio: the bundle's text graph returns the
final vectors, the SAP window centrality and the final layer's EOS attention row. Encodings are
cached in ``OUT/cache`` chunk by chunk (atomic writes), so an interrupted eval resumes where it
stopped. Every method is query-agnostic and compresses each page to ``keep_count(n, ratio)``
vectors (adaptive-eos: the same count on average over the pages); scores are exact MaxSim.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sapindex import __version__
from sapindex.errors import SapIndexError
from sapindex.eval import baselines
from sapindex.runtime.bundle import Bundle
from sapindex.eval.datasets import EvalDataset, load_dataset
from sapindex.runtime.encoder import Encoder, PageTokens, check_position_correction, prune
from sapindex.runtime.layout import TokenLayout
from sapindex.eval.metrics import maxsim_matrix, retrieval_metrics

METHODS = ("full", "sap", "sap-poscorr", "random", "eos", "adaptive-eos", "pooling", "cluster")
RANDOM_SEEDS = 5
HEADLINE = "ndcg@5"


@dataclass
class EvalConfig:
    bundle: str
    dataset: str
    out: str
    keep_ratios: tuple[float, ...] = (0.2, 0.1, 0.05)
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
    """``methods``, or by default all of :data:`METHODS` that apply: ``sap-poscorr`` only on causal
    bundles. Asking for ``sap-poscorr`` on a prefix-LM bundle is refused (no causal bias to correct)."""
    if methods is None:
        return tuple(m for m in METHODS if m != "sap-poscorr" or bundle.attention == "causal")
    if "sap-poscorr" in methods:
        check_position_correction(bundle)
    return tuple(methods)


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise SapIndexError(f"--keep-ratios {text!r}: expected comma-separated numbers like 0.2,0.1,0.05") from None
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise SapIndexError(f"--keep-ratios {text!r}: every ratio must be in (0, 1]")
    return ratios


class EncodingCache:
    """Page encodings on disk, one ``.npz`` per encoded batch, keyed by page id."""

    def __init__(self, directory: Path, bundle: Bundle, dataset: EvalDataset):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        key = {"bundle": bundle.fingerprint, "dataset": dataset.fingerprint}
        meta = self.dir / "meta.json"
        if meta.exists() and json.loads(meta.read_text()) != key:
            for stale in self.dir.glob("chunk-*.npz"):
                stale.unlink()
        meta.write_text(json.dumps(key))

    def load(self) -> dict[str, PageTokens]:
        pages: dict[str, PageTokens] = {}
        for chunk in sorted(self.dir.glob("chunk-*.npz")):
            with np.load(chunk, allow_pickle=False) as data:
                offsets = data["offsets"]
                for i, page_id in enumerate(data["ids"]):
                    a, b = offsets[i], offsets[i + 1]
                    pages[str(page_id)] = PageTokens(data["embeddings"][a:b], data["centrality"][a:b],
                                                      _cached_layout(data, i, a, b), data["eos"][a:b])
        return pages

    def save(self, ids: list[str], pages: list[PageTokens]) -> None:
        offsets = np.concatenate([[0], np.cumsum([p.n_visual for p in pages])])
        n = len(list(self.dir.glob("chunk-*.npz")))
        tmp = self.dir / f".chunk-{n:06d}.tmp.npz"
        np.savez(tmp, ids=np.array(ids), offsets=offsets,
                 embeddings=np.concatenate([p.embeddings for p in pages]).astype(np.float32),
                 centrality=np.concatenate([p.centrality for p in pages]).astype(np.float32),
                 eos=np.concatenate([p.eos for p in pages]).astype(np.float32),
                 grids=np.array([p.grid for p in pages], dtype=np.int64),
                 global_grids=np.array([p.layout.global_grid or (0, 0) for p in pages], dtype=np.int64),
                 orders=np.concatenate([p.layout.order for p in pages]))
        os.replace(tmp, self.dir / f"chunk-{n:06d}.npz")


def _cached_layout(data, i: int, a: int, b: int) -> TokenLayout:
    """Page ``i``'s token layout from a cache chunk; chunks written before layouts were cached
    (grid families only then) have no ``orders``: raster order."""
    rows, cols = (int(x) for x in data["grids"][i])
    if "orders" not in data.files:
        return TokenLayout.raster(rows, cols)
    global_grid = tuple(int(x) for x in data["global_grids"][i])
    return TokenLayout((rows, cols), global_grid if global_grid != (0, 0) else None, data["orders"][a:b])


def encode_dataset(encoder: Encoder, dataset: EvalDataset, cache: EncodingCache, batch_size: int,
                   progress: Callable[[int], None] | None = None) -> tuple[dict[str, PageTokens], list[str]]:
    """Every page's encoding (cached ones reused); returns them and the ids of pages that failed."""
    pages = cache.load()
    if progress:
        progress(len(pages))
    failed = []
    todo = [p for p in dataset.pages if p.id not in pages]
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
            pages.update(zip(ids, encoded))
        if progress:
            progress(len(chunk))
    return pages, failed


def compress_all(method: str, pages: list[PageTokens], ratio: float, seed: int, adaptive_k: float | None):
    """Every page compressed by ``method`` at ``ratio``: a list of ``[k, dim]`` arrays."""
    if method == "full":
        return [p.embeddings for p in pages]
    if method in ("sap", "sap-poscorr"):
        return [prune(p, ratio, position_correction=method == "sap-poscorr").vectors for p in pages]
    if method == "random":
        return [baselines.random(p.embeddings, ratio, seed).vectors for p in pages]
    if method == "eos":
        return [baselines.eos(p.embeddings, p.eos, ratio).vectors for p in pages]
    if method == "adaptive-eos":
        return [baselines.adaptive_eos(p.embeddings, p.eos, adaptive_k).vectors for p in pages]
    if method == "pooling":
        return [baselines.pooling(p.embeddings, ratio).vectors for p in pages]
    if method == "cluster":
        return [baselines.cluster(p.embeddings, ratio, seed).vectors for p in pages]
    raise SapIndexError(f"unknown method {method!r}")


def mean_score_retention(scores: np.ndarray, full: np.ndarray, relevant: np.ndarray) -> float:
    """S.Ret: mean MaxSim over relevant (query, page) pairs, pruned / full."""
    denominator = full[relevant].mean()
    return float(scores[relevant].mean() / denominator) if denominator else 1.0


def run_eval(cfg: EvalConfig, progress: Callable[[int], None] | None = None,
             on_total: Callable[[int], None] | None = None) -> dict:
    bundle = Bundle.open(cfg.bundle)
    methods = bundle_methods(bundle, cfg.methods)
    dataset = load_dataset(cfg.dataset)
    encoder = Encoder(bundle, device=cfg.device, threads=cfg.threads)
    out = Path(cfg.out)
    cache = EncodingCache(out / "cache", bundle, dataset)
    if on_total:
        on_total(len(dataset.pages))
    encoded, failed = encode_dataset(encoder, dataset, cache, cfg.batch_size, progress)

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

    full_scores = maxsim_matrix(q_vecs, [p.embeddings for p in pages])
    full_metrics = retrieval_metrics(full_scores, query_ids, page_ids, dataset.qrels)
    held_out = np.random.default_rng(cfg.seed).permutation(len(pages))[: max(1, len(pages) // 2)]
    results: dict[str, dict] = {"full": {"1.0": _cell(full_metrics, full_metrics, 1.0, pages, [p.embeddings for p in pages])}}
    for method in (m for m in methods if m != "full"):
        results[method] = {}
        for ratio in cfg.keep_ratios:
            adaptive_k = (baselines.calibrate_adaptive_eos([pages[i].eos for i in held_out], ratio)
                          if method == "adaptive-eos" else None)
            seeds = range(RANDOM_SEEDS) if method == "random" else [cfg.seed]
            runs = []
            for seed in seeds:
                vectors = compress_all(method, pages, ratio, seed, adaptive_k)
                scores = maxsim_matrix(q_vecs, vectors)
                metrics = retrieval_metrics(scores, query_ids, page_ids, dataset.qrels)
                runs.append(_cell(metrics, full_metrics, mean_score_retention(scores, full_scores, relevant), pages, vectors))
            results[method][f"{ratio:g}"] = _mean_cells(runs) if len(runs) > 1 else runs[0]
            if adaptive_k is not None:
                results[method][f"{ratio:g}"]["adaptive_k"] = adaptive_k
    return {
        "format": "sapindex-eval",
        "version": 1,
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


def write_reports(report: dict, out_dir: str | Path) -> list[Path]:
    """``report.json``, ``report.md`` (rows = methods, columns = ratios) and ``retention.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    md_path = out / "report.md"
    md_path.write_text(markdown_table(report), encoding="utf-8")
    return [json_path, md_path, plot_retention(report, out / "retention.png")]


def markdown_table(report: dict) -> str:
    ratios = [f"{r:g}" for r in report["keep_ratios"]]
    full = report["results"]["full"]["1.0"]["metrics"][HEADLINE]
    ds = report["dataset"]
    lines = [
        f"# sapindex eval: {ds['path']}",
        "",
        f"{ds['queries']} queries, {ds['pages']} pages ({ds['format']}); bundle {report['bundle']['family']} "
        f"window {report['bundle']['window']}; cells: NDCG@5 (retention % of full), S.Ret in brackets.",
        "",
        "| method | " + " | ".join(f"keep {r}" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
        f"| full | {full:.3f} (100.0 %) " + "| " * (len(ratios) - 1) + "|",
    ]
    for method in report["methods"]:
        if method == "full":
            continue
        cells = []
        for r in ratios:
            cell = report["results"][method][r]
            std = f" ± {cell['std'][HEADLINE]:.3f}" if "std" in cell else ""
            cells.append(f"{cell['metrics'][HEADLINE]:.3f}{std} ({100 * cell['retention'][HEADLINE]:.1f} %) "
                         f"[{cell['s_ret']:.3f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    skipped = ", ".join(f"{k}: {v}" for k, v in ds["skipped"].items() if v) or "none"
    lines += ["", f"Skipped rows: {skipped}. Pages that failed to encode: {len(ds['pages_failed_to_encode'])}.", ""]
    return "\n".join(lines)


def plot_retention(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = report["keep_ratios"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method in report["methods"]:
        if method == "full":
            continue
        values = [100 * report["results"][method][f"{r:g}"]["retention"][HEADLINE] for r in ratios]
        ax.plot(ratios, values, marker="o", label=method, linewidth=2.5 if method == "sap" else 1.2)
    ax.axhline(100, color="grey", linestyle=":", label="full index")
    ax.set_xscale("log")
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_xlabel("keep ratio (vectors kept per page)")
    ax.set_ylabel("NDCG@5 retention (%)")
    ax.set_title(f"{report['bundle']['family']} on {Path(report['dataset']['path']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
