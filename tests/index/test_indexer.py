"""The indexing run and search through the Python API, on the built-in micro model (no torch)."""

import json

import pytest

from sapindex.errors import SapIndexError
from sapindex.index.indexer import default_batch_size, run_index
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.search import Searcher


def test_search_loads_only_the_text_graph(tmp_path):
    """A searcher encodes queries with the text graphs (head and tail) alone: the vision graph (gigabytes at real
    size) is never loaded, and pages can still be encoded later, loading it on first use."""
    pages = example_pages()[:2]
    summary = run_index(default_bundle_path(), [str(p) for p in pages], tmp_path / "idx")
    assert summary.pages_indexed == 2
    with Searcher.open(tmp_path / "idx") as searcher:
        hits = searcher.search("annual report", k=2)
        encoder = searcher.encoder
    assert len(hits) == 2
    assert encoder.sessions.loaded() == ["head", "tail"]
    from PIL import Image

    with Image.open(pages[0]) as image:
        encoder.encode_pages([image.convert("RGB")])
    assert encoder.sessions.loaded() == ["head", "tail", "vision"]


def test_real_size_bundles_index_one_page_per_call_on_a_cpu(tmp_path):
    """A real-size page takes tens of seconds on a CPU: the default batch is one page there, so the
    bar moves per page; small bundles and GPUs keep batches of 8 (few commits, less call overhead)."""
    small = Bundle(tmp_path, {"files": {"text.onnx.data": {"size": 24_000_000}, "vision.onnx.data": {"size": 9}}})
    large = Bundle(tmp_path, {"files": {"text.onnx.data": {"size": 5_000_000_000},
                                        "vision.onnx.data": {"size": 2_400_000_000}}})
    assert default_batch_size(small, "cpu") == 8 and default_batch_size(small, "cuda") == 8
    assert default_batch_size(large, "cpu") == 1 and default_batch_size(large, "cuda") == 8
    steps = []
    summary = run_index(default_bundle_path(), [str(p) for p in example_pages()[:3]], tmp_path / "idx",
                        progress=lambda done, known: steps.append(done))
    assert summary.pages_indexed == 3 and steps == [3]  # the micro bundle (24 MB): one batch of 3


def test_an_index_holds_one_mode(tmp_path):
    """``--mode fast`` is recorded in the index and in every row; the other mode is refused (one line,
    nothing written), as is pruning a fast index; an index from before modes is exact."""
    from helpers import run_cli

    from sapindex.index.store import Index
    from sapindex.index.store.schema import META_FILE

    pages = [str(p) for p in example_pages()[:3]]
    run_index(default_bundle_path(), pages[:2], tmp_path / "fast", mode="fast")
    with Index.open(tmp_path / "fast") as index:
        assert index.meta["mode"] == "fast" and {r["mode"] for r in index.iter_rows()} == {"fast"}
        version = index.version
    refused = run_cli("index", *pages, "--out", tmp_path / "fast")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().endswith("holds fast-mode vectors and never mixes modes (fast vectors are an "
                                           "approximation of exact ones); index with --mode fast, or into a new "
                                           "directory")
    with Index.open(tmp_path / "fast") as index:
        assert index.version == version and index.stats().pages == 2
    assert run_cli("index", *pages, "--out", tmp_path / "fast", "--mode", "fast").returncode == 0
    pruned = run_cli("prune", tmp_path / "fast", "--keep-ratio", "0.05", "--out", tmp_path / "small")
    assert pruned.returncode == 2 and "cannot be pruned exactly" in pruned.stderr
    assert "fast" in run_cli("inspect", tmp_path / "fast").stdout

    run_index(default_bundle_path(), pages[:1], tmp_path / "old")
    info = json.loads((tmp_path / "old" / META_FILE).read_text())
    del info["meta"]["mode"]  # as written before modes existed
    (tmp_path / "old" / META_FILE).write_text(json.dumps(info))
    with pytest.raises(SapIndexError, match="holds exact-mode vectors"):
        run_index(default_bundle_path(), pages, tmp_path / "old", mode="fast")
    assert run_index(default_bundle_path(), pages, tmp_path / "old").pages_indexed == 2
    with Index.open(tmp_path / "old") as index:
        assert {r["mode"] for r in index.iter_rows()} == {"exact"}
