"""QueryBatcher: queries waiting together are answered in one batch, each with its own k and
filters, the same hits as searched alone; a bad filter fails its own group only."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import h, make_row

from sapindex.errors import SapIndexError
from sapindex.index.store import Index, IndexWriter
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder
from sapindex.search import Searcher
from sapindex.search.batching import QueryBatcher


def same(got, want):
    """The same pages in the same order, scores equal up to float32 summation order (batched matmuls)."""
    assert [(x.path, x.page) for x in got] == [(x.path, x.page) for x in want]
    assert [x.score for x in got] == pytest.approx([x.score for x in want], rel=1e-5)


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
    path = tmp_path_factory.mktemp("batching") / "idx"
    with IndexWriter.create_or_open(path, "fp", 128) as idx:
        idx.add_pages([make_row(f"/b/d{i // 3}.pdf", h(i // 3), i % 3 + 1, 6, seed=i, dim=128) for i in range(60)])
    return Searcher(Index.open(path), Encoder(Bundle.open(default_bundle_path()), graphs=("text",)))


def test_waiting_queries_share_one_batch_with_their_own_k_and_filters(searcher):
    batcher = QueryBatcher(searcher)
    asks = [("annual report", 3, None), ("travel policy", 5, None), ("revenue", 4, "page = 2"),
            ("figure two", 2, "page = 2"), ("annual report", 7, None)]
    results: dict[int, list] = {}
    with searcher._encode_lock:  # the worker blocks in its first batch's encoding: the rest queue up
        threads = [threading.Thread(target=lambda i=i, a=a: results.__setitem__(
            i, batcher.search(a[0], a[1], where=a[2]))) for i, a in enumerate(asks)]
        threads[0].start()
        while batcher.queries == 0:
            time.sleep(0.01)
        for t in threads[1:]:
            t.start()
        while batcher._queue.qsize() < len(asks) - 1:
            time.sleep(0.01)
    for t in threads:
        t.join()
    assert batcher.stats() == {"queries": 5, "batches": 2, "max_batch": 32}
    for i, (text, k, where) in enumerate(asks):
        same(results[i], searcher.search(text, k, where=where))
    with pytest.raises(SapIndexError, match="filter 'bogus"):
        batcher.search("revenue", 3, where="bogus ((")
    with pytest.raises(SapIndexError, match="query: empty query"):  # refused before it joins a batch
        batcher.search("   ")
    same(batcher.search("revenue", 3), searcher.search("revenue", 3))
    batcher.close()
    assert not batcher._worker.is_alive()
