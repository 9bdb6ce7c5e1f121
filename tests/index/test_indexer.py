"""The indexing run and search through the Python API, on the built-in micro model (no torch)."""

import json

import numpy as np
import pytest

from sapindex.errors import SapIndexError
from sapindex.index.indexer import run_index
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.runtime.options import IndexOptions, default_batch_size, method_with_correction
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
    run_index(default_bundle_path(), pages[:2], tmp_path / "fast", IndexOptions(mode="fast"))
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

    run_index(default_bundle_path(), pages[:1], tmp_path / "old", IndexOptions(method="sap"))
    info = json.loads((tmp_path / "old" / META_FILE).read_text())
    del info["meta"]["mode"]  # as written before modes existed
    (tmp_path / "old" / META_FILE).write_text(json.dumps(info))
    with pytest.raises(SapIndexError, match="holds exact-mode vectors"):
        run_index(default_bundle_path(), pages, tmp_path / "old", IndexOptions(mode="fast"))
    assert run_index(default_bundle_path(), pages, tmp_path / "old").pages_indexed == 2
    with Index.open(tmp_path / "old") as index:
        assert {r["mode"] for r in index.iter_rows()} == {"exact"}


def test_index_methods_store_what_the_method_computes_and_an_index_holds_one_method(tmp_path):
    """``index --method``: each row records its method; the merged rows hold exactly what sapindex.compression
    computes from the page's exact encoding (keep_count vectors at the anchors, with the cover of every
    token); another method, or sap with --position-correction, is refused in one line and writes nothing;
    a merged index cannot be pruned."""
    from helpers import run_cli
    from PIL import Image

    from sapindex import compression, sap
    from sapindex.index.store import Index
    from sapindex.runtime.encoder import Encoder

    pages = [str(p) for p in example_pages()[:2]]
    run_index(default_bundle_path(), pages, tmp_path / "merge", IndexOptions(method="sap-merge", keep_ratio=0.1))
    encoder = Encoder(Bundle.open(default_bundle_path()))
    with Index.open(tmp_path / "merge") as index:
        rows = {r["path"]: r for r in index.iter_rows()}
        version = index.version
    assert set(rows) == set(pages)
    for path in pages:
        row = rows[path]
        with Image.open(path) as image:
            page = encoder.encode_pages([image.convert("RGB")])[0]
        expected = compression.anchor_merge(page.embeddings, page.centrality, sap.keep_count(page.n_visual, 0.1))
        assert row["method"] == "sap-merge" and row["n_kept"] == sap.keep_count(row["n_visual"], 0.1)
        np.testing.assert_array_equal(row["positions"], expected.positions)
        np.testing.assert_array_equal(row["cover"], expected.cover)
        np.testing.assert_allclose(row["vectors"], expected.vectors, atol=2e-3)  # stored as float16
    more = [str(p) for p in example_pages()[2:4]]
    for method in ("sap-kmeans", "sap"):
        refused = run_cli("index", *more, "--out", tmp_path / "merge", "--method", method)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().splitlines()[-1].endswith(
            f"this index holds sap-merge pages and never mixes methods (its pages would not be comparable with "
            f"{method} ones); index with the same --method (and --position-correction), or into a new directory")
    with Index.open(tmp_path / "merge") as index:
        assert index.version == version and index.methods() == {"sap-merge"}
    assert run_cli("index", *more, "--out", tmp_path / "merge").returncode == 0  # resuming: the index's own method
    with Index.open(tmp_path / "merge") as index:
        assert index.stats().pages == 4 and index.methods() == {"sap-merge"}
    pruned = run_cli("prune", tmp_path / "merge", "--keep-ratio", "0.05", "--out", tmp_path / "small")
    assert pruned.returncode == 2 and "sap-merge index cannot be pruned" in pruned.stderr
    shown = run_cli("inspect", tmp_path / "merge").stdout
    assert "sap-merge" in shown and "prune refuses sap-merge" in shown

    run_index(default_bundle_path(), pages[:1], tmp_path / "plain", IndexOptions(method="sap"))
    with pytest.raises(SapIndexError, match="holds sap pages and never mixes methods"):
        run_index(default_bundle_path(), pages, tmp_path / "plain", IndexOptions(method="sap-poscorr"))
    with pytest.raises(SapIndexError, match="ranks SAP's selection"):
        method_with_correction("sap-kmeans", True)
    with pytest.raises(SapIndexError, match="fast mode never computes"):
        run_index(default_bundle_path(), pages, tmp_path / "other", IndexOptions(method="sap-merge", mode="fast"))
    assert not (tmp_path / "other").exists()


