"""The :class:`Searcher`: an index and its query encoder opened once, answering many queries.

Why an object: opening is the expensive part (a real-size text graph is gigabytes; reading every
kept vector of a large index takes seconds), so scripts, ``search --queries`` and ``serve`` open
one and keep it. Each search first checks the index version (:mod:`sapindex.search.resident`):
pages that an ``index`` run commits meanwhile become searchable, nothing is reloaded otherwise.
Scores are exact MaxSim over the kept vectors, the same as :meth:`Index.search`.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from sapindex.errors import SapIndexError
from sapindex.index.store import Hit, Index
from sapindex.index.store.search import TopK, query_matrix
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder
from sapindex.search import first_stage, resident

# Queries longer than this are refused: ColPali-family queries are a sentence or two, and the text
# graph's attention grows with the square of the length (a pasted document would take gigabytes).
MAX_QUERY_TOKENS = 512
QUERY_BATCH = 32  # queries per text-graph call in search_many
# Two-stage search (bench/two_stage.py, RESULTS.md "Two-stage search"): used from this many pages
# on when the index has a first stage (the exact scan costs ~7 us a page on 2 cores: ~35 ms here);
# centroids probed per query token; pages rescored on projections, then exactly.
TWO_STAGE_MIN_PAGES = 5000
NPROBE = 16
CANDIDATES = 4096  # first-stage candidates rescored on the projections
DEPTH = 256  # of those, rescored exactly


def open_encoder(index: Index, bundle_path: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None) -> Encoder:
    """A query encoder for ``index``: its own bundle (or ``bundle_path``), checked by fingerprint."""
    path = bundle_path or index.meta.get("bundle_path")
    if not path:
        raise SapIndexError(f"{index.path}: the index does not record its bundle; pass --bundle")
    if bundle_path is None and index.meta.get("builtin") and not Path(path).exists():
        path = default_bundle_path()  # built with the shipped model, since moved (another install)
    bundle = Bundle.open(path, verify=False)
    if index.bundle_fingerprint not in bundle.fingerprints:
        raise SapIndexError(
            f"{path}: bundle fingerprint {bundle.fingerprint[:12]} differs from the index's "
            f"{index.bundle_fingerprint[:12]}; search with the bundle the index was built with")
    # queries never need the vision graph; no spinning: the MaxSim scoring right after needs the cores
    return Encoder(bundle, device=device, threads=threads, graphs=("text",), spinning=False)


class Searcher:
    """Search one index with its bundle's query encoder; both stay loaded.

    >>> with Searcher.open("my-index") as s:
    ...     hits = s.search("what was the 2023 revenue?", k=5)

    Exact MaxSim over every page, unless the index has a first stage (``sapindex optimize``) and
    holds at least ``two_stage_min_pages`` pages: then the first stage's ``candidates`` best pages
    (:mod:`sapindex.search.first_stage`) are rescored on projections and the ``depth`` best of those
    exactly. ``exact=True`` (per search)
    forces the full scan. Thread-safe: a service calls it from many threads (queries are encoded
    one batch at a time, scoring runs in parallel on immutable snapshots).
    """

    def __init__(self, index: Index, encoder: Encoder, *, max_query_tokens: int = MAX_QUERY_TOKENS,
                 two_stage_min_pages: int = TWO_STAGE_MIN_PAGES, nprobe: int = NPROBE, candidates: int = CANDIDATES,
                 depth: int = DEPTH):
        self.index = index
        self.encoder = encoder
        self.max_query_tokens = max_query_tokens
        self.two_stage_min_pages, self.nprobe, self.depth = two_stage_min_pages, nprobe, depth
        self.candidates = candidates
        self._encode_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        stage = first_stage.load(index.path)
        # the snapshot and the first stage its codes came from, swapped together (one tuple) so that
        # a search never pairs a snapshot with another build's codebook
        self._state: tuple[resident.Snapshot, first_stage.StoredStage | None] = (
            resident.load(index, self._coder(stage)), stage)
        self._postings: tuple[resident.Snapshot, first_stage.Postings] | None = None

    @classmethod
    def open(cls, index: str | Path, bundle: str | Path | None = None, device: str = "cpu",
             threads: int | None = None, **kwargs) -> Searcher:
        """Open the index at ``index`` read-only with its bundle (or ``bundle``, same fingerprint)."""
        idx = Index.open(index)
        return cls(idx, open_encoder(idx, bundle, device, threads), **kwargs)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    @property
    def _snap(self) -> resident.Snapshot:
        return self._state[0]

    @property
    def _stage(self) -> first_stage.StoredStage | None:
        return self._state[1]

    @staticmethod
    def _coder(stage: first_stage.StoredStage | None):
        if stage is None:
            return None
        return lambda b: replace(b, codes=stage.codes_for(b.hashes, b.pages, b.vectors, b.starts),
                                 reduced=np.ascontiguousarray(b.vectors @ stage.projection))

    def refresh(self) -> bool:
        """Take in what a writer committed (and a first stage ``optimize`` rebuilt) since the last
        call; True when anything changed."""
        with self._refresh_lock:
            before, stage = self._state
            info = first_stage.load_info(self.index.path)
            if (info and info["dir"]) != (stage.info["dir"] if stage else None):
                stage = first_stage.load(self.index.path)
                self._state = (resident.load(self.index, self._coder(stage)), stage)
            else:
                self._state = (resident.refresh(self.index, before, self._coder(stage)), stage)
            return self._state[0] is not before

    def first_stage(self) -> dict | None:
        """The first stage searched with (its ``first_stage.json``), None without one."""
        return self._stage.info if self._stage else None

    def two_stage(self, exact: bool = False) -> bool:
        """Whether a search now goes through the first stage."""
        return self._uses_first_stage(*self._state, exact)

    def _uses_first_stage(self, snap: resident.Snapshot, stage: first_stage.StoredStage | None, exact: bool) -> bool:
        return not exact and stage is not None and snap.n_pages >= self.two_stage_min_pages

    @property
    def version(self) -> int:
        """The index version the last search (or refresh) searched."""
        return self._snap.version

    def stats(self) -> dict:
        """Pages, vectors and version as searched now, the search path, and the bundle's identity."""
        self.refresh()
        snap, bundle = self._snap, self.encoder.bundle
        stage = self.first_stage()
        return {"index": str(self.index.path), "version": snap.version, "pages": snap.n_pages,
                "vectors": snap.n_vectors, "dim": self.index.dim, "loaded_at": snap.loaded_at.isoformat(),
                "search": "two-stage" if self.two_stage() else "exact",
                "first_stage": None if stage is None else {
                    "kind": stage["kind"], "n_centroids": stage["n_centroids"], "built": stage["built"],
                    "pages_at_build": stage["pages"], "nprobe": self.nprobe, "candidates": self.candidates,
                    "depth": self.depth, "projection_dims": stage.get("projection_dims"),
                    "min_pages": self.two_stage_min_pages},
                "bundle": {"path": str(bundle.path), "family": bundle.family,
                           "fingerprint": bundle.fingerprint, "window": list(bundle.window)}}

    # ------------------------------------------------------------------ queries

    def check_queries(self, queries: Sequence[str], names: Sequence[str] | None = None) -> None:
        """SapIndexError naming the first query that is not a non-empty string within
        :attr:`max_query_tokens` tokens (``names[i]`` says where query ``i`` came from)."""
        names = list(names) if names is not None else [f"query {i + 1}" for i in range(len(queries))]
        if not queries:
            raise SapIndexError("no queries")
        for name, q in zip(names, queries):
            if not isinstance(q, str) or not q.strip():
                raise SapIndexError(f"{name}: empty query")
        lengths = self.encoder.query_lengths(list(queries))
        for name, n in zip(names, lengths):
            if n > self.max_query_tokens:
                raise SapIndexError(f"{name}: {n} tokens, the limit is {self.max_query_tokens}; shorten the query")

    def encode(self, queries: Sequence[str], names: Sequence[str] | None = None) -> list[np.ndarray]:
        """``[M, dim]`` float32 per query (checked first, by :meth:`check_queries` with ``names``),
        a batch of :data:`QUERY_BATCH` per call."""
        queries = list(queries)
        self.check_queries(queries, names)
        out: list[np.ndarray] = []
        for i in range(0, len(queries), QUERY_BATCH):
            with self._encode_lock:
                out.extend(self.encoder.encode_queries(queries[i:i + QUERY_BATCH]))
        return out

    def search(self, query: str, k: int = 10, *, where: str | None = None, path_prefix: str | None = None,
               exact: bool = False) -> list[Hit]:
        """The ``k`` best pages for ``query``, best first (see :meth:`search_many`)."""
        return self.search_many([query], k, where=where, path_prefix=path_prefix, exact=exact)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, *, where: str | None = None,
                    path_prefix: str | None = None, exact: bool = False,
                    names: Sequence[str] | None = None) -> list[list[Hit]]:
        """The ``k`` best pages for each query, best first, ties broken by (path, page).

        ``where``: a SQL filter on the index's page columns (``"path LIKE '/archive/finance/%'"``,
        ``"page <= 3"``); ``path_prefix``: only paths starting with it. Both may be given.
        ``exact``: scan every page even where the first stage would be used. ``names``: what a
        refused query is called in the error (default ``query 1``, ``query 2``, ...).
        """
        return self.search_vectors(self.encode(queries, names), k, where=where, path_prefix=path_prefix,
                                   exact=exact)

    def search_vectors(self, query_vectors: Sequence[np.ndarray], k: int = 10, *, where: str | None = None,
                       path_prefix: str | None = None, exact: bool = False) -> list[list[Hit]]:
        """:meth:`search_many` for queries already encoded (``[M, dim]`` each)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SapIndexError(f"k must be a positive integer, got {k!r}")
        qs = [query_matrix(q, self.index.dim) for q in query_vectors]
        if not qs:
            return []
        self.refresh()
        snap, stage = self._state
        masks = self._masks(snap, where, path_prefix)
        if self._uses_first_stage(snap, stage, exact) and snap.n_pages > self.depth:
            return [self._two_stage(snap, stage, q, int(k), masks) for q in qs]
        stacked = np.concatenate(qs)
        starts = np.cumsum([0] + [len(q) for q in qs[:-1]]).astype(np.int64)
        tops = [TopK(int(k)) for _ in qs]
        for (block, scores), mask in zip(snap.scores(stacked, starts), masks or [None] * len(snap.blocks)):
            if mask is not None and not mask.all():
                scores[:, ~mask] = -np.inf
            for top, row in zip(tops, scores):
                top.add(row, block.paths, block.pages)
        return [top.hits() for top in tops]

    def _two_stage(self, snap: resident.Snapshot, stage: first_stage.StoredStage, q: np.ndarray, k: int,
                   masks) -> list[Hit]:
        """Centroid estimates -> the ``candidates`` best rescored on projections -> the ``depth``
        best of those rescored exactly."""
        postings = self._postings_for(snap, stage)
        allowed = None if masks is None else np.concatenate(masks)
        depth = max(self.depth, k)
        cand = np.sort(postings.candidates(q @ stage.codebook.centroids.T, self.nprobe,
                                           max(self.candidates, depth), allowed))
        if len(cand) > depth:
            approx = snap.score_pages(q @ stage.projection, cand, reduced=True)
            cand = np.sort(cand[np.argpartition(-approx, depth - 1)[:depth]])
        top = TopK(k)
        top.add(snap.score_pages(q, cand), *snap.names(cand))
        return top.hits()

    def _postings_for(self, snap: resident.Snapshot, stage: first_stage.StoredStage) -> first_stage.Postings:
        cached = self._postings
        if cached is not None and cached[0] is snap:
            return cached[1]
        with self._refresh_lock:
            cached = self._postings
            if cached is not None and cached[0] is snap:
                return cached[1]
            codes = np.concatenate([b.codes for b in snap.blocks])
            lengths = np.concatenate([np.diff(np.append(b.starts, len(b.vectors))) for b in snap.blocks])
            page_of_token = np.repeat(np.arange(snap.n_pages, dtype=np.int64), lengths)
            postings = first_stage.Postings(codes, page_of_token, snap.n_pages, stage.codebook.size)
            self._postings = (snap, postings)
            return postings

    def _masks(self, snap: resident.Snapshot, where: str | None, path_prefix: str | None) -> list[np.ndarray] | None:
        """Per block, which pages pass the filters (None: no filter)."""
        if not where and not path_prefix:
            return None
        allowed = self._allowed(snap, where)
        masks = []
        for block in snap.blocks:
            mask = np.ones(block.n_pages, bool)
            if allowed is not None:
                mask &= np.fromiter(((h, p) in allowed for h, p in zip(block.hashes, block.pages.tolist())),
                                    bool, block.n_pages)
            if path_prefix:
                mask &= np.fromiter((p.startswith(path_prefix) for p in block.paths), bool, block.n_pages)
            masks.append(mask)
        return masks

    def _allowed(self, snap: resident.Snapshot, where: str | None) -> set[tuple[str, int]] | None:
        """The (content_hash, page) keys of the snapshot's version that pass ``where`` (None: no filter)."""
        if not where:
            return None
        keys: set[tuple[str, int]] = set()
        for batch in self.index.scan_pages(["content_hash", "page"], where=where, version=snap.version,
                                           chunk_pages=65536):
            keys.update(zip(batch.column("content_hash").to_pylist(), batch.column("page").to_pylist()))
        return keys
