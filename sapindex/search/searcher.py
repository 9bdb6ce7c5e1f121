"""The :class:`Searcher`: an index and its query encoder opened once, answering many queries.

Why an object: opening is the expensive part (a real-size text graph is gigabytes; reading every
kept vector of a large index takes seconds), so scripts, ``search --queries`` and ``serve`` open
one and keep it. Each search first checks the index version (:mod:`sapindex.search.resident`):
pages that an ``index`` run commits meanwhile become searchable, nothing is reloaded otherwise.
Scores are exact MaxSim over the kept vectors, the same as :meth:`Index.search`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from sapindex.errors import SapIndexError
from sapindex.index.store import Hit, Index
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder
from sapindex.search import compressed, first_stage, resident
from sapindex.search.scan import TopK, query_matrix
from sapindex.search.streamed import Streamed

# Queries longer than this are refused: ColPali-family queries are a sentence or two, and the text
# graph's attention grows with the square of the length (a pasted document would take gigabytes).
MAX_QUERY_TOKENS = 512
QUERY_BATCH = 32  # queries per text-graph call in search_many
# Two-stage search (bench/million_pages.py, RESULTS.md "A million pages"): used from this many
# pages on when the index has a first stage (the resident exact scan costs ~7 us a page on 2 cores:
# ~35 ms here); inverted lists probed and vectors retrieved per query token; pages rescored exactly.
TWO_STAGE_MIN_PAGES = 5000
NPROBE = 32
KPRIME = 1024
DEPTH = 512


def open_encoder(index: Index, bundle_path: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None) -> Encoder:
    """A query encoder for ``index``: its own bundle (or ``bundle_path``), checked by fingerprint."""
    return query_encoder(str(index.path), "the index", index.bundle_fingerprint, index.meta, bundle_path, device,
                         threads)


def query_encoder(where: str, owner: str, fingerprint: str, meta: dict, bundle_path: str | Path | None = None,
                  device: str = "cpu", threads: int | None = None) -> Encoder:
    """A query encoder for vectors of bundle ``fingerprint`` that ``owner`` at ``where`` stores (the index at
    its path, a collection at a Qdrant URL), as messages name them.

    ``meta`` is what the owner records of its bundle (``bundle_path``, ``builtin``); ``bundle_path``
    overrides it. The bundle is refused unless it has the owner's fingerprint.
    """
    path = bundle_path or meta.get("bundle_path")
    if not path:
        raise SapIndexError(f"{where}: {owner} does not record its bundle; pass --bundle")
    if bundle_path is None and meta.get("builtin") and not Path(path).exists():
        path = default_bundle_path()  # built with the shipped model, since moved (another install)
    bundle = Bundle.open(path, verify=False)
    if fingerprint not in bundle.fingerprints:
        raise SapIndexError(
            f"{path}: bundle fingerprint {bundle.fingerprint[:12]} differs from {owner}'s "
            f"{fingerprint[:12]}; search with the bundle the vectors were made with")
    # queries never need the vision graph; no spinning: the MaxSim scoring right after needs the cores
    return Encoder(bundle, device=device, threads=threads, graphs=("text",), spinning=False)


class QueryEncoding:
    """Queries checked and encoded by a bundle's text graph: what every searcher shares (this
    index's :class:`Searcher`, a search engine's :class:`~sapindex.engines.qdrant.QdrantSearcher`).

    Attributes:
        encoder (Encoder): The query encoder.
        max_query_tokens (int): Queries longer than this many tokens are refused.
    """

    encoder: Encoder
    max_query_tokens: int

    def __init__(self, encoder: Encoder, max_query_tokens: int = MAX_QUERY_TOKENS):
        self.encoder = encoder
        self.max_query_tokens = max_query_tokens
        self._encode_lock = threading.Lock()

    @staticmethod
    def checked_k(k) -> int:
        """``k`` as an int; SapIndexError unless it is a positive integer (a bool is not)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SapIndexError(f"k must be a positive integer, got {k!r}")
        return int(k)

    def check_queries(self, queries: Sequence[str], names: Sequence[str] | None = None) -> None:
        """SapIndexError naming the first query that is not a non-empty string within
        :attr:`max_query_tokens` tokens (``names[i]`` says where query ``i`` came from).

        Args:
            queries: The queries to check.
            names: What each query is called in the error, one per query; None: ``query 1``,
                ``query 2``, ...

        Raises:
            SapIndexError: ``queries`` is empty, a query is not a string or is blank, or a query has
                more tokens than ``max_query_tokens``.
            ValueError: ``names`` has another length than ``queries``.
        """
        names = list(names) if names is not None else [f"query {i + 1}" for i in range(len(queries))]
        if not queries:
            raise SapIndexError("no queries")
        for name, q in zip(names, queries, strict=True):
            if not isinstance(q, str) or not q.strip():
                raise SapIndexError(f"{name}: empty query")
        lengths = self.encoder.query_lengths(list(queries))
        for name, n in zip(names, lengths, strict=True):
            if n > self.max_query_tokens:
                raise SapIndexError(f"{name}: {n} tokens, the limit is {self.max_query_tokens}; shorten the query")

    def encode(self, queries: Sequence[str], names: Sequence[str] | None = None) -> list[np.ndarray]:
        """``[M, dim]`` float32 per query (checked first, by :meth:`check_queries` with ``names``),
        a batch of :data:`QUERY_BATCH` per call.

        Args:
            queries: The queries to encode.
            names: What each query is called in an error (see :meth:`check_queries`).

        Returns:
            One ``[M, dim]`` array per query, in input order (``M``: its tokens).

        Raises:
            SapIndexError: A query is refused (see :meth:`check_queries`).
            ValueError: ``names`` has another length than ``queries``.
        """
        queries = list(queries)
        self.check_queries(queries, names)
        out: list[np.ndarray] = []
        for i in range(0, len(queries), QUERY_BATCH):
            with self._encode_lock:
                out.extend(self.encoder.encode_queries(queries[i:i + QUERY_BATCH]))
        return out