def test_the_default_method_of_a_new_index_and_of_a_resumed_one(tmp_path):
    """A new index stores the paper's sap (exact or fast mode); a resumed index keeps its own method
    without a flag (a sap-kmeans one stays sap-kmeans, a sap-poscorr one keeps the correction)."""
    from sapindex.compression import DEFAULT_METHOD, resolve_method
    from sapindex.index.store import Index

    assert DEFAULT_METHOD == "sap"
    assert resolve_method(None, set()) == "sap"
    assert resolve_method(None, {"sap-poscorr"}) == "sap-poscorr"  # the correction is part of the method
    assert resolve_method(None, {"sap-kmeans"}) == "sap-kmeans"
    assert resolve_method("sap", {"sap-merge"}) == "sap"  # asked for: the run then refuses the mix
    pages = [str(p) for p in example_pages()[:2]]
    run_index(default_bundle_path(), pages[:1], tmp_path / "new")
    run_index(default_bundle_path(), pages[:1], tmp_path / "fast", IndexOptions(mode="fast"))
    run_index(default_bundle_path(), pages[:1], tmp_path / "kmeans", IndexOptions(method="sap-kmeans"))
    for name, method in (("new", "sap"), ("fast", "sap"), ("kmeans", "sap-kmeans")):
        mode = "fast" if name == "fast" else "exact"
        run_index(default_bundle_path(), pages, tmp_path / name, IndexOptions(mode=mode))
        with Index.open(tmp_path / name) as index:
            assert index.methods() == {method} and index.stats().pages == 2, name


def test_sap_kmeans_and_sap_budget_rows(tmp_path):
    """sap-kmeans stores keep_count centrality-weighted clusters with their cover; sap-budget stores SAP's
    kept tokens, as many per page as the calibrated scale gives, read from an eval report (refused when
    the report is of another bundle or lacks the ratio)."""
    from helpers import run_cli

    from sapindex import compression, sap
    from sapindex.eval.report import REPORT_FORMAT
    from sapindex.index.store import Index

    pages = [str(p) for p in example_pages()[:2]]
    run_index(default_bundle_path(), pages, tmp_path / "km", IndexOptions(method="sap-kmeans", keep_ratio=0.2))
    with Index.open(tmp_path / "km") as index:
        for row in index.iter_rows():
            assert row["method"] == "sap-kmeans" and row["n_kept"] == sap.keep_count(row["n_visual"], 0.2)
            np.testing.assert_array_equal(row["cover"][row["positions"]], np.arange(row["n_kept"]))
            assert set(np.unique(row["cover"])) == set(range(row["n_kept"]))

    bundle = Bundle.open(default_bundle_path())
    report = {"format": REPORT_FORMAT, "bundle": {"fingerprint": bundle.fingerprint},
              "results": {"sap-budget": {"0.1": {"budget_scale": 0.02}}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    done = run_cli("index", *pages, "--out", tmp_path / "budget", "--method", "sap-budget", "--budget-from",
                   tmp_path / "report.json", "--keep-ratio", "0.1", "--json")
    assert done.returncode == 0, done.stderr
    with Index.open(tmp_path / "budget") as index:
        rows = list(index.iter_rows())
    from PIL import Image

    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(bundle)
    for row in rows:
        with Image.open(row["path"]) as image:
            page = encoder.encode_pages([image.convert("RGB")])[0]
        np.testing.assert_array_equal(row["positions"], sap.highest(page.centrality,
                                                                    compression.budget_count(page.centrality, 0.02)))
        assert row["method"] == "sap-budget" and row["cover"] is None
    for args, message in (
            (("--keep-ratio", "0.05"), "no sap-budget calibration at keep ratio 0.05 (has: 0.1)"),
            ((), "needs the budget scale calibrated"),
    ):
        refused = run_cli("index", *pages, "--out", tmp_path / "other", "--method", "sap-budget",
                          *(("--budget-from", tmp_path / "report.json") if args else ()), *args)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
    refused = run_cli("index", *pages, "--out", tmp_path / "other", "--method", "sap-merge", "--budget-from",
                      tmp_path / "report.json")
    assert refused.returncode == 2 and "calibrates --method sap-budget, not --method sap-merge" in refused.stderr
    report["bundle"]["fingerprint"] = "0" * 64
    (tmp_path / "report.json").write_text(json.dumps(report))
    refused = run_cli("index", *pages, "--out", tmp_path / "other", "--method", "sap-budget", "--budget-from",
                      tmp_path / "report.json")
    assert refused.returncode == 2 and "calibrated with another bundle" in refused.stderr
    assert not (tmp_path / "other").exists()


def test_no_input_that_exists_is_refused_before_anything_is_written(tmp_path):
    """A typo must not leave an empty index: every input missing is exit 2, one line, no index directory;
    one missing input among existing ones is a failure of the run (exit 3), as before."""
    from helpers import run_cli

    for args in (["/no/such/dir"], [str(tmp_path / "gone.pdf"), f"@{tmp_path / 'no-list.txt'}"]):
        out = run_cli("index", *args, "--out", tmp_path / "idx")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "no such file or directory" in out.stderr and "nothing was written" in out.stderr
        assert not (tmp_path / "idx").exists()
    with pytest.raises(SapIndexError, match="/no/such/dir: no such file"):
        run_index(default_bundle_path(), ["/no/such/dir"], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    page = str(example_pages()[0])
    out = run_cli("index", page, "/no/such/dir", "--out", tmp_path / "idx", "--json")
    assert out.returncode == 3 and json.loads(out.stdout)["pages_indexed"] == 1, out.stderr
