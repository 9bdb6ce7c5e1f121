"""An index searched through its first stage, never loading every vector: the stage's pages
(mapped codes, vectors read per page) plus the pages indexed since it was built.

Why a view and not a copy: at 10^6 pages the kept vectors are 19 GB as float16. A
:class:`StageView` holds in memory only what the stage cannot: the pages an ``index`` run added
after ``optimize`` (a :class:`~sapindex.search.resident.Snapshot`, float32, coded into an
in-memory token index with the stage's own codebook as they arrive: found by the same first
stage), and which stage pages were deleted since (a mask). ``optimize`` again folds the added
pages into a new stage and frees that memory.

Page numbering: stage pages come first (``0 .. stage.n_pages - 1``, the stage's order), then the
added pages in snapshot order.
"""

from __future__ import annotations

import datetime as _dt
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sapindex.index.store import Index
from sapindex.search import filters, first_stage, kernel, resident
from sapindex.search.first_stage import StoredStage
from sapindex.search.scan import ONE_QUERY

CENTROID_WEIGHT = 0.3  # how much a token's centroid evidence counts below its floor (estimate_top)
POOL_FACTOR = 4  # estimates refined by centroid evidence, per page rescored exactly
SCAN_FLOATS = 1 << 21  # floats per block of an exact scan (its vectors as float32, and its dot products): 8 MB


