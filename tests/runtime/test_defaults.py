"""The built-in micro retriever: shipped files, its demo, export -> index -> search on its config.

The micro model was trained by ``python -m sapindex.micro.train`` (see docs/concepts/micro-model.md); these
tests use held-out pages it never saw (synthetic test split, their own seed). They check the
mechanics on a real trained checkpoint and that search finds the page a query was read off;
retrieval quality over hundreds of pages is a benchmark (bench/RESULTS.md).
"""

import io
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sapindex.fingerprint import model_fingerprint
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, default_weights_path, example_pages, example_queries

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sapindex.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd)


def test_shipped_bundle_verifies_and_comes_from_the_shipped_weights():
    bundle = Bundle.open(default_bundle_path())  # checks every file's sha256
    assert bundle.family == "colqwen2"
    assert bundle.manifest["source_model"]["fingerprint"] == model_fingerprint(default_weights_path())["sha256"]
    assert bundle.manifest["validation"]["max_abs_diff_embeddings"] <= 1e-4
    weights = default_weights_path() / "model.safetensors"
    assert weights.stat().st_size <= 25_000_000
    window = json.loads((default_weights_path() / "calibration.json").read_text())["window"]
    assert bundle.manifest["window"] == [window["start"], window["end"]] and window["width"] >= 1  # shipped together


def test_demo_answers_every_example_query_and_draws_the_kept_patches(tmp_path):
    out = cli("demo", "--out", tmp_path / "demo")
    assert out.returncode == 0, out.stderr
    examples = example_queries()
    assert len(example_pages()) == len(examples) == 8
    assert out.stdout.count("query      ") == len(examples)
    ranked = [line for line in out.stdout.splitlines() if line.startswith("  ") and line.strip()[0] in "123"]
    assert len(ranked) == 3 * len(examples)
    of_all_queries = f"of {len(examples)} queries"
    assert any(line.startswith("top-1      ") and of_all_queries in line for line in out.stdout.splitlines())
    with Image.open(tmp_path / "demo" / "kept-patches.png") as picture:
        assert max(picture.size) > 300


@pytest.fixture(scope="module")
def held_out_docs(tmp_path_factory):
    """Six unseen pages: two PNG, one JPEG, and three in one PDF; 24 queries read off them."""
    from sapindex.benchdata.synthetic import build_benchmark

    root = tmp_path_factory.mktemp("docs")
    build_benchmark(root / "set", 6, 24, seed=31337, vocab_size=1000, min_font_px=22, workers=1)
    corpus = pq.read_table(root / "set" / "corpus" / "test-00000-of-00001.parquet").to_pylist()
    queries = pq.read_table(root / "set" / "queries" / "test-00000-of-00001.parquet").to_pylist()
    qrels = {r["query-id"]: r["corpus-id"] for r in
             pq.read_table(root / "set" / "qrels" / "test-00000-of-00001.parquet").to_pylist()}
    images = [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in corpus]
    docs = root / "in"
    docs.mkdir()
    where = {}
    for i, name in enumerate(["a.png", "b.png", "c.jpg"]):
        images[i].save(docs / name, quality=95)
        where[corpus[i]["corpus-id"]] = (str(docs / name), 1)
    images[3].save(docs / "d.pdf", save_all=True, append_images=images[4:6], resolution=72)
    for i in range(3, 6):
        where[corpus[i]["corpus-id"]] = (str(docs / "d.pdf"), i - 2)
    return docs, [(q["query"], where[qrels[q["query-id"]]]) for q in queries]


def ranks_of_the_source_pages(index_dir, cases) -> list[int]:
    """For each (query, (path, page)) case, the rank ``sapindex search`` gives that page (1 = first)."""
    ranks = []
    for text, where in cases:
        out = cli("search", index_dir, text, "-k", 6, "--json")
        assert out.returncode == 0, out.stderr
        ranks.append([(hit["path"], hit["page"]) for hit in json.loads(out.stdout)].index(where) + 1)
    return ranks


@pytest.mark.slow
def test_search_finds_the_page_each_query_came_from(held_out_docs, tmp_path):
    """PDFs and images -> index (built-in model) -> search ranks the query's own page first
    for at least half of 24 queries on 6 unseen pages (chance: 1 in 6 each)."""
    docs, cases = held_out_docs
    out = cli("index", docs, "--out", tmp_path / "idx", "--dpi", 72, "--json")
    assert out.returncode == 0, out.stderr
    ranks = ranks_of_the_source_pages(tmp_path / "idx", cases)
    assert sum(rank == 1 for rank in ranks) >= len(ranks) // 2, ranks  # measured: 16 of 24


@pytest.mark.slow
def test_export_of_the_shipped_weights_indexes_pdfs_and_images(held_out_docs, tmp_path):
    """Generated PDFs and images -> export (the micro model's own config and word-level tokenizer,
    not the tiny models') -> index -> search: validated parity, every page indexed once, each
    query's results are exact MaxSim over the stored vectors, and the page it came from ranks first."""

    from sapindex.index.store import Index
    from sapindex.runtime.encoder import Encoder

    docs, cases = held_out_docs
    bundle = tmp_path / "micro.sap"
    out = cli("export", "--model", default_weights_path(), "--calibration",
              default_weights_path() / "calibration.json", "--out", bundle, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["validation"]["max_abs_diff_embeddings"] <= 1e-4
    out = cli("index", bundle, docs, "--out", tmp_path / "idx", "--dpi", 72, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pages_indexed"] == 6
    with Index.open(tmp_path / "idx") as index:
        rows = {(r["path"], int(r["page"])): r["vectors"] for r in index.iter_rows()}
    assert set(rows) == {where for _, where in cases}
    encoder = Encoder(Bundle.open(bundle))
    first = 0
    for text, where in cases:
        hits = json.loads(cli("search", tmp_path / "idx", text, "-k", 6, "--json").stdout)
        q = encoder.encode_queries([text])[0]
        for hit in hits:
            want = float((q @ rows[(hit["path"], hit["page"])].T).max(1).sum())
            assert abs(hit["score"] - want) < 1e-3 * max(1.0, abs(want))
        first += (hits[0]["path"], hits[0]["page"]) == where
    assert first >= len(cases) // 2


def test_index_and_search_without_a_bundle_use_the_builtin_model(tmp_path):
    from sapindex.index.store import Index
    from sapindex.testing.toy_pages import write_pairs

    write_pairs(tmp_path / "docs", n=2, seed=5)
    out = cli("index", tmp_path / "docs" / "pages", "--out", tmp_path / "idx", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pages_indexed"] == 2
    with Index.open(tmp_path / "idx") as index:
        assert index.meta["builtin"] is True
        assert index.bundle_fingerprint == Bundle.open(default_bundle_path(), verify=False).fingerprint
    hits = json.loads(cli("search", tmp_path / "idx", "total revenue", "--json").stdout)
    assert len(hits) == 2
    # a bundle directory given first is the bundle, not an input
    out = cli("index", default_bundle_path(), tmp_path / "docs" / "pages", "--out", tmp_path / "idx2", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["pages_indexed"] == 2, out.stderr


def test_only_a_sapindex_manifest_makes_a_bundle_directory(tmp_path):
    from sapindex.runtime.bundle import is_bundle_dir

    assert is_bundle_dir(default_bundle_path())
    (tmp_path / "manifest.json").write_text('{"format": "something-else", "format_version": 1}')
    assert not is_bundle_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert not is_bundle_dir(tmp_path)
    assert not is_bundle_dir(tmp_path / "absent")