class Searcher(QueryEncoding):
    """Search one index with its bundle's query encoder; both stay loaded.

    >>> with Searcher.open("my-index") as s:
    ...     hits = s.search("what was the 2023 revenue?", k=5)

    How the pages are held (:meth:`stats` says which):

    - ``resident``: every kept vector in memory (float32), exact MaxSim over every page;
    - ``first stage``: an index with a first stage (``sapindex optimize``) of at least
      ``two_stage_min_pages`` pages: its codes memory-mapped, its vectors on disk; each query token
      retrieves its ``kprime`` best vectors from ``nprobe`` inverted lists, and the ``depth`` pages
      with the best estimate are rescored exactly (:mod:`sapindex.search.compressed`);
    - ``streamed``: an index too large for memory with no first stage: read from disk at each search.

    ``exact=True`` (per search) scans every page in any form (from disk for the last two).
    Every returned score is the exact MaxSim. Thread-safe: a service calls it from many threads
    (queries are encoded one batch at a time, searches run on immutable views).

    Args:
        index: The opened index (a reader; the searcher closes it on :meth:`close`).
        encoder: A query encoder of the index's bundle (:meth:`open` checks the fingerprint; this
            constructor does not).
        max_query_tokens: Queries longer than this many tokens are refused; default 512.
        two_stage_min_pages: Pages a first stage must hold to be used; default 5000.
        nprobe: Inverted lists probed per query token in a two-stage search; default 32.
        kprime: Vectors retrieved per query token in a two-stage search; default 1024.
        depth: Pages rescored exactly per query in a two-stage search; default 512.

    Raises:
        SapIndexError: The index's first stage is unreadable (run ``sapindex optimize`` again).
    """

    def __init__(self, index: Index, encoder: Encoder, *, max_query_tokens: int = MAX_QUERY_TOKENS,
                 two_stage_min_pages: int = TWO_STAGE_MIN_PAGES, nprobe: int = NPROBE, kprime: int = KPRIME,
                 depth: int = DEPTH):
        super().__init__(encoder, max_query_tokens)
        self.index = index
        self.two_stage_min_pages, self.nprobe, self.kprime, self.depth = two_stage_min_pages, nprobe, kprime, depth
        self._refresh_lock = threading.Lock()
        self._view = self._open_view()

    @classmethod
    def open(cls, index: str | Path, bundle: str | Path | None = None, device: str = "cpu",
             threads: int | None = None, **kwargs) -> Searcher:
        """Open the index at ``index`` read-only with its bundle (or ``bundle``, same fingerprint).

        Args:
            index: The index directory.
            bundle: The bundle to encode queries with; None: the one the index records (the installed
                built-in bundle when the index was built with it and the recorded path is gone).
            device: ``cpu`` or ``cuda``, where queries are encoded.
            threads: ONNX Runtime threads for the query encoder; None: its default.
            **kwargs (int): The constructor's keywords: ``max_query_tokens``, ``two_stage_min_pages``,
                ``nprobe``, ``kprime``, ``depth``.

        Returns:
            The searcher, its pages loaded as :meth:`holding` says; close it (or use ``with``) when done.

        Raises:
            SapIndexError: ``index`` is not a readable index; the index records no bundle and none is
                given; the bundle is unreadable or has another fingerprint than the index; the device
                cannot be used; the first stage is unreadable.
        """
        idx = Index.open(index)
        return cls(idx, open_encoder(idx, bundle, device, threads), **kwargs)

    def close(self) -> None:
        """Close the index (also on leaving a ``with`` block); the searcher is not used afterwards."""
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    def _open_view(self):
        stage = first_stage.load(self.index.path)
        if stage is not None and stage.n_pages >= self.two_stage_min_pages:
            return compressed.open_view(self.index, stage)
        if stage is not None:
            stage.close()
        if resident.fits(self.index):
            return resident.load(self.index)
        return Streamed.open(self.index)

    def refresh(self) -> bool:
        """Take in what a writer committed (and a first stage ``optimize`` rebuilt) since the last
        call; True when anything changed.

        Every search (and :meth:`stats`) calls it first; call it directly before reading :attr:`version`,
        :meth:`holding` or :meth:`first_stage` to see the latest commit.

        Returns:
            True when the searched view changed (new pages, a new first stage), False otherwise.

        Raises:
            SapIndexError: A newly built first stage is unreadable.
        """
        with self._refresh_lock:
            before = self._view
            info = first_stage.load_info(self.index.path)
            built = before.stage.info["dir"] if isinstance(before, compressed.StageView) else None
            if info is not None and info["dir"] != built and info["pages"] >= self.two_stage_min_pages:
                self._view = self._open_view()  # a new first stage
            elif isinstance(before, compressed.StageView):
                self._view = compressed.refresh_view(self.index, before)
            elif isinstance(before, resident.Snapshot):
                self._view = resident.refresh(self.index, before)
            elif self.index.version != before.version:
                self._view = self._open_view()
            return self._view is not before

    def first_stage(self) -> dict | None:
        """The first stage searched with (its ``first_stage.json``), None when none is used.

        Returns:
            The first stage's ``first_stage.json`` as a dict, or None when the pages are held otherwise.
        """
        view = self._view
        return view.stage.info if isinstance(view, compressed.StageView) else None

    def two_stage(self, exact: bool = False) -> bool:
        """Whether a search now goes through the first stage.

        Args:
            exact: The search's ``exact`` flag: True never goes through the first stage.

        Returns:
            True when the pages are held as a first stage and more pages are live than ``depth``.
        """
        return self._two_stage(self._view, exact)

    def _two_stage(self, view, exact: bool) -> bool:
        return not exact and isinstance(view, compressed.StageView) and view.n_live > self.depth

    @property
    def version(self) -> int:
        """The index version the last search (or refresh) searched."""
        return self._view.version

    def holding(self) -> str:
        """How the pages are held now: ``resident``, ``first stage`` or ``streamed``.

        Returns:
            ``resident``, ``first stage`` or ``streamed``.
        """
        view = self._view
        return ("first stage" if isinstance(view, compressed.StageView)
                else "resident" if isinstance(view, resident.Snapshot) else "streamed")

    def stats(self) -> dict:
        """Pages, vectors and version as searched now, the search path, and the bundle's identity.

        Refreshes first (:meth:`refresh`), so the numbers are those of the latest commit.

        Returns:
            A JSON-ready dict: ``index``, ``version``, ``pages`` (live ones), ``vectors``, ``dim``,
            ``loaded_at``, ``search`` (``two-stage`` or ``exact``), ``holding``, ``first_stage``
            (its settings and the pages added and deleted since it was built; None without one)
            and ``bundle`` (path, family, fingerprint, window).

        Raises:
            SapIndexError: A newly built first stage is unreadable.
        """
        self.refresh()
        view, bundle = self._view, self.encoder.bundle
        out = {"index": str(self.index.path), "version": view.version, "pages": view.n_pages,
               "vectors": view.n_vectors, "dim": self.index.dim, "loaded_at": view.loaded_at.isoformat(),
               "search": "two-stage" if self.two_stage() else "exact", "holding": self.holding(),
               "first_stage": None,
               "bundle": {"path": str(bundle.path), "family": bundle.family,
                          "fingerprint": bundle.fingerprint, "window": list(bundle.window)}}
        if isinstance(view, compressed.StageView):
            info = view.stage.info
            out["pages"] = view.n_live
            out["first_stage"] = {
                "kind": info["kind"], "n_lists": info["n_lists"], "bytes_per_vector": info["bytes_per_vector"],
                "built": info["built"], "pages_at_build": info["pages"], "pages_added_since": view.added.n_pages,
                "pages_deleted_since": int(view.dead.sum()), "nprobe": self.nprobe, "kprime": self.kprime,
                "depth": self.depth, "min_pages": self.two_stage_min_pages}
        return out

    # ------------------------------------------------------------------ queries

    def search(self, query: str, k: int = 10, *, where: str | None = None, path_prefix: str | None = None,
               exact: bool = False) -> list[Hit]:
        """The ``k`` best pages for ``query``, best first (see :meth:`search_many`).

        Args:
            query: The query text.
            k: How many pages to return at most, a positive integer; default 10.
            where: A SQL filter on the index's page columns; None: no filter.
            path_prefix: Only pages whose path starts with it; None: every path.
            exact: Scan every page even where the first stage would be used.

        Returns:
            Up to ``k`` hits, best score first, ties broken by (path, page).

        Raises:
            SapIndexError: The query is refused (empty, too long), ``k`` is not a positive integer, or
                ``where`` is malformed.
        """
        return self.search_many([query], k, where=where, path_prefix=path_prefix, exact=exact)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, *, where: str | None = None,
                    path_prefix: str | None = None, exact: bool = False,
                    names: Sequence[str] | None = None, progress=None) -> list[list[Hit]]:
        """The ``k`` best pages for each query, best first, ties broken by (path, page).

        ``where``: a SQL filter on the index's page columns (``"path LIKE '/archive/finance/%'"``,
        ``"page <= 3"``); ``path_prefix``: only paths starting with it. Both may be given.
        ``exact``: scan every page even where the first stage would be used. ``names``: what a
        refused query is called in the error (default ``query 1``, ``query 2``, ...).
        ``progress(done, total)``: told of the vectors scored by a scan from disk.

        Args:
            queries: The query texts, encoded 32 per text-graph call.
            k: How many pages to return per query at most, a positive integer; default 10.
            where: A SQL filter on the index's page columns; None: no filter.
            path_prefix: Only pages whose path starts with it; None: every path.
            exact: Scan every page even where the first stage would be used.
            names: What each query is called in an error; None: ``query 1``, ``query 2``, ...
            progress (Callable[[int, int], None] | None): Called as ``progress(vectors_done,
                vectors_total)`` during an exact scan (not during a two-stage search); None: no progress.

        Returns:
            One list of up to ``k`` hits per query, in input order, each best score first.

        Raises:
            SapIndexError: ``queries`` is empty or a query is refused (blank, not a string, too long),
                ``k`` is not a positive integer, or ``where`` is malformed.
            ValueError: ``names`` has another length than ``queries``.
        """
        return self.search_vectors(self.encode(queries, names), k, where=where, path_prefix=path_prefix,
                                   exact=exact, progress=progress)

    def search_vectors(self, query_vectors: Sequence[np.ndarray], k: int = 10, *, where: str | None = None,
                       path_prefix: str | None = None, exact: bool = False, progress=None) -> list[list[Hit]]:
        """:meth:`search_many` for queries already encoded (``[M, dim]`` each).

        Args:
            query_vectors: One ``[M, dim]`` array per query (any float dtype; converted to float32).
            k: How many pages to return per query at most, a positive integer; default 10.
            where: A SQL filter on the index's page columns; None: no filter.
            path_prefix: Only pages whose path starts with it; None: every path.
            exact: Scan every page even where the first stage would be used.
            progress (Callable[[int, int], None] | None): Called as ``progress(vectors_done,
                vectors_total)`` during an exact scan (not during a two-stage search); None: no progress.

        Returns:
            One list of up to ``k`` hits per query, in input order, each best score first; an empty
            list for no queries.

        Raises:
            SapIndexError: ``k`` is not a positive integer, or ``where`` is malformed.
            ValueError: A query's vectors are not ``[M >= 1, dim]`` or not finite.
        """
        k = self.checked_k(k)
        qs = [query_matrix(q, self.index.dim) for q in query_vectors]
        if not qs:
            return []
        self.refresh()
        view = self._view
        allowed = view.allowed(self._keys(view, where), path_prefix)
        if self._two_stage(view, exact):
            return self._first_stage_search(view, qs, k, allowed)
        stacked = np.concatenate(qs)
        starts = np.cumsum([0] + [len(q) for q in qs[:-1]]).astype(np.int64)
        tops = [TopK(k) for _ in qs]
        for first, paths, pages, scores in view.scan(stacked, starts, progress):
            if allowed is not None:
                scores[:, ~allowed[first:first + scores.shape[1]]] = -np.inf
            for top, row in zip(tops, scores, strict=True):
                top.add(row, paths, pages)
        return [top.hits() for top in tops]

    def _first_stage_search(self, view: compressed.StageView, qs: list[np.ndarray], k: int,
                            allowed: np.ndarray | None) -> list[list[Hit]]:
        """Token hits for every query in one call, each query's ``depth`` best estimates rescored exactly."""
        d, pages = view.token_hits(np.concatenate(qs), self.kprime, self.nprobe)
        out, row = [], 0
        for q in qs:
            cand = compressed.estimate_top(d[row:row + len(q)], pages[row:row + len(q)], max(self.depth, k),
                                           allowed, view.n_pages, functools.partial(view.centroid_scores, q))
            row += len(q)
            top = TopK(k)
            if len(cand):
                top.add(view.score_pages(q, cand), *view.names(cand))
            out.append(top.hits())
        return out

    def _keys(self, view, where: str | None) -> pa.Table | None:
        """The (content_hash, page) of the view's version that pass ``where`` (None: no filter)."""
        if not where:
            return None
        return pa.Table.from_batches(list(self.index.scan_pages(["content_hash", "page"], where=where,
                                                                version=view.version, chunk_pages=65536)))