class AddedTokens:
    """The added pages' vectors coded with the stage's codebook (faiss, in memory), grown as pages
    arrive; a lock, since faiss must not search an index while vectors are added to it."""

    def __init__(self, stage: StoredStage):
        self._stage = stage
        self._index = stage.empty_tokens()
        self._lock = threading.Lock()
        self.lists = np.zeros(0, stage.lists.dtype)  # each added vector's coarse list

    def add(self, vectors: np.ndarray) -> None:
        if not len(vectors):
            return
        vectors = np.ascontiguousarray(vectors, np.float32)
        with self._lock:
            self._index.add(vectors)
            self.lists = np.concatenate([self.lists, self._stage.assign(vectors)])

    def search(self, q: np.ndarray, k: int, nprobe: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate scores and vector ids of each row's ``k`` best among the first ``limit`` vectors."""
        with self._lock:
            d, i = first_stage.search_tokens(self._index, q, k, nprobe)
        stale = i >= limit  # added after the view that asks
        i[stale], d[stale] = -1, -np.inf
        return d, i


@dataclass(frozen=True)
class StageView:
    """Every page of one index version: the stage's (minus ``dead``) and ``added``; immutable,
    except that ``tokens`` grows (a view reads only its first ``added.n_vectors``)."""

    stage: StoredStage
    added: resident.Snapshot
    tokens: AddedTokens
    dead: np.ndarray = field(repr=False)  # [stage pages] bool: deleted since the build

    @property
    def version(self) -> int:
        return self.added.version

    @property
    def loaded_at(self):
        return self.added.loaded_at

    @property
    def n_pages(self) -> int:
        return self.stage.n_pages + self.added.n_pages

    @property
    def n_live(self) -> int:
        return self.n_pages - int(self.dead.sum())

    @property
    def n_vectors(self) -> int:
        return int(self.stage.offsets[-1]) + self.added.n_vectors

    # ------------------------------------------------------------------ first stage

    def token_hits(self, q: np.ndarray, kprime: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """For each row of ``q``: approximate scores and pages (-1: none) of its ``kprime`` best vectors."""
        s = self.stage
        d, i = first_stage.search_tokens(s.tokens, q, kprime, nprobe)
        pages = np.where(i >= 0, np.searchsorted(s.offsets, i, side="right") - 1, -1)
        if self.added.n_vectors:
            d2, i2 = self.tokens.search(q, kprime, nprobe, self.added.n_vectors)
            pages2 = np.where(i2 >= 0, s.n_pages + np.searchsorted(self._added_offsets, i2, side="right") - 1, -1)
            d, pages = np.concatenate([d, d2], axis=1), np.concatenate([pages, pages2], axis=1)
            best = np.argsort(-d, axis=1, kind="stable")[:, :kprime]
            d, pages = np.take_along_axis(d, best, 1), np.take_along_axis(pages, best, 1)
        return d, pages

    def centroid_scores(self, q: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """``[len(pages), len(q)]``: for each of ``pages`` (any order) and each query row, the best
        score of the row against the coarse centroids of the page's vectors (PLAID's centroid
        interaction: list ids only, no vector read)."""
        s = self.stage
        cq = kernel.dots(s.centroids, q)  # [lists, rows]
        out = np.empty((len(pages), len(q)), np.float32)
        for sel, offsets, lists, first_page in ((pages < s.n_pages, s.offsets, s.lists, 0),
                                                (pages >= s.n_pages, self._added_offsets, self.tokens.lists,
                                                 s.n_pages)):
            local = pages[sel] - first_page
            if len(local):
                rows, first = resident.concat_ranges(offsets[local], offsets[local + 1])
                out[sel] = np.maximum.reduceat(np.take(cq, lists[rows], axis=0), first, axis=0)
        return out

    @functools.cached_property
    def _added_offsets(self) -> np.ndarray:
        """``[added pages + 1]``: added page j owns the added vectors ``[j]:[j + 1]`` (their order in ``tokens``)."""
        bases = np.cumsum([0] + [len(b.vectors) for b in self.added.blocks]).astype(np.int64)
        return np.concatenate([b.starts + o for b, o in zip(self.added.blocks, bases[:-1], strict=True)] + [bases[-1:]])

    # ------------------------------------------------------------------ exact scores

    def score_pages(self, q: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query against ``pages`` (ascending), stage pages read from disk."""
        out = np.empty(len(pages), np.float32)
        old = pages < self.stage.n_pages
        if old.any():
            vecs, first = self.stage.read_pages(pages[old])
            out[old] = kernel.maxsim(q, ONE_QUERY, vecs, first)[0]
        if (~old).any():
            out[~old] = self.added.score_pages(q, pages[~old] - self.stage.n_pages)
        return out

    def names(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(paths, page numbers) of ``pages``."""
        paths = np.empty(len(pages), object)
        numbers = np.empty(len(pages), np.int32)
        old = pages < self.stage.n_pages
        if old.any():
            rows = self.stage.pages.take(pa.array(pages[old]))
            paths[old] = rows.column("path").to_pylist()
            numbers[old] = rows.column("page").to_numpy()
        if (~old).any():
            paths[~old], numbers[~old] = self.added.names(pages[~old] - self.stage.n_pages)
        return paths, numbers

    def scan(self, queries: np.ndarray, query_starts: np.ndarray, progress=None) -> Iterator[tuple]:
        """Yield ``(first page, paths, page numbers, scores [Q, pages])`` over every page, the
        stage's read from disk a block at a time (dead pages scored too: the caller masks them)."""
        s = self.stage
        per_block = max(SCAN_FLOATS // max(len(queries), s.dim), 4096)  # vectors, and dot products per row
        first = 0
        while first < s.n_pages:
            last = int(np.searchsorted(s.offsets, s.offsets[first] + per_block, side="right")) - 1
            last = min(max(last, first + 1), s.n_pages)
            vecs = s.read_range(first, last)
            starts = (s.offsets[first:last] - s.offsets[first]).astype(np.int64)
            table = s.pages.slice(first, last - first)
            yield first, table.column("path"), table.column("page"), kernel.maxsim(queries, query_starts, vecs,
                                                                                   starts, threads=0)
            first = last
            if progress:
                progress(int(s.offsets[first]), self.n_vectors)
        for first, paths, numbers, scores in self.added.scan(queries, query_starts):
            yield s.n_pages + first, paths, numbers, scores
        if progress:
            progress(self.n_vectors, self.n_vectors)

    def allowed(self, keys: pa.Table | None, path_prefix: str | None) -> np.ndarray | None:
        """Which pages are searched: live ones whose (content_hash, page) is in ``keys`` and whose
        path starts with ``path_prefix`` (None: every page)."""
        if keys is None and not path_prefix and not self.dead.any():
            return None
        old = ~self.dead
        if keys is not None or path_prefix:
            old &= filters.mask(self.stage.pages, keys, path_prefix)
        new = self.added.allowed(keys, path_prefix)
        return np.concatenate([old, np.ones(self.added.n_pages, bool) if new is None else new])


def estimate_top(d: np.ndarray, pages: np.ndarray, depth: int, allowed: np.ndarray | None, n_pages: int,
                 centroid_scores: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The ``depth`` pages (ascending) with the best estimate from token hits.

    ``d``/``pages`` ``[M, k]``: each query token's best approximate scores and their pages (-1:
    none). A page's estimate is ``sum_i max(score of its best hit for token i, floor_i)``, the
    floor being token i's worst hit (its vectors not retrieved score at most that); pages share
    ``sum_i floor_i``, so pages rank by their summed gains over the floors. Pages without a hit
    fill the ``depth`` when too few were hit (a filter can leave any page).

    ``centroid_scores(pages) -> [pages, M]`` (optional) refines the :data:`POOL_FACTOR` x ``depth``
    best estimates before the ``depth`` are taken: a token that did not hit a page no longer counts
    its floor but ``floor_i - CENTROID_WEIGHT * max(0, floor_i - c_i)``, ``c_i`` the token's best
    score against the page's coarse centroids. Why: where many pages hold near-copies of the same
    vectors, a token's ``k`` hits are all copies of its one best match, every other page gets the
    floor, and the estimate cannot tell a page whose second-best match is close from one with
    nothing (RESULTS.md "A million pages", section 8, measured on both distributions).
    """
    valid = pages >= 0
    floor = np.where(valid, d, np.inf).min(axis=1, keepdims=True)
    floor[~np.isfinite(floor)] = 0
    rows = np.broadcast_to(np.arange(len(d))[:, None], d.shape)[valid]
    gain, hit = (d - floor)[valid], pages[valid].astype(np.int64)
    key = rows.astype(np.int64) * n_pages + hit
    order = np.lexsort((-gain, key))
    key, gain, hit, rows = key[order], gain[order], hit[order], rows[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]  # each (token, page) once: its best hit
    rows, gain = rows[first], gain[first]
    touched, inverse = np.unique(hit[first], return_inverse=True)
    total = np.bincount(inverse, weights=gain, minlength=len(touched))
    live = np.arange(len(touched)) if allowed is None else np.flatnonzero(allowed[touched])
    chosen = _best(live, total[live], depth * POOL_FACTOR if centroid_scores else depth)
    if centroid_scores is not None and len(chosen) > depth:
        short = np.maximum(floor[:, 0] - centroid_scores(touched[chosen]), 0)  # [pool, M]
        at = np.full(len(touched), -1)
        at[chosen] = np.arange(len(chosen))
        hits_at = at[inverse]
        short[hits_at[hits_at >= 0], rows[hits_at >= 0]] = 0  # a token that hit the page counts its hit
        chosen = _best(chosen, total[chosen] - CENTROID_WEIGHT * short.sum(axis=1), depth)
    chosen = touched[chosen]
    if len(chosen) < depth:
        pool = np.ones(n_pages, bool) if allowed is None else allowed.copy()
        pool[touched] = False
        chosen = np.concatenate([chosen, np.flatnonzero(pool)[:depth - len(chosen)]])
    return np.sort(chosen)


def _best(items: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` items with the highest scores (all of them when there are fewer), in no order."""
    return items[np.argpartition(-scores, n - 1)[:n]] if len(items) > n else items


def open_view(index: Index, stage: StoredStage) -> StageView:
    """The stage plus the index's pages indexed after it, at the index's current version."""
    added = resident.load(index, since=_newest(stage))
    tokens = AddedTokens(stage)
    tokens.add(_vectors_from(added, 0))
    deleted = resident.count_rows(index, added.version) != stage.n_pages + added.n_pages
    return StageView(stage, added, tokens, _dead(index, stage, added.version) if deleted else
                     np.zeros(stage.n_pages, bool))


def refresh_view(index: Index, view: StageView) -> StageView:
    """``view`` if the index has not changed, else a view of its current version: added pages
    appended (and coded), or, after deletions, the added pages read and coded anew."""
    if index.version == view.version:
        return view
    added = resident.refresh(index, view.added, since=_newest(view.stage))
    tokens = view.tokens
    if added.loaded_at != view.added.loaded_at:
        tokens = AddedTokens(view.stage)
        tokens.add(_vectors_from(added, 0))
    else:
        tokens.add(_vectors_from(added, view.added.n_vectors))
    dead = view.dead
    if resident.count_rows(index, added.version) != view.stage.n_pages - int(dead.sum()) + added.n_pages:
        dead = _dead(index, view.stage, added.version)
    return StageView(view.stage, added, tokens, dead)


def _newest(stage: StoredStage):
    t = stage.info.get("newest_indexed_at")
    return _dt.datetime.fromisoformat(t).replace(tzinfo=None) if t else None


def _vectors_from(snap: resident.Snapshot, start: int) -> np.ndarray:
    """The snapshot's vectors from flat row ``start`` on."""
    parts, at = [], 0
    for b in snap.blocks:
        if at + len(b.vectors) > start:
            parts.append(b.vectors[max(start - at, 0):])
        at += len(b.vectors)
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def _dead(index: Index, stage: StoredStage, version: int) -> np.ndarray:
    """Stage pages no longer in the index at ``version`` (callers ask when its row count says some went)."""
    keys = pa.Table.from_batches(list(index.scan_pages(["content_hash", "page"], version=version,
                                                       chunk_pages=65536)))
    dead = np.ones(stage.n_pages, bool)
    dead[filters.rows_in(stage.pages, keys)] = False
    return dead
