"""`sapindex eval` end to end on a tiny bundle and a generated ViDoRe v2 (BEIR) dataset."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sapindex import compression, sap
from sapindex.eval import runner as ev
from sapindex.eval.cache import EncodingCache
from sapindex.eval.datasets import load_dataset
from sapindex.eval.metrics import maxsim_matrix, retrieval_metrics
from sapindex.runtime.options import IndexOptions
from sapindex.testing.toy_pages import write_pairs

RATIOS = (0.2, 0.1, 0.05)


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    """8 pages, 8 queries in the ViDoRe v2 layout, plus a broken image and a qrel to an unknown page."""
    root = tmp_path_factory.mktemp("beir")
    pairs = write_pairs(root / "src", n=8, seed=21)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    images = [{"bytes": (pairs.parent / r["image"]).read_bytes(), "path": None} for r in rows]
    images.append({"bytes": b"\x89PNG broken", "path": None})
    for part in ("corpus", "queries", "qrels"):
        (root / "ds" / part).mkdir(parents=True)
    pq.write_table(pa.table({"corpus-id": list(range(9)), "image": images}),
                   root / "ds/corpus/test-00000-of-00001.parquet")
    pq.write_table(pa.table({"query-id": list(range(8)), "query": [r["query"] for r in rows]}),
                   root / "ds/queries/test-00000-of-00001.parquet")
    pq.write_table(pa.table({"query-id": list(range(8)) + [3], "corpus-id": list(range(8)) + [42],
                             "score": [1] * 9}), root / "ds/qrels/test-00000-of-00001.parquet")
    return root / "ds"


def test_eval_cli_reports(bundles, beir, tmp_path):
    bundle = bundles["colqwen2"][1]
    out = subprocess.run([sys.executable, "-m", "sapindex.cli", "eval", str(bundle), str(beir), "--out",
                          str(tmp_path / "report"), "--batch-size", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    md = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "retention.png").stat().st_size > 10_000
    assert report["dataset"]["pages"] == 8 and report["dataset"]["queries"] == 8
    assert report["dataset"]["skipped"]["unreadable image"] == 1
    assert report["dataset"]["skipped"]["qrel to unknown page"] == 1
    assert report["bundle"]["fingerprint"] == bundles["colqwen2"][0]["fingerprint"]
    assert report["command"].startswith("sapindex eval")
    methods = compression.METHODS
    assert report["methods"] == [m for m in methods if not methods[m].fast]  # sap-fast: only when asked for
    for method in report["methods"][1:]:
        for ratio in RATIOS:
            cell = report["results"][method][f"{ratio:g}"]
            row = next(line for line in md.splitlines() if line.startswith(f"| {method} |"))
            assert f"{cell['metrics']['ndcg@5']:.3f}" in row  # report.md agrees with report.json
            assert cell["retention"]["ndcg@5"] == pytest.approx(
                cell["metrics"]["ndcg@5"] / report["results"]["full"]["1.0"]["metrics"]["ndcg@5"])
    assert "random" in md and "±" in md
    for ratio in RATIOS:  # the report ends with what to index: the best method an index can store, on this data
        rec = report["recommendation"][f"{ratio:g}"]
        indexable = [m for m in report["methods"]
                     if m in ("sap", "sap-poscorr", "sap-kmeans", "sap-merge", "sap-budget")]
        assert rec["ndcg@5"] == max(report["results"][m][f"{ratio:g}"]["metrics"]["ndcg@5"] for m in indexable)
        assert rec["method"] in indexable and f"--keep-ratio {ratio:g} " in rec["options"]
        assert f"`sapindex index DOCS --out INDEX {rec['options']}`" in md.split("## Recommendation")[1]
    assert "## Recommendation" in out.stdout


def test_recommend_takes_the_best_indexable_method_and_the_default_on_ties():
    from sapindex.eval.report import recommend

    def cells(**by_ratio):
        return {r: {"metrics": {"ndcg@5": v}} for r, v in by_ratio.items()}

    report = {"keep_ratios": [0.1, 0.05], "methods": ["full", "sap", "sap-poscorr", "cluster", "sap-kmeans"],
              "results": {"sap": cells(**{"0.1": 0.7, "0.05": 0.6}),
                          "sap-poscorr": cells(**{"0.1": 0.6, "0.05": 0.65}),
                          "cluster": cells(**{"0.1": 0.9, "0.05": 0.9}),
                          "sap-kmeans": cells(**{"0.1": 0.7, "0.05": 0.5})}}
    rec = recommend(report)
    assert rec["0.1"]["method"] == "sap"  # tied with sap-kmeans: the default
    assert rec["0.1"]["options"] == "--keep-ratio 0.1 --method sap"
    assert rec["0.05"] == {"method": "sap-poscorr", "ndcg@5": 0.65, "default": 0.6,
                           "options": "--keep-ratio 0.05 --method sap --position-correction"}  # cluster: not indexable
    report["methods"] = ["full", "cluster"]
    assert recommend(report) == {}


def test_matched_counts_and_sap_cell_is_a_direct_computation(bundles, beir, tmp_path, monkeypatch):
    cfg = ev.EvalConfig(bundle=str(bundles["colqwen2_5"][1]), dataset=str(beir), out=str(tmp_path / "r"))
    report = ev.run_eval(cfg)
    dataset = load_dataset(beir)
    from sapindex.runtime.bundle import Bundle

    cache = EncodingCache(tmp_path / "r" / "cache", Bundle.open(cfg.bundle), dataset)
    pages = cache.load()
    ids = [p.id for p in dataset.pages if p.id in pages]
    n_visual = [pages[i].n_visual for i in ids]
    for method in ("sap", "sap-poscorr", "random", "eos", "pooling", "cluster", "sap-merge", "sap-kmeans"):
        for ratio in RATIOS:
            expected = sum(sap.keep_count(n, ratio) for n in n_visual)
            assert report["results"][method][f"{ratio:g}"]["vectors"] == expected, (method, ratio)

    for ratio in RATIOS:  # sap-budget: the fixed ratio's total, up to rounding, spread by content
        cell = report["results"]["sap-budget"][f"{ratio:g}"]
        scale = compression.calibrate_budget([pages[i].centrality for i in ids], ratio)
        counts = [compression.budget_count(pages[i].centrality, scale) for i in ids]
        assert cell["budget_scale"] == pytest.approx(scale) and cell["vectors"] == sum(counts)
        assert abs(sum(counts) - sum(sap.keep_count(n, ratio) for n in n_visual)) <= len(ids)
        assert (cell["per_page_vectors"]["min"], cell["per_page_vectors"]["max"]) == (min(counts), max(counts))
    # the SAP cell recomputed from the cached encodings
    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(Bundle.open(cfg.bundle))
    queries = [q for q in dataset.queries]
    q_vecs = encoder.encode_queries([q.text for q in queries])
    scores = maxsim_matrix(q_vecs, [pages[i].embeddings[sap.top_k(pages[i].centrality, 0.1)] for i in ids])
    direct = retrieval_metrics(scores, [q.id for q in queries], ids, dataset.qrels)
    assert report["results"]["sap"]["0.1"]["metrics"]["ndcg@5"] == pytest.approx(direct["ndcg@5"])
    assert report["results"]["full"]["1.0"]["s_ret"] == 1.0

    # a re-run resumes from the cache: no page is encoded again
    calls = []
    monkeypatch.setattr(Encoder, "encode_pages", lambda self, images: calls.append(len(images)))
    again = ev.run_eval(cfg)
    assert calls == [] and again["results"]["sap"] == report["results"]["sap"]


def test_sap_fast_cell_is_the_fast_index_of_the_pages(bundles, beir, tmp_path):
    """``sap-fast``: SAP's kept sets with the vectors ``index --mode fast`` stores, scored like the rest,
    and compared token by token with the exact vectors."""
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder

    cfg = ev.EvalConfig(bundle=str(bundles["colqwen2"][1]), dataset=str(beir), out=str(tmp_path / "r"),
                        methods=("full", "sap", "sap-fast"), keep_ratios=(0.1,), batch_size=3)
    steps = []
    report = ev.run_eval(cfg, progress=lambda done, total: steps.append((done, total)))
    assert steps[-1] == (16, 16)  # the 8 readable pages encoded exactly, then again in fast mode
    cell, sap_cell = report["results"]["sap-fast"]["0.1"], report["results"]["sap"]["0.1"]
    assert cell["vectors"] == sap_cell["vectors"]
    assert cell["cosine_vs_exact"]["kept_sets_differing"] == 0
    assert -1.0 <= cell["cosine_vs_exact"]["min"] <= cell["cosine_vs_exact"]["mean"] <= 1.0
    dataset = load_dataset(beir)
    encoder = Encoder(Bundle.open(cfg.bundle))
    ids = [p.id for p in dataset.pages]
    fast = encoder.encode_pages_pruned([p.load() for p in dataset.pages], IndexOptions(keep_ratio=0.1, mode="fast"))
    queries = list(dataset.queries)
    scores = maxsim_matrix(encoder.encode_queries([q.text for q in queries]), [f.vectors for f in fast])
    direct = retrieval_metrics(scores, [q.id for q in queries], ids, dataset.qrels)
    assert cell["metrics"]["ndcg@5"] == pytest.approx(direct["ndcg@5"])


def test_bad_arguments():
    from sapindex.errors import SapIndexError

    with pytest.raises(SapIndexError, match="unknown method"):
        ev.parse_methods("sap,magic")
    with pytest.raises(SapIndexError, match=r"every ratio must be in \(0, 1\]"):
        ev.parse_ratios("0.1,1.5")


def test_encoding_cache_keeps_token_layouts(tmp_path):
    """Cached pages come back with their layout (a tiled page's sequence ranks drive sap-poscorr);
    chunks written before layouts were cached read as raster grids."""
    from types import SimpleNamespace

    import numpy as np

    from sapindex.runtime.encoder import PageTokens
    from sapindex.runtime.layout import TokenLayout

    key = SimpleNamespace(fingerprint="fp")
    cache = EncodingCache(tmp_path / "cache", key, key)
    rng = np.random.default_rng(0)
    layouts = [TokenLayout.tiled(1, 2, 2), TokenLayout.raster(2, 3)]
    pages = [PageTokens(rng.standard_normal((lay.n_tokens, 4)).astype(np.float32),
                         rng.random(lay.n_tokens).astype(np.float32), lay, rng.random(lay.n_tokens).astype(np.float32))
             for lay in layouts]
    cache.save(["a", "b"], pages)
    loaded = cache.load()
    assert [loaded[i].layout for i in ("a", "b")] == layouts
    np.testing.assert_array_equal(loaded["a"].embeddings, pages[0].embeddings)
    (chunk,) = (tmp_path / "cache").glob("chunk-*.npz")
    with np.load(chunk) as data:
        old = {k: data[k] for k in data.files if k not in ("orders", "global_grids")}
    np.savez(chunk, **old)
    assert cache.load()["b"].layout == TokenLayout.raster(2, 3)
