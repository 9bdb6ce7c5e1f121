"""Exact MaxSim search over an index, one chunk of pages at a time (no approximate index).

Why a scan: a SAP-pruned page keeps a few dozen vectors, so scoring every page exactly costs one
matmul per chunk of pages and stays bounded in memory by the chunk; per chunk, all kept vectors
are concatenated and scored with :func:`sapindex.sap.maxsim_segments` (the kernel the eval's
score matrix runs too). ``score(page) = sum_i max_j q_i . d_j`` over the query's vectors q_i and
the page's kept vectors d_j (stored float16 -> computed float32). Ties are broken by (path, page),
so the ranking does not depend on the order or the chunking of the stored pages.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from sapindex.index.store._arrow import vectors_from_list
from sapindex.index.store.schema import Hit
from sapindex.sap import maxsim_segments

_ONE_QUERY = np.zeros(1, dtype=np.int64)  # query_starts of a single query


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


def ranked_hits(batches: Iterable[pa.RecordBatch], q: np.ndarray, dim: int, k: int | None) -> list[Hit]:
    """The ``k`` best pages (every page when ``k`` is None) of batches with columns path, page
    and vectors, best first; only the top k of each chunk (and its ties) is kept in memory."""
    best: list[tuple[float, str, int]] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        vecs, offsets = vectors_from_list(batch.column("vectors"), dim)
        scores = maxsim_segments(q, _ONE_QUERY, vecs, offsets[:-1])[0]  # [pages]
        n = scores.shape[0]
        if k is not None and n > k:
            kth = np.partition(scores, n - k)[n - k]
            idx = np.nonzero(scores >= kth)[0]  # the top k and every tie with the k-th
        else:
            idx = np.arange(n)
        paths = batch.column("path").take(pa.array(idx)).to_pylist()
        pages = batch.column("page").take(pa.array(idx)).to_pylist()
        best.extend(zip(scores[idx].tolist(), paths, pages))
        if k is not None and len(best) > 4 * k:
            best = sorted(best, key=_order)[:k]  # (score, path, page) is a total order: exact
    best.sort(key=_order)
    if k is not None:
        best = best[:k]
    return [Hit(path, int(page), float(score)) for score, path, page in best]
