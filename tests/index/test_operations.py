"""Index operations: prune (exactly what indexing at the lower ratio keeps), remove, compact; each
refuses a locked index, and a kill -9 at any moment leaves a valid index."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import DIM, h, make_row, run_cli

from sapindex.errors import SapIndexError
from sapindex.index.indexer import run_index
from sapindex.index.prune import prune_index
from sapindex.index.store import Index, IndexWriter
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.runtime.options import IndexOptions
from sapindex.search.scan import search_index


def rows_by_key(path):
    with Index.open(path) as idx:
        return {(r["path"], r["page"]): r for r in idx.iter_rows()}


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    for p in example_pages():
        shutil.copy(p, root / p.name)
    return root


@pytest.mark.parametrize("position_correction", [False, True])
def test_prune_keeps_exactly_what_indexing_at_the_lower_ratio_keeps(pages, tmp_path, position_correction):
    """On the trained micro model: index at 0.3, prune to 0.1 == index at 0.1 (positions, vectors, scores)."""
    for ratio in (0.3, 0.1):
        run_index(default_bundle_path(), [str(pages)], tmp_path / f"r{ratio}",
                  IndexOptions(keep_ratio=ratio, method="sap-poscorr" if position_correction else "sap"))
    summary = prune_index(tmp_path / "r0.3", tmp_path / "pruned", 0.1)
    direct, pruned, source = (rows_by_key(tmp_path / d) for d in ("r0.1", "pruned", "r0.3"))
    assert summary.pages == len(direct) == 8 and summary.vectors_after < summary.vectors_before
    assert direct.keys() == pruned.keys()
    for key, want in direct.items():
        got = pruned[key]
        np.testing.assert_array_equal(got["positions"], want["positions"])
        np.testing.assert_array_equal(got["vectors"], want["vectors"])
        np.testing.assert_array_equal(got["scores"], want["scores"])
        assert got["keep_ratio"] == 0.1 and got["method"] == want["method"]
        assert len(got["positions"]) < len(source[key]["positions"])
    with Index.open(tmp_path / "pruned") as idx:
        assert idx.meta["pruned_from"] == str((tmp_path / "r0.3").resolve())
        assert idx.meta["bundle_path"] == str(default_bundle_path().resolve())


def test_index_then_prune_on_a_default_index(pages, tmp_path):
    """The card's batch pruning with no --method: `index` stores sap by default, so `prune` cuts it to a
    lower ratio, and the pruned index searches."""
    built = run_cli("index", pages, "--out", tmp_path / "idx", "--keep-ratio", 0.1)
    assert built.returncode == 0, built.stderr
    cut = run_cli("prune", tmp_path / "idx", "--keep-ratio", 0.05, "--out", tmp_path / "small")
    assert cut.returncode == 0, cut.stderr
    before, after = rows_by_key(tmp_path / "idx"), rows_by_key(tmp_path / "small")
    assert before.keys() == after.keys() and len(after) == 8
    assert all(r["method"] == "sap" and len(r["positions"]) < len(before[k]["positions"]) for k, r in after.items())
    found = run_cli("search", tmp_path / "small", "total revenue", "--json")
    assert found.returncode == 0 and json.loads(found.stdout), found.stderr


def synthetic(path, n, scores=True, start=0):
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:
        for i in range(start, start + n, 500):
            idx.add_pages([make_row(f"/a/d{j // 4}.pdf", h(j // 4), j % 4 + 1, 16, seed=j, scores=scores)
                           for j in range(i, min(i + 500, start + n))])


def test_prune_refusals(tmp_path, monkeypatch):
    synthetic(tmp_path / "idx", 20)  # 16 of 64 tokens kept: ratio 0.25
    with pytest.raises(SapIndexError, match=r"--keep-ratio 0.3 is above the ratio 0.25 .* can only lower it"):
        prune_index(tmp_path / "idx", tmp_path / "out", 0.3)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SapIndexError, match="exists and is not empty"):
        prune_index(tmp_path / "idx", tmp_path / "full", 0.1)
    with IndexWriter.open_writer(tmp_path / "idx"), \
            pytest.raises(SapIndexError, match="another process is writing this index"):
        prune_index(tmp_path / "idx", tmp_path / "out", 0.1)
    synthetic(tmp_path / "noscores", 4, scores=False)
    with pytest.raises(SapIndexError, match="was stored without SAP scores"):
        prune_index(tmp_path / "noscores", tmp_path / "out", 0.1)
    assert not (tmp_path / "out").exists()

    from sapindex.index.store import index as index_module

    new_schema = index_module.page_schema
    def old_schema(dim, vector_dtype="float16"):
        schema = new_schema(dim, vector_dtype)
        return schema.remove(schema.get_field_index("scores"))

    monkeypatch.setattr(index_module, "page_schema", old_schema)
    synthetic(tmp_path / "old", 4)
    monkeypatch.undo()
    with Index.open(tmp_path / "old") as old:  # an index from before the column: searched as before
        assert "scores" not in old.page_columns() and len(search_index(old, np.ones((1, DIM)), k=10)) == 4
        assert all(r["scores"] is None for r in old.iter_rows())
    with pytest.raises(SapIndexError, match="predates stored SAP scores"):
        prune_index(tmp_path / "old", tmp_path / "out", 0.1)


def _kill_during(args, after_s, started=None):
    """Run ``sapindex ARGS`` and SIGKILL it ``after_s`` seconds after ``started()`` turns true
    (after the start when None)."""
    proc = subprocess.Popen([sys.executable, "-m", "sapindex.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while started is not None and not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_kill_9_during_prune_leaves_no_output_or_a_whole_one(tmp_path):
    synthetic(tmp_path / "idx", 3000)
    keys = rows_by_key(tmp_path / "idx").keys()
    staging = lambda: any(".prune-" in p.name for p in tmp_path.iterdir())  # noqa: E731
    for delay in (0.0, 0.2, 0.4):  # after the new index's directory appeared: mid-write
        assert _kill_during(["prune", tmp_path / "idx", "--keep-ratio", 0.1, "--out", tmp_path / "out"], delay,
                            staging) == -signal.SIGKILL
        if (tmp_path / "out").exists():  # renamed just before the kill: then it is whole
            assert len(rows_by_key(tmp_path / "out")) == 3000
            shutil.rmtree(tmp_path / "out")
    assert rows_by_key(tmp_path / "idx").keys() == keys
    result = run_cli("prune", tmp_path / "idx", "--keep-ratio", 0.1, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    pruned = rows_by_key(tmp_path / "out")
    assert len(pruned) == 3000 and all(len(r["positions"]) == 6 for r in pruned.values())  # round(64 * 0.1)
    assert [p.name for p in tmp_path.iterdir() if ".prune-" in p.name] == []  # leftovers of killed runs removed


def test_remove_by_path_and_directory(tmp_path):
    with IndexWriter.create_or_open(tmp_path / "idx", "fp", DIM) as idx:
        idx.add_pages([make_row(p, h(i), 1, 4, seed=i) for i, p in enumerate(
            ["/a/x.pdf", "/a/doc1.pdf", "/a/doc10.pdf", "/a/sub/y.pdf", "/a/sub/z.pdf", "/b/w.pdf"])])
        from sapindex.index.records import Failure

        idx.add_failures([Failure("/a/sub/broken.pdf", "not a PDF")])
    result = run_cli("remove", tmp_path / "idx", "/a/doc1.pdf", "/a/sub/", "--json")
    assert result.returncode == 0, result.stderr
    assert __import__("json").loads(result.stdout) == {
        "/a/doc1.pdf": ["/a/doc1.pdf"], "/a/sub/": ["/a/sub/broken.pdf", "/a/sub/y.pdf", "/a/sub/z.pdf"]}
    with Index.open(tmp_path / "idx") as idx:
        assert sorted(idx.indexed_paths()) == ["/a/doc10.pdf", "/a/x.pdf", "/b/w.pdf"] and idx.failures() == []
    nothing = run_cli("remove", tmp_path / "idx", "/a/x.pdf", "/nope")
    assert nothing.returncode == 2 and "/nope: no indexed path is or lies under it; nothing removed" in nothing.stderr
    assert "/a/x.pdf" in Index.open(tmp_path / "idx").indexed_paths()
    with IndexWriter.open_writer(tmp_path / "idx"):
        locked = run_cli("remove", tmp_path / "idx", "/a/x.pdf")
    assert locked.returncode == 2 and "another process is writing this index" in locked.stderr


def test_kill_9_during_remove_is_all_or_nothing(tmp_path):
    synthetic(tmp_path / "idx", 3000)
    for delay in (0.9, 1.1, 1.3):  # the process starts in ~1 s, then one delete
        shutil.copytree(tmp_path / "idx", tmp_path / "copy")
        _kill_during(["remove", tmp_path / "copy", "/a/"], delay)
        with Index.open(tmp_path / "copy") as idx:
            assert idx.stats().pages in (0, 3000)
        assert run_cli("remove", tmp_path / "copy", "/a/").returncode in (0, 2)  # 2: already gone
        with Index.open(tmp_path / "copy") as idx:
            assert idx.stats().pages == 0
        shutil.rmtree(tmp_path / "copy")


def test_compact_reclaims_removed_pages_and_searches_the_same(tmp_path):
    synthetic(tmp_path / "idx", 1000)
    assert run_cli("remove", tmp_path / "idx", "/a/d1.pdf", "/a/d2.pdf").returncode == 0
    q = np.ones((2, DIM), np.float32)
    with Index.open(tmp_path / "idx") as idx:
        before = search_index(idx, q, k=20)
    result = run_cli("compact", tmp_path / "idx", "--older-than", 0, "--json")
    assert result.returncode == 0, result.stderr
    sizes = __import__("json").loads(result.stdout)
    assert sizes["bytes_after"] < sizes["bytes_before"]
    with Index.open(tmp_path / "idx") as idx:
        assert search_index(idx, q, k=20) == before and idx.stats().pages == 992
    assert os.path.exists(tmp_path / "idx" / "pages.lance")
