"""sapindex.index.store: the LanceDB index (refusals, resume, crash safety)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import DIM, h, make_row

from sapindex.errors import SapIndexError
from sapindex.index.records import Failure
from sapindex.index.store import META_FILE, Index, IndexWriter, PageRow
from sapindex.search.scan import search_index


@pytest.fixture
def index(tmp_path):
    idx = IndexWriter.create_or_open(tmp_path / "idx", "fp-A", DIM, {"model": "tiny"})
    yield idx
    idx.close()


# --------------------------------------------------------------------------- opening


def test_metadata_and_refusals(tmp_path):
    path = tmp_path / "idx"
    with IndexWriter.create_or_open(path, "fp-A", DIM, {"model": "tiny", "window": [3, 4]}) as idx:
        assert idx.dim == DIM and idx.vector_dtype == "float16" and idx.meta["window"] == [3, 4]
    info = json.loads((path / META_FILE).read_text())
    assert info["format"] == "sapindex-index" and info["format_version"] == 1
    assert info["bundle_fingerprint"] == "fp-A" and info["dim"] == DIM
    assert {"created", "sapindex_version", "meta", "vector_dtype"} <= info.keys()
    assert not [p for p in os.listdir(path) if ".tmp-" in p]  # the atomic write left no tmp file

    with pytest.raises(SapIndexError) as err:
        IndexWriter.create_or_open(path, "fp-B", DIM)
    assert "fp-A" in str(err.value) and "fp-B" in str(err.value)
    with pytest.raises(SapIndexError, match="fp-A"):
        Index.open(path, bundle_fingerprint="fp-B")
    with pytest.raises(SapIndexError, match="32-d"):
        IndexWriter.create_or_open(path, "fp-A", 32)

    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SapIndexError, match="not a sapindex index"):
        IndexWriter.create_or_open(other, "fp-A", DIM)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SapIndexError, match="not a sapindex index"):
        IndexWriter.create_or_open(a_file, "fp-A", DIM)
    with pytest.raises(SapIndexError, match="not a sapindex index"):
        Index.open(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    IndexWriter.create_or_open(empty, "fp-A", DIM).close()  # an empty directory is fine
    # reopening with the same fingerprint keeps the recorded metadata
    with IndexWriter.create_or_open(path, "fp-A", DIM, {"other": 1}) as idx:
        assert idx.meta == {"model": "tiny", "window": [3, 4]}


def test_one_writer_at_a_time_readers_any_time(tmp_path):
    path = tmp_path / "idx"
    writer = IndexWriter.create_or_open(path, "fp-A", DIM)
    with pytest.raises(SapIndexError, match="another process is writing"):
        IndexWriter.create_or_open(path, "fp-A", DIM)
    writer.add_pages([make_row("a.pdf", h(1), 1, 3, 0)])
    reader = Index.open(path)
    assert reader.indexed_keys() == {(h(1), 1)}
    assert not any(hasattr(reader, m) for m in ("add_pages", "add_failures", "remove_paths", "compact"))  # reads only
    writer.add_pages([make_row("c.pdf", h(3), 1, 3, 0)])
    assert reader.indexed_keys() == {(h(1), 1), (h(3), 1)}  # a reader sees later commits
    assert sorted(x.path for x in search_index(reader, np.ones((1, DIM)), k=None)) == ["a.pdf", "c.pdf"]
    writer.close()
    IndexWriter.create_or_open(path, "fp-A", DIM).close()


# --------------------------------------------------------------------------- writing


def test_resume_keys_and_idempotent_add(tmp_path):
    path = tmp_path / "idx"
    rows = [make_row(f"d{i}.pdf", h(i), p, 1 + (i + p) % 5, i * 10 + p) for i in range(4) for p in (1, 2)]
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        assert idx.add_pages(rows[:5]) == 5
        assert idx.add_pages(rows[:5] + rows[:1]) == 0  # already there: nothing stored twice
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        assert idx.indexed_keys() == {(r.content_hash, r.page) for r in rows[:5]}
        assert idx.add_pages(rows) == 3
        assert idx.stats().pages == 8
        # a byte-identical copy at another path is not stored again (the first path wins)
        copy = make_row("copy-of-d0.pdf", h(0), 1, 2, 99)
        assert idx.add_pages([copy]) == 0
    stored = list(Index.open(path).iter_rows())
    assert len(stored) == 8 and len({(r["content_hash"], r["page"]) for r in stored}) == 8
    by_key = {(r.content_hash, r.page): r for r in rows}
    for s in stored:
        r = by_key[(s["content_hash"], s["page"])]
        assert s["path"] == r.path and s["n_kept"] == len(r.positions) and s["grid_rows"] == 8
        np.testing.assert_array_equal(s["positions"], r.positions)
        np.testing.assert_array_equal(s["vectors"], r.vectors.astype(np.float16).astype(np.float32))


def test_bad_rows_are_refused(index):
    good = make_row("a.pdf", h(1), 1, 3, 0)
    with pytest.raises(ValueError, match=r"\[k, 16\]"):
        index.add_pages([PageRow(**{**good.__dict__, "vectors": np.zeros((3, 8), np.float32)})])
    with pytest.raises(ValueError, match="at least one"):
        index.add_pages([PageRow(**{**good.__dict__, "vectors": np.zeros((0, DIM)), "positions": np.zeros(0, int)})])
    with pytest.raises(ValueError, match="ascending"):
        index.add_pages([PageRow(**{**good.__dict__, "positions": np.array([5, 2, 9])})])
    with pytest.raises(ValueError, match="1-based"):
        index.add_pages([PageRow(**{**good.__dict__, "page": 0})])
    assert index.stats().pages == 0


def test_changed_file_replaces_its_rows(tmp_path):
    path = tmp_path / "idx"
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        idx.add_pages([make_row("report.pdf", h(1), p, 4, p) for p in (1, 2, 3)])
        idx.add_pages([make_row("other.pdf", h(9), 1, 4, 9)])
        # the file changed: two pages now, new hash; its old three pages go in the same commit
        assert idx.add_pages([make_row("report.pdf", h(2), 1, 4, 21)]) == 1
        assert idx.indexed_paths() == {"report.pdf": {h(2)}, "other.pdf": {h(9)}}
        idx.add_pages([make_row("report.pdf", h(2), 2, 4, 22)])
        assert idx.indexed_keys() == {(h(2), 1), (h(2), 2), (h(9), 1)}
    reader = Index.open(path)
    assert sorted((r["path"], r["content_hash"], r["page"]) for r in reader.iter_rows()) == [
        ("other.pdf", h(9), 1), ("report.pdf", h(2), 1), ("report.pdf", h(2), 2)]
    hits = search_index(reader, np.ones((2, DIM), np.float32), k=None)
    assert sorted((x.path, x.page) for x in hits) == [("other.pdf", 1), ("report.pdf", 1), ("report.pdf", 2)]
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        # changed to content already indexed elsewhere: nothing to add, drop_stale cleans up
        assert idx.drop_stale("other.pdf", h(2)) == 1
        assert idx.remove_paths(["report.pdf"]) == {"report.pdf": ["report.pdf"]}
        assert idx.stats().pages == 0


def test_failures_recorded_replaced_and_cleared(tmp_path, monkeypatch):
    path = tmp_path / "idx"
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        assert idx.add_failures([Failure("bad.pdf", "not a valid PDF"), Failure("scan.tif", "cannot decode", 2),
                                 Failure("it's.png", "permission denied")]) == 3
        idx.add_failures([Failure("bad.pdf", "encrypted PDF:\n a password is required")])  # replaces
        assert idx.failures() == [Failure("bad.pdf", "encrypted PDF: a password is required"),
                                  Failure("it's.png", "permission denied"),
                                  Failure("scan.tif", "cannot decode", 2)]
        idx.add_pages([make_row("scan.tif", h(5), 1, 2, 0)])  # page 1 does not clear page 2
        assert [f.path for f in idx.failures()] == ["bad.pdf", "it's.png", "scan.tif"]
        idx.add_pages([make_row("scan.tif", h(5), 2, 2, 1), make_row("it's.png", h(6), 1, 2, 2)])
        assert idx.failures() == [Failure("bad.pdf", "encrypted PDF: a password is required")]
        assert idx.stats().failures == 1
    # a crash between the page commit and the failure delete: the failure is stale, and ignored
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        monkeypatch.setattr(IndexWriter, "_delete_failures", lambda self, keys: None)
        idx.add_pages([make_row("bad.pdf", h(7), 1, 2, 3)])
        monkeypatch.undo()
        assert idx.failures() == []
    assert Index.open(path).failures() == []
    # a failure newer than the indexed pages stays (the file broke after it was indexed)
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        idx.add_failures([Failure("bad.pdf", "not a valid PDF (corrupt or truncated)")])
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        assert [f.reason for f in idx.failures()] == ["not a valid PDF (corrupt or truncated)"]
        idx.remove_paths(["bad.pdf"])
        assert idx.failures() == []


def test_stats_and_bytes_per_row(tmp_path):
    dim, n_pages, k = 128, 100, 100
    with IndexWriter.create_or_open(tmp_path / "idx", "fp-A", dim) as idx:
        assert idx.count_pages() == 0
        rows = [make_row(f"d{i // 4}.pdf", h(i // 4), i % 4 + 1, k, i, dim=dim, n_visual=768)
                for i in range(n_pages)]
        idx.add_pages(rows)
        assert idx.count_pages() == n_pages
        idx.add_failures([Failure("x.pdf", "empty file (0 bytes)")])
        s = idx.stats()
    assert (s.files, s.pages, s.vectors, s.vectors_before_pruning, s.failures) == (25, 100, 10_000, 76_800, 1)
    assert s.kept_fraction == pytest.approx(10_000 / 76_800)
    raw = n_pages * k * dim * 2  # float16 vectors alone
    assert raw < s.bytes_on_disk < 1.2 * raw, s.bytes_on_disk / n_pages


def test_get_returns_one_stored_row(index):
    rows = [make_row("a.pdf", h(1), p, 2 + p, p) for p in (1, 2, 3)] + [make_row("b.pdf", h(2), 2, 4, 9)]
    index.add_pages(rows)
    row = index.get("a.pdf", 2)
    assert (row["path"], row["page"], row["content_hash"], row["n_kept"]) == ("a.pdf", 2, h(1), 4)
    np.testing.assert_array_equal(row["positions"], rows[1].positions)
    np.testing.assert_array_equal(row["vectors"], rows[1].vectors.astype(np.float16).astype(np.float32))
    assert row.keys() == next(index.iter_rows()).keys()
    assert index.get("b.pdf", 2)["content_hash"] == h(2)
    assert index.get("a.pdf", 4) is None and index.get("it's.pdf", 1) is None


# --------------------------------------------------------------------------- crash safety

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from sapindex.index.store import Index, IndexWriter, PageRow

    def rows_for(f, dim):
        rng = np.random.default_rng(f)
        out = []
        for page in (1, 2, 3):
            k = 1 + (f * 3 + page) % 7
            out.append(PageRow(path=f"doc{f:03d}.pdf", content_hash=f"{f:064x}", page=page,
                               width=10, height=10, grid=(4, 4), n_visual=16,
                               positions=np.arange(k) * 2, vectors=rng.standard_normal((k, dim)),
                               keep_ratio=0.1))
        return out

    if __name__ == "__main__":
        path, n_files, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        idx = IndexWriter.create_or_open(path, "fp-A", dim)
        done = idx.indexed_keys()
        print("open", flush=True)
        for f in range(n_files):
            rows = [r for r in rows_for(f, dim) if (r.content_hash, r.page) not in done]
            if rows:
                idx.add_pages(rows)
                print("added", f, flush=True)
        print("finished", flush=True)
""")


