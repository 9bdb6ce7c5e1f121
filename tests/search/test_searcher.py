"""sapindex.search.Searcher: the resident exact search agrees with the index's scan, sees new index
versions without reopening, filters, refuses bad queries, and stays right under concurrent use."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import h, make_row

from sapindex.errors import SapIndexError
from sapindex.index.store import Index, IndexWriter
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder
from sapindex.search import Searcher, resident, streamed
from sapindex.search.scan import search_index

DIM = 128  # the micro bundle's, so that text queries can search the synthetic rows too


@pytest.fixture(scope="module")
def encoder():
    return Encoder(Bundle.open(default_bundle_path()), graphs=("text",))


def rows(n, start=0, prefix="/a", k=6):
    return [make_row(f"{prefix}/doc{i // 3}.pdf", h(i // 3), i % 3 + 1, k + i % 5, seed=i, dim=DIM)
            for i in range(start, start + n)]


@pytest.fixture
def writer(tmp_path):
    with IndexWriter.create_or_open(tmp_path / "idx", "fp", DIM) as idx:
        yield idx


def same(got, want):
    """The same pages in the same order, scores equal up to float32 summation order."""
    assert [(x.path, x.page) for x in got] == [(x.path, x.page) for x in want]
    np.testing.assert_allclose([x.score for x in got], [x.score for x in want], rtol=1e-5)


def queries(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(3, 12)), DIM)).astype(np.float32) for _ in range(n)]


def test_resident_search_equals_the_index_scan(writer, encoder, monkeypatch):
    monkeypatch.setattr(resident, "BLOCK_PAGES", 64)  # several blocks, each scored on its own
    writer.add_pages(rows(300))
    searcher = Searcher(Index.open(writer.path), encoder)
    assert len(searcher._view.blocks) == 5 and searcher.stats()["pages"] == 300
    qs = queries(6)
    for k in (1, 7, 300, 1000):
        got = searcher.search_vectors(qs, k)
        for q, hits in zip(qs, got, strict=True):
            same(hits, search_index(writer, q, k=k))
    texts = ["annual report", "revenue 2023", "travel policy"]
    many = searcher.search_many(texts, k=5)
    for got, t in zip(many, texts, strict=True):
        same(got, searcher.search(t, k=5))
    same(many[0], search_index(writer, encoder.encode_queries(["annual report"])[0], k=5))


def test_new_versions_are_searched_without_reopening(writer, encoder):
    searcher = Searcher(Index.open(writer.path), encoder)  # opened before the first page
    assert searcher.search_vectors(queries(1), 5) == [[]]
    writer.add_pages(rows(30))
    assert searcher.refresh() and searcher.stats()["pages"] == 30
    before = searcher._view
    writer.add_pages(rows(9, start=30))  # only added: appended to the snapshot, not reloaded
    q = queries(1)
    hits = searcher.search_vectors(q, 100)[0]
    assert len(hits) == 39
    assert searcher._view.n_pages == 39 and searcher._view.loaded_at == before.loaded_at
    assert not searcher.refresh()  # nothing new

    changed = [make_row("/a/doc0.pdf", h(999), p, 4, seed=500 + p, dim=DIM) for p in (1, 2)]
    writer.add_pages(changed)  # doc0 changed: its 3 old pages replaced by 2 new ones (a reload)
    hits = searcher.search_vectors(q, 100)[0]
    assert len(hits) == 38 and searcher._view.loaded_at > before.loaded_at
    assert sorted(x.page for x in hits if x.path == "/a/doc0.pdf") == [1, 2]
    same(hits, search_index(writer, q[0], k=100))

    writer.remove_paths(["/a/doc1.pdf"])
    assert all(x.path != "/a/doc1.pdf" for x in searcher.search_vectors(q, 100)[0])


def test_filters(writer, encoder):
    writer.add_pages(rows(30) + rows(12, start=100, prefix="/b_x%"))
    searcher = Searcher(Index.open(writer.path), encoder)
    q = queries(2)
    only_b = searcher.search_vectors(q, 100, path_prefix="/b_x%")
    assert all(len(r) == 12 and all(x.path.startswith("/b_x%/") for x in r) for r in only_b)
    page2 = searcher.search_vectors(q, 100, where="page = 2")
    assert all(len(r) == 14 and {x.page for x in r} == {2} for r in page2)
    both = searcher.search_vectors(q, 3, where="page = 2", path_prefix="/a/")
    full = [[x for x in r if x.page == 2 and x.path.startswith("/a/")][:3] for r in searcher.search_vectors(q, 100)]
    assert both == full
    like = searcher.search_vectors(q, 100, where="path LIKE '/a/doc1%'")
    assert {x.path for x in like[0]} == {"/a/doc1.pdf"}
    with pytest.raises(SapIndexError, match="filter 'bogus"):
        searcher.search_vectors(q, 5, where="bogus ((")
    with pytest.raises(SapIndexError, match="filter"):
        searcher.search_vectors(q, 5, where="no_such_column = 1")


def test_bad_queries_are_refused_with_their_name(writer, encoder):
    writer.add_pages(rows(3))
    searcher = Searcher(Index.open(writer.path), encoder, max_query_tokens=20)
    with pytest.raises(SapIndexError, match="query 2: empty query"):
        searcher.search_many(["fine", "  "])
    with pytest.raises(SapIndexError, match=r"line 7: \d+ tokens, the limit is 20"):
        searcher.check_queries(["word " * 30], ["line 7"])
    with pytest.raises(SapIndexError, match="no queries"):
        searcher.search_many([])
    for k in (0, -1, 2.5, True):
        with pytest.raises(SapIndexError, match="k must be a positive integer"):
            searcher.search("fine", k=k)
    with pytest.raises(ValueError, match="query_vectors must be"):
        searcher.search_vectors([np.zeros((2, DIM + 1), np.float32)])


def test_open_checks_the_bundle(tmp_path):
    meta = {"bundle_path": str(default_bundle_path())}
    with IndexWriter.create_or_open(tmp_path / "idx", "not-the-micro-bundle", DIM, meta):
        pass
    with pytest.raises(SapIndexError, match="differs from the index's"):
        Searcher.open(tmp_path / "idx")
    with IndexWriter.create_or_open(tmp_path / "idx2", "fp", DIM):
        pass
    with pytest.raises(SapIndexError, match="does not record its bundle; pass --bundle"):
        Searcher.open(tmp_path / "idx2")


def test_concurrent_searches_while_a_writer_commits(writer, encoder):
    writer.add_pages(rows(60))
    searcher = Searcher(Index.open(writer.path), encoder)
    q = queries(1)
    errors, counts = [], []

    def client():
        try:
            for _ in range(15):
                hits = searcher.search_vectors(q, 500)[0]
                assert [x.score for x in hits] == sorted((x.score for x in hits), reverse=True)
                counts.append(len(hits))
                searcher.search("annual report", k=3)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for i in range(5):
        writer.add_pages(rows(6, start=60 + 6 * i))
    for t in threads:
        t.join()
    assert not errors
    assert set(counts) <= set(range(60, 91, 6))  # whole commits only
    same(searcher.search_vectors(q, 500)[0], search_index(writer, q[0], k=500))


def test_an_index_too_large_for_memory_is_streamed_with_the_same_answers(writer, encoder, monkeypatch):
    writer.add_pages(rows(40))
    q = np.random.default_rng(3).standard_normal((2, 5, DIM)).astype(np.float32)
    want = Searcher(Index.open(writer.path), encoder).search_vectors(list(q), 7)
    monkeypatch.setattr(resident, "available_bytes", lambda: 1000)
    monkeypatch.setattr(streamed, "CHUNK_PAGES", 16)  # several chunks
    searcher = Searcher(Index.open(writer.path), encoder)
    assert searcher.holding() == "streamed" and searcher.stats()["pages"] == 40
    seen = []
    got = searcher.search_vectors(list(q), 7, progress=lambda done, total: seen.append((done, total)))
    for g, w in zip(got, want, strict=True):
        same(g, w)
    assert seen[-1][0] == seen[-1][1] == sum(len(r.vectors) for r in rows(40)) and len(seen) == 3
    same(searcher.search_vectors([q[0]], 40, where="page = 2")[0],
         [x for x in search_index(writer, q[0], k=40) if x.page == 2])
    writer.add_pages(rows(6, start=40))  # a new version is seen
    assert searcher.stats()["pages"] == 46
    same(searcher.search_vectors([q[0]], 46)[0], search_index(writer, q[0], k=46))
