"""Exact late-interaction scores and ranking metrics for ``sapindex eval`` (numpy only).

:func:`maxsim_matrix` scores every query against every page with exact MaxSim,
``score(q, p) = sum_i max_j <q_i, p_j>``, for any number of query tokens ``M_i`` and page vectors
``k_j`` (a pruned page keeps a different number of vectors than a full one). Nothing is padded:
zero padding would win the max whenever all real dot products are negative, and would silently
favour the pages that need the most padding. Instead the pages' vectors are concatenated and
each (query chunk x page chunk) block is scored by :func:`sapindex.sap.maxsim_segments` (one
matmul, a segmented max over a page's vectors, a segmented sum over a query's tokens), the same
kernel the index's search runs.

The ranking metrics follow pytrec_eval (trec_eval), which is what BEIR, mteb and the ViDoRe
benchmark compute NDCG and recall with, so the numbers are comparable with published ones:

- relevance is binary (a qrel score > 0 is relevant); gain 1, ``DCG@k = sum rel_i / log2(i + 1)``
  over ranks ``i = 1..k``; ``IDCG@k`` is the DCG of ``min(k, n_relevant)`` relevant pages on top;
- **ties**: pages are ranked by score descending, then by page id *descending* (trec_eval sorts
  equal scores with ``strcmp(docno2, docno1)``); ids compare as Python strings (code point order,
  the same as UTF-8 byte order, hence as ``strcmp``). Without ``page_ids`` the column index stands
  in for the id, so of two tied pages the later column ranks first. Applying one rule to every
  metric (MRR included; mteb computes its MRR itself and breaks ties by insertion order) keeps the
  metrics consistent with each other and the result independent of page order;
- recall@k is relevant-in-top-k / n_relevant; MRR@k is 1 / rank of the first relevant page, 0 if
  it is below k;
- a query with no relevant page has no defined NDCG or recall: its per-query values are NaN and
  :func:`retrieval_metrics` leaves it out of the means (and lists it).

The metrics only need the rank of each relevant page, ``1 + #pages that beat it``, computed
exactly (ties included) without sorting the whole score matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sapindex.sap import maxsim_segments

__all__ = ["maxsim_matrix", "rank_of_relevant", "ndcg_at_k", "recall_at_k", "mrr_at_k", "retrieval_metrics"]

_BLOCK_ELEMENTS = 1 << 22  # one score block: 4 Mi float32 (16 MiB), reused for every chunk pair


def _concat(arrays: Sequence[np.ndarray], what: str, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Stack 2-D arrays into one float32 matrix; return it and each array's start row."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    for i, a in enumerate(arrays):
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"{what} {i}: expected a non-empty [n, dim] array, got shape {a.shape}")
        if dim is not None and a.shape[1] != dim:
            raise ValueError(f"{what} {i}: dim {a.shape[1]} != {dim}")
        dim = a.shape[1]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays]), starts


def _chunks(starts: np.ndarray, total: int, max_rows: int, max_items: int | None = None):
    """Split consecutive items (given by start rows) into groups of at most ``max_rows`` rows
    (a single larger item still gets a group of its own) and ``max_items`` items."""
    ends = np.append(starts[1:], total)
    first = 0
    n = len(starts)
    while first < n:
        last = first + 1
        while last < n and ends[last] - starts[first] <= max_rows and (max_items is None or last - first < max_items):
            last += 1
        yield first, last
        first = last


def maxsim_matrix(queries: Sequence[np.ndarray], pages: Sequence[np.ndarray], chunk_pages: int = 64,
                  block_elements: int = _BLOCK_ELEMENTS) -> np.ndarray:
    """Exact MaxSim scores ``[Q, D]`` (float32) of ``queries[i]`` (``[M_i, dim]``) against
    ``pages[j]`` (``[k_j, dim]``).

    ``chunk_pages`` pages and as many whole queries as fit in ``block_elements`` scores form one
    matmul block; the block buffer is allocated once and reused (a fresh 16+ MiB array per block
    costs more in page faults than the matmul). Memory is bounded by the block plus the inputs.
    Every query and page needs at least one vector: an empty one has no defined MaxSim.
    """
    if not len(queries) or not len(pages):
        return np.zeros((len(queries), len(pages)), dtype=np.float32)
    q_all, q_starts = _concat(queries, "query", None)
    p_all, p_starts = _concat(pages, "page", q_all.shape[1])
    out = np.empty((len(queries), len(pages)), dtype=np.float32)
    buffer = np.empty(block_elements, dtype=np.float32)
    for p0, p1 in _chunks(p_starts, len(p_all), max_rows=max(1, block_elements // 256), max_items=chunk_pages):
        col0 = p_starts[p0]
        col1 = p_starts[p1] if p1 < len(pages) else len(p_all)
        page_block = p_all[col0:col1]  # [cols, dim]
        cols = col1 - col0
        page_offsets = p_starts[p0:p1] - col0
        max_rows = max(1, block_elements // cols)
        for q0, q1 in _chunks(q_starts, len(q_all), max_rows=max_rows):
            row0 = q_starts[q0]
            row1 = q_starts[q1] if q1 < len(queries) else len(q_all)
            rows = row1 - row0
            # the reused buffer; None (numpy allocates) for one query longer than the block
            sims = buffer[: rows * cols].reshape(rows, cols) if rows * cols <= block_elements else None
            out[q0:q1, p0:p1] = maxsim_segments(q_all[row0:row1], q_starts[q0:q1] - row0, page_block,
                                                page_offsets, out=sims)
    return out


# --------------------------------------------------------------------------- ranking metrics


def _tie_keys(n_pages: int, page_ids: Sequence[str] | None) -> np.ndarray:
    """An int per page, larger = ranks first among equal scores (page id descending)."""
    if page_ids is None:
        return np.arange(n_pages)
    if len(page_ids) != n_pages:
        raise ValueError(f"{len(page_ids)} page ids for {n_pages} score columns")
    keys = np.empty(n_pages, dtype=np.int64)
    keys[sorted(range(n_pages), key=lambda j: str(page_ids[j]))] = np.arange(n_pages)
    return keys


def rank_of_relevant(scores: np.ndarray, relevant: np.ndarray, page_ids: Sequence[str] | None = None) -> np.ndarray:
    """1-based rank of every relevant page (``[Q, D]`` int, 0 where not relevant).

    rank = 1 + number of pages with a higher score, or an equal score and a larger page id.
    """
    scores, relevant = _as_2d(scores, relevant)
    keys = _tie_keys(scores.shape[1], page_ids)
    ranks = np.zeros(scores.shape, dtype=np.int64)
    q_idx, p_idx = np.nonzero(relevant)
    step = max(1, _BLOCK_ELEMENTS // max(1, scores.shape[1]))
    for a in range(0, len(q_idx), step):
        q, p = q_idx[a:a + step], p_idx[a:a + step]
        rows, own = scores[q], scores[q, p][:, None]
        beats = (rows > own) | ((rows == own) & (keys[None, :] > keys[p][:, None]))
        ranks[q, p] = 1 + beats.sum(axis=1)
    return ranks


def _as_2d(scores, relevant) -> tuple[np.ndarray, np.ndarray]:
    scores = np.atleast_2d(np.asarray(scores))
    relevant = np.atleast_2d(np.asarray(relevant)) > 0
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity: the ranking would be undefined")
    return scores, relevant


def _per_query(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return np.where(n_relevant > 0, values, np.nan)


def _ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    n_rel = (ranks > 0).sum(axis=1)
    dcg = np.where((ranks >= 1) & (ranks <= k), 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0).sum(axis=1)
    ideal = np.cumsum(np.concatenate([[0.0], 1.0 / np.log2(np.arange(2, k + 2))]))[np.minimum(n_rel, k)]
    return _per_query(dcg / np.where(ideal > 0, ideal, 1.0), n_rel)


def _recall(ranks: np.ndarray, k: int) -> np.ndarray:
    n_rel = (ranks > 0).sum(axis=1)
    return _per_query(((ranks >= 1) & (ranks <= k)).sum(axis=1) / np.maximum(n_rel, 1), n_rel)


def _mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    n_rel = (ranks > 0).sum(axis=1)
    first = np.where(ranks > 0, ranks, np.iinfo(np.int64).max).min(axis=1)
    return _per_query(np.where(first <= k, 1.0 / np.minimum(first, k + 1), 0.0), n_rel)


def ndcg_at_k(scores, relevant, k: int, page_ids: Sequence[str] | None = None) -> np.ndarray:
    """Per-query NDCG@k ``[Q]`` (binary gains; NaN for a query without relevant pages).

    ``scores`` and ``relevant`` (bool or 0/1) are ``[Q, D]`` (or ``[D]`` for one query).
    """
    return _ndcg(rank_of_relevant(scores, relevant, page_ids), k)


def recall_at_k(scores, relevant, k: int, page_ids: Sequence[str] | None = None) -> np.ndarray:
    """Per-query recall@k ``[Q]``: relevant pages in the top k / relevant pages (NaN if none)."""
    return _recall(rank_of_relevant(scores, relevant, page_ids), k)


def mrr_at_k(scores, relevant, k: int, page_ids: Sequence[str] | None = None) -> np.ndarray:
    """Per-query reciprocal rank of the first relevant page, 0 if it is below k (NaN if none)."""
    return _mrr(rank_of_relevant(scores, relevant, page_ids), k)


def retrieval_metrics(scores: np.ndarray, query_ids: Sequence[str], page_ids: Sequence[str],
             qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """All metrics for a ``[Q, D]`` score matrix whose rows are ``query_ids`` and columns ``page_ids``.

    Returns ``{"ndcg@k", "recall@k", "mrr@k": mean over evaluated queries (float) for every k in
    ks, "per_query": {same names: [Q] float arrays, NaN for excluded queries}, "query_ids": list,
    "n_queries": int (evaluated), "excluded_queries": ids without a relevant page among page_ids}``.
    With the default ks this includes NDCG@5, NDCG@10, recall@1, recall@5 and MRR@10.
    A qrel score > 0 is relevant; relevant pages missing from ``page_ids`` are ignored.
    """
    scores = np.asarray(scores)
    if scores.shape != (len(query_ids), len(page_ids)):
        raise ValueError(f"scores {scores.shape} != ({len(query_ids)} queries, {len(page_ids)} pages)")
    column = {str(p): j for j, p in enumerate(page_ids)}
    relevant = np.zeros(scores.shape, dtype=bool)
    for i, q in enumerate(query_ids):
        for p, score in qrels.get(str(q), {}).items():
            j = column.get(str(p))
            if j is not None and score > 0:
                relevant[i, j] = True
    ranks = rank_of_relevant(scores, relevant, [str(p) for p in page_ids])
    per_query = {f"{name}@{k}": fn(ranks, k)
                 for k in ks for name, fn in (("ndcg", _ndcg), ("recall", _recall), ("mrr", _mrr))}
    evaluated = relevant.any(axis=1)
    result: dict = {name: float(values[evaluated].mean()) if evaluated.any() else float("nan")
                    for name, values in per_query.items()}
    result.update(per_query=per_query, query_ids=[str(q) for q in query_ids], n_queries=int(evaluated.sum()),
                  excluded_queries=[str(q) for q, ok in zip(query_ids, evaluated, strict=True) if not ok])
    return result