def _check_rows_complete(path, rows_for, dim):
    seen = set()
    for s in Index.open(path).iter_rows():
        key = (s["content_hash"], s["page"])
        assert key not in seen, f"{key} stored twice"
        seen.add(key)
        f = int(s["content_hash"], 16)
        r = rows_for(f, dim)[s["page"] - 1]
        assert s["path"] == r.path and s["n_kept"] == len(r.positions) == len(s["positions"])
        assert s["vectors"].shape == (s["n_kept"], dim)
        np.testing.assert_array_equal(s["positions"], r.positions)
        np.testing.assert_array_equal(s["vectors"], np.asarray(r.vectors).astype(np.float16).astype(np.float32))
    return seen


def test_kill_9_while_appending_leaves_whole_rows_only(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    namespace: dict = {}
    exec(compile(WRITER, str(script), "exec"), namespace)
    rows_for = namespace["rows_for"]
    path, n_files, dim = tmp_path / "idx", 60, 32
    cmd = [sys.executable, str(script), str(path), str(n_files), str(dim)]
    rng = random.Random(3)
    counts = []
    for target in (3, 10, 25):  # kill at a random moment after `target` more commits
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        added = 0
        try:
            for line in proc.stdout:
                added += line.startswith("added")
                if added >= target or line.startswith("finished"):
                    break
            time.sleep(rng.uniform(0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        counts.append(len(_check_rows_complete(path, rows_for, dim)))
    assert counts[0] > 0 and counts == sorted(counts)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    keys = _check_rows_complete(path, rows_for, dim)
    assert keys == {(f"{f:064x}", p) for f in range(n_files) for p in (1, 2, 3)}
    assert Index.open(path).stats().pages == 3 * n_files


# --------------------------------------------------------------------------- torch-free


def test_store_and_inputs_in_use_import_no_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from PIL import Image
        from sapindex.index.documents import Failure, iter_pages
        from sapindex.index.sources import iter_sources
        from sapindex.index.store import Index, IndexWriter, PageRow
        from sapindex.search.scan import search_index
        Image.new("RGB", (20, 30), (1, 2, 3)).save({str(tmp_path / 'p.pdf')!r}, "PDF")
        pages = list(iter_pages(iter_sources([{str(tmp_path)!r}])))
        with IndexWriter.create_or_open({str(tmp_path / 'idx')!r}, "fp", 4) as idx:
            idx.add_pages([PageRow(p.path, p.content_hash, p.page, *p.size, (1, 1), 1, np.array([0]),
                                   np.ones((1, 4)), 1.0) for p in pages])
            idx.add_failures([Failure("x", "y")])
            print(search_index(idx, np.ones((2, 4)), k=1), idx.stats().pages, idx.failures(), file=sys.stderr)
            idx.compact()
        print(",".join(m for m in ("torch", "transformers", "torchvision") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_changing_one_copy_keeps_the_other_copys_pages(tmp_path):
    with IndexWriter.create_or_open(tmp_path / "idx", "fp-A", DIM) as idx:
        idx.add_pages([make_row("p.pdf", h(1), 1, 2, 1)])  # a run killed after p's first page
        # q.pdf is a byte-identical copy: its page 1 is already there, pages 2-3 are stored under q
        assert idx.add_pages([make_row("q.pdf", h(1), n, 2, n) for n in (1, 2, 3)]) == 2
        assert idx.add_pages([make_row("p.pdf", h(2), 1, 2, 7)]) == 1  # p changed
        assert idx.indexed_keys() == {(h(1), 2), (h(1), 3), (h(2), 1)}
        assert idx.indexed_paths() == {"q.pdf": {h(1)}, "p.pdf": {h(2)}}
    assert sorted((r["path"], r["content_hash"], r["page"]) for r in Index.open(tmp_path / "idx").iter_rows()) == [
        ("p.pdf", h(2), 1), ("q.pdf", h(1), 2), ("q.pdf", h(1), 3)]


# --------------------------------------------------------------------------- global-tile pages


def test_a_tiled_page_records_its_global_grid(index):
    """A colidefics3 page (12x12 local grid + 4x4 global tile, 160 tokens) keeps its global grid;
    grid-family rows read (0, 0)."""
    from types import SimpleNamespace

    from sapindex.runtime.encoder import PrunedPage

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, DIM)).astype(np.float32)
    encoded = PrunedPage(vectors, np.array([5, 143, 150], np.int32), (12, 12), 160, (4, 4))
    source = SimpleNamespace(path="/d/tiled.pdf", content_hash=h(7), page=1, size=(300, 420))
    assert index.add_pages([PageRow.from_encoded(source, encoded), make_row("/d/grid.pdf", h(8), 1, 4, 1)]) == 2
    rows = {r["path"]: r for r in index.iter_rows()}
    tiled, grid = rows["/d/tiled.pdf"], rows["/d/grid.pdf"]
    assert (tiled["grid_rows"], tiled["grid_cols"], tiled["global_rows"], tiled["global_cols"]) == (12, 12, 4, 4)
    assert tiled["positions"].tolist() == [5, 143, 150] and tiled["n_visual"] == 160
    assert (grid["global_rows"], grid["global_cols"]) == (0, 0)


def test_an_index_without_the_global_grid_columns_still_opens(tmp_path, monkeypatch):
    """Indexes written before ``global_rows``/``global_cols`` existed: readable (0 for both),
    searchable, appendable with grid-family pages; a tiled page is refused with the reason."""
    from sapindex.index.store import index as index_module

    new_schema = index_module.page_schema

    def old_schema(dim, vector_dtype="float16"):
        schema = new_schema(dim, vector_dtype)
        return schema.remove(schema.get_field_index("global_cols")).remove(schema.get_field_index("global_rows"))

    path = tmp_path / "old"
    with monkeypatch.context() as patched:
        patched.setattr(index_module, "page_schema", old_schema)
        with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
            idx.add_pages([make_row("/d/a.pdf", h(1), 1, 4, 1)])
    with Index.open(path) as idx:
        assert "global_rows" not in idx.page_columns()
        (row,) = list(idx.iter_rows())
        assert (row["grid_rows"], row["global_rows"], row["global_cols"]) == (8, 0, 0)
        assert search_index(idx, row["vectors"][:1], k=1)[0].path == "/d/a.pdf"
    with IndexWriter.create_or_open(path, "fp-A", DIM) as idx:
        assert idx.add_pages([make_row("/d/b.pdf", h(2), 1, 4, 2)]) == 1
        tiled = make_row("/d/c.pdf", h(3), 1, 4, 3)
        tiled.global_grid = (4, 4)
        with pytest.raises(SapIndexError, match=r"old: this index predates global-tile pages"):
            idx.add_pages([tiled])
        assert sorted(r["path"] for r in idx.iter_rows()) == ["/d/a.pdf", "/d/b.pdf"]


def test_merged_rows_keep_their_cover_and_bad_covers_or_old_indexes_are_refused(tmp_path, monkeypatch):
    """A merged row's ``cover`` (the stored vector each token was merged into) is stored and read back as
    given; a cover that does not name each position's own row is refused; an index from before the
    column takes selection rows and refuses merged ones with the reason."""
    from sapindex.index.store import index as index_module

    merged = make_row("/d/m.pdf", h(1), 1, 3, 1, n_visual=8)
    merged.positions = np.array([1, 4, 6])
    merged.cover = np.array([0, 0, -1, 1, 1, 1, 2, 2])
    merged.method = "sap-merge"
    with IndexWriter.create_or_open(tmp_path / "new", "fp-A", DIM) as idx:
        idx.add_pages([merged, make_row("/d/s.pdf", h(2), 1, 3, 2)])
        rows = {r["path"]: r for r in idx.iter_rows()}
        assert rows["/d/m.pdf"]["cover"].tolist() == [0, 0, -1, 1, 1, 1, 2, 2] and rows["/d/s.pdf"]["cover"] is None
        assert idx.methods() == {"sap", "sap-merge"}  # the store records; the indexer refuses mixing
        for cover in ([0, 0, -1, 1, 0, 1, 2, 2], [0, 0, -1, 1, 1, 1, 2, 3], [0, 0, 1], [0, 0, -2, 1, 1, 1, 2, 2]):
            bad = PageRow(**{**merged.__dict__, "content_hash": h(3), "cover": np.array(cover)})
            with pytest.raises(ValueError, match="cover must be"):
                idx.add_pages([bad])

    new_schema = index_module.page_schema

    def old_schema(dim, vector_dtype="float16"):
        schema = new_schema(dim, vector_dtype)
        return schema.remove(schema.get_field_index("cover"))

    with monkeypatch.context() as patched:
        patched.setattr(index_module, "page_schema", old_schema)
        with IndexWriter.create_or_open(tmp_path / "old", "fp-A", DIM) as idx:
            idx.add_pages([make_row("/d/a.pdf", h(4), 1, 4, 1)])
    with IndexWriter.create_or_open(tmp_path / "old", "fp-A", DIM) as idx:
        assert idx.add_pages([make_row("/d/b.pdf", h(5), 1, 4, 2)]) == 1
        assert [r["cover"] for r in idx.iter_rows()] == [None, None]
        with pytest.raises(SapIndexError, match="old: this index predates merged vectors"):
            idx.add_pages([merged])
