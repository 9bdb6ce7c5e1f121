"""Concurrent searches gathered into batches: one text-graph call and one search for the queries
that arrive together.

Why: a service's clients each send one query. Searched one by one, 8 clients get no more queries a
second than one (each query pays a text-graph call and a pass over the first stage or the resident
vectors on its own). A :class:`QueryBatcher` has one worker: whatever queued while it was busy
goes as one batch (up to :data:`MAX_BATCH`), with no added wait, so a lone client is answered
as before and many clients share the fixed costs. Requests in a batch with different filters or
``exact`` are searched in groups, each request trimmed to its own ``k``; an error (a malformed
``where``) fails its own group only, and a refused query (empty, too long) is refused in its
caller's thread before it joins a batch.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

from sapindex.index.store import Hit

MAX_BATCH = 32  # queries per batch: one text-graph call (the searcher's QUERY_BATCH)


@dataclass
class _Request:
    text: str
    k: int
    where: str | None
    path_prefix: str | None
    exact: bool
    done: Future = field(default_factory=Future)


class QueryBatcher:
    """Searches ``searcher`` for many threads at once; :meth:`close` stops the worker."""

    def __init__(self, searcher, max_batch: int = MAX_BATCH):
        self.searcher = searcher
        self.max_batch = max_batch
        self.queries = self.batches = 0
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="sapindex-batcher", daemon=True)
        self._worker.start()

    def search(self, text: str, k: int = 10, *, where: str | None = None, path_prefix: str | None = None,
               exact: bool = False, name: str = "query") -> list[Hit]:
        """:meth:`Searcher.search` for one query, answered with whatever other queries wait with it."""
        self.searcher.check_queries([text], [name])
        request = _Request(text, k, where, path_prefix, exact)
        self._queue.put(request)
        return request.done.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=60)

    def stats(self) -> dict:
        return {"queries": self.queries, "batches": self.batches, "max_batch": self.max_batch}

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self._answer(batch)

    def _answer(self, batch: list[_Request]) -> None:
        self.queries += len(batch)
        self.batches += 1
        try:
            vectors = self.searcher.encode([r.text for r in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            for r in batch:
                r.done.set_exception(exc)
            return
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(batch):
            groups[(r.where, r.path_prefix, r.exact)].append(i)
        for (where, path_prefix, exact), members in groups.items():
            try:
                hits = self.searcher.search_vectors([vectors[i] for i in members], max(batch[i].k for i in members),
                                                    where=where, path_prefix=path_prefix, exact=exact)
            except Exception as exc:  # noqa: BLE001 - handed to the group's callers
                for i in members:
                    batch[i].done.set_exception(exc)
                continue
            for i, h in zip(members, hits, strict=True):
                batch[i].done.set_result(h[:batch[i].k])
