"""Exact MaxSim search over an index, one chunk of pages at a time (no approximate index):
:func:`search_index`, and the pieces the searcher's views share (:class:`TopK`, :func:`query_matrix`).

Why a scan: a SAP-pruned page keeps a few dozen vectors, so scoring every page exactly costs one
matmul per chunk of pages and stays bounded in memory by the chunk; per chunk, all kept vectors
are concatenated and scored with :func:`sapindex.search.kernel.maxsim` (stored float16 through
ONNX Runtime, the same dot products as :func:`sapindex.sap.maxsim_segments`, which the eval's
score matrix runs). ``score(page) = sum_i max_j q_i . d_j`` over the query's vectors q_i and
the page's kept vectors d_j (stored float16 -> computed float32). Ties are broken by (path, page),
so the ranking does not depend on the order or the chunking of the stored pages. :class:`TopK`
is the merge that this scan and the :class:`~sapindex.search.Searcher`'s views share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sapindex.index.store import Hit, Index
from sapindex.index.store._arrow import vectors_from_list
from sapindex.index.store.schema import DEFAULT_CHUNK_PAGES
from sapindex.search import kernel

ONE_QUERY = np.zeros(1, dtype=np.int64)  # query_starts of a single query


def query_matrix(query_vectors: Any, dim: int) -> np.ndarray:
    """The query's vectors as float32 ``[M >= 1, dim]``; ValueError when they are not."""
    q = np.asarray(query_vectors, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim or q.shape[0] < 1:
        raise ValueError(f"query_vectors must be [M >= 1, {dim}], got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("query_vectors are not finite")
    return q


def _order(c: tuple[float, str, int]) -> tuple[float, str, int]:
    return (-c[0], c[1], c[2])


def _take(values: Sequence | pa.Array, idx: np.ndarray) -> list:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.take(pa.array(idx)).to_pylist()
    if isinstance(values, np.ndarray):
        return values[idx].tolist()
    return [values[i] for i in idx.tolist()]


class TopK:
    """The ``k`` best (score, path, page) of scores that arrive a chunk at a time (every page when
    ``k`` is None); only the top k of each chunk and its ties stay in memory. Pages scored ``-inf``
    (filtered out) are never returned."""

    def __init__(self, k: int | None):
        self.k = k
        self._best: list[tuple[float, str, int]] = []

    def add(self, scores: np.ndarray, paths: Sequence | pa.Array, pages: Sequence | pa.Array | np.ndarray) -> None:
        n = scores.shape[0]
        if self.k is not None and n > self.k:
            kth = np.partition(scores, n - self.k)[n - self.k]
            idx = np.nonzero(scores >= kth)[0]  # the top k and every tie with the k-th
        else:
            idx = np.arange(n)
        idx = idx[np.isfinite(scores[idx])]
        if not idx.size:
            return
        self._best.extend(zip(scores[idx].tolist(), _take(paths, idx), _take(pages, idx), strict=True))
        if self.k is not None and len(self._best) > 4 * self.k:
            self._best = sorted(self._best, key=_order)[:self.k]  # (score, path, page) is a total order: exact

    def hits(self) -> list[Hit]:
        best = sorted(self._best, key=_order)
        if self.k is not None:
            best = best[:self.k]
        return [Hit(path, int(page), float(score)) for score, path, page in best]


def ranked_hits(batches: Iterable[pa.RecordBatch], q: np.ndarray, dim: int, k: int | None) -> list[Hit]:
    """The ``k`` best pages (every page when ``k`` is None) of batches with columns path, page
    and vectors, best first."""
    top = TopK(k)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        vecs, offsets = vectors_from_list(batch.column("vectors"), dim, dtype=None)
        scores = kernel.maxsim(q, ONE_QUERY, vecs, offsets[:-1], threads=0)[0]  # [pages]
        top.add(scores, batch.column("path"), batch.column("page"))
    return top.hits()


def search_index(index: Index, query_vectors: Any, k: int | None = 10,
                 chunk_pages: int = DEFAULT_CHUNK_PAGES) -> list[Hit]:
    """Exact MaxSim of one query ``[M, dim]`` over every page of ``index``, best first, reading
    ``chunk_pages`` pages at a time. Ties are broken by (path, page). ``k=None`` returns every
    page. (A :class:`~sapindex.search.Searcher` holds the index for many queries; this reads it once.)

    Args:
        index: The opened index to scan (its latest version).
        query_vectors: One query's vectors, array-like ``[M >= 1, dim]`` (converted to float32).
        k: How many pages to return at most; None: every page; 0 or less: none.
        chunk_pages: Pages read and scored per step (the memory bound), at least 1; default 1024.

    Returns:
        Up to ``k`` hits, best score first, ties broken by (path, page).

    Raises:
        ValueError: ``query_vectors`` is not ``[M >= 1, index.dim]`` or not finite, or
            ``chunk_pages`` is below 1.
    """
    q = query_matrix(query_vectors, index.dim)
    if k is not None and k <= 0:
        return []
    if chunk_pages < 1:
        raise ValueError(f"chunk_pages must be >= 1, got {chunk_pages}")
    return ranked_hits(index.scan_pages(["path", "page", "vectors"], chunk_pages=chunk_pages), q, index.dim, k)
