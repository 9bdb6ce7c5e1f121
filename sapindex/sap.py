"""The Structural Anchor Pruning math, in plain numpy.

This module is the *reference* definition of SAP (docs/SAP_METHOD.md is the method). Calibration
(torch side) and the torch-free runtime call its selection functions directly; the two other
computations of in-degree (the torch hook ``sapindex.models.base.in_degree_batch`` and the
in-graph centrality of the exported text graphs) are tested against :func:`in_degree`. It must
never import torch or transformers (a test checks this in a subprocess).

Conventions:
- attention probabilities are ``[H, S, S]`` (one layer) or ``[L, H, S, S]`` (a window of
  layers), indexed ``[head, query position i, key position j]``;
- ``visual`` is a boolean mask ``[S]`` of the visual-token positions;
- multi-vector embeddings are ``[tokens, dim]`` float arrays (L2-normalised by the model).
"""

from __future__ import annotations

import math

import numpy as np

# The paper's operating point: keep 10 % of a page's visual tokens (gamma_cal of calibration and
# the default of index, demo and export validation).
DEFAULT_KEEP_RATIO = 0.10
# The paper's three operating points, reported side by side by `sapindex eval`.
EVAL_KEEP_RATIOS: tuple[float, ...] = (0.2, 0.1, 0.05)
# Seeds of the random-selection floor (calibration) and of the random baseline (eval): the paper
# averages five.
RANDOM_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)

__all__ = [
    "DEFAULT_KEEP_RATIO",
    "EVAL_KEEP_RATIOS",
    "RANDOM_SEEDS",
    "in_degree",
    "select_window",
    "alignment_start",
    "window_width",
    "keep_count",
    "top_k",
    "causal_correction",
    "select",
    "random_k",
    "maxsim",
    "maxsim_segments",
    "score_retention",
]


def in_degree(attn: np.ndarray, visual: np.ndarray) -> np.ndarray:
    """Visual in-degree centrality of each visual token, ``[V]``.

    Rows and columns are restricted to visual positions (no renormalisation), the attention
    each visual column receives is summed over visual rows, averaged over heads (SAP-Mean) and
    then over layers when ``attn`` holds several.
    """
    attn = np.asarray(attn)
    visual = np.asarray(visual)
    if visual.ndim != 1 or visual.dtype != np.bool_:
        raise ValueError(f"visual must be a 1-D boolean mask, got dtype {visual.dtype} and shape {visual.shape}")
    if attn.ndim == 3:
        attn = attn[None]
    if attn.ndim != 4:
        raise ValueError(f"attn must be [H, S, S] or [L, H, S, S], got shape {attn.shape}")
    seq = visual.shape[0]
    if attn.shape[-1] != seq or attn.shape[-2] != seq:
        raise ValueError(f"attn covers {attn.shape[-2]}x{attn.shape[-1]} positions but visual has {seq}")
    if not visual.any():
        raise ValueError("visual mask selects no token")
    sub = attn[:, :, visual][:, :, :, visual]  # [L, H, V, V]
    per_head = sub.astype(np.float64).sum(axis=2)  # [L, H, V]: column sums over visual rows
    return per_head.mean(axis=1).mean(axis=0)  # [V]


def window_width(n_layers: int, rho: float = 0.2) -> int:
    """``ceil(rho * L)``, computed so that float noise (0.28 * 25 = 7.000000000000001) does not add a layer."""
    return max(1, math.ceil(round(rho * n_layers, 9)))


def alignment_start(sr: np.ndarray) -> int:
    """First layer ``l*`` of the trailing run of layers whose SR is below the curve's median (``L`` if none)."""
    sr = _as_curve(sr)
    below = sr < np.median(sr)
    start = len(sr)
    while start > 0 and below[start - 1]:
        start -= 1
    return start


def select_window(sr, rho: float = 0.2) -> tuple[int, int]:
    """Algorithm 1 of the SAP paper: the ``w = ceil(rho * L)`` layers just before the alignment region.

    Returns ``(start, end)`` with ``end`` exclusive, 0-indexed decoder layers.
    """
    sr = _as_curve(sr)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    end = alignment_start(sr)
    start = max(0, end - window_width(len(sr), rho))
    return start, end


def peak_window(sr, rho: float = 0.2) -> tuple[int, int]:
    """The ``w = ceil(rho * L)`` consecutive layers of highest mean SR (earliest on ties).

    Not in the paper: Algorithm 1 takes the layers just before the trailing below-median run, or
    the last ``w`` when there is none, which can pass over an early peak (the built-in micro model
    peaks at layer 1 of 6; bench/RESULTS.md compares both windows).
    """
    sr = _as_curve(sr)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    width = window_width(len(sr), rho)
    means = np.convolve(sr, np.full(width, 1.0 / width), mode="valid")  # [L - w + 1]
    start = int(np.argmax(means))
    return start, start + width


WINDOW_RULES = {"algorithm1": select_window, "sr-peak": peak_window}


def keep_count(n: int, ratio: float) -> int:
    """Number of vectors kept out of ``n`` at keep ratio ``ratio``: ``min(n, max(1, round(n * ratio)))``."""
    _check_ratio(ratio)
    if n < 1:
        raise ValueError(f"cannot keep tokens out of n={n}; a page needs at least one visual token")
    return min(n, max(1, round(n * ratio)))


def top_k(scores, ratio: float) -> np.ndarray:
    """Positions of the ``keep_count`` highest scores, ties to the lower index, in ascending order."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    return highest(scores, keep_count(scores.shape[0], ratio))


def highest(scores, k: int) -> np.ndarray:
    """Indices of the ``k`` highest of 1-D ``scores``, ties to the lower index, in ascending order:
    :func:`top_k`'s rule for a count given directly (``sapindex prune`` cuts stored scores to the
    ``keep_count`` of the page's full token count)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = np.lexsort((np.arange(scores.shape[0]), -scores))  # by score desc, then index asc
    return np.sort(order[:k])


def jaccard(ours, theirs) -> float:
    """|ours & theirs| / |ours | theirs| of two kept sets (token indices): how far two selections agree."""
    return len(np.intersect1d(ours, theirs)) / max(len(np.union1d(ours, theirs)), 1)


def causal_correction(centrality, seq_rank=None) -> np.ndarray:
    """In-degree per attending row for ``V`` visual tokens under causal attention.

    With a causal decoder visual token ``j`` can only be attended by the visual rows at or
    after it in the *sequence*, ``V - seq_rank[j]`` of them, so raw column sums favour early
    tokens. Dividing by that count turns the sum into the mean attention per row that can see
    the token. ``seq_rank [V]`` is each token's rank among the visual tokens in sequence order
    (``TokenLayout.seq_rank``); it is needed whenever ``centrality`` is not in sequence order
    (Idefics3 pages are stored tile-interleaved rows first and the global tile, last in the
    sequence, at the end: dividing by ``V - spatial index`` would be wrong there). Omitted, the
    tokens are taken to be in sequence order (one contiguous run, as Qwen2-VL). Not in the SAP
    paper: an option (``--position-correction``) to be measured, off by default.
    """
    centrality = np.asarray(centrality, dtype=np.float64)
    if centrality.ndim != 1 or centrality.size == 0:
        raise ValueError(f"centrality must be a non-empty 1-D array, got shape {centrality.shape}")
    n = centrality.size
    rank = np.arange(n) if seq_rank is None else np.asarray(seq_rank, dtype=np.int64)
    if rank.shape != (n,) or not np.array_equal(np.sort(rank), np.arange(n)):
        raise ValueError(f"seq_rank must be a permutation of 0..{n - 1}, got shape {rank.shape}")
    return centrality / (n - rank)


def ranking_scores(centrality, seq_rank=None) -> np.ndarray:
    """The float64 scores SAP ranks tokens by: the centrality, or, given each token's sequence
    rank, its :func:`causal_correction` (causal decoders only). The index stores them per kept
    token, so that a lower keep ratio can be taken later without re-encoding."""
    centrality = np.asarray(centrality, dtype=np.float64)
    return centrality if seq_rank is None else causal_correction(centrality, seq_rank)


def select(centrality, ratio: float, seq_rank=None) -> np.ndarray:
    """SAP's kept positions: the ``keep_count(n, ratio)`` highest :func:`ranking_scores` (:func:`top_k`)."""
    return top_k(ranking_scores(centrality, seq_rank), ratio)


def random_k(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A uniform random subset of ``keep_count(n, ratio)`` positions, ascending: the random-selection floor."""
    return np.sort(rng.choice(n, size=keep_count(n, ratio), replace=False))


def maxsim(q, d) -> float:
    """Late-interaction score ``sum_i max_j q_i . d_j`` of a query ``[M, dim]`` against a page ``[N, dim]``."""
    q = np.asarray(q, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if q.ndim != 2 or d.ndim != 2:
        raise ValueError(f"maxsim needs 2-D arrays, got query {q.shape} and page {d.shape}")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"embedding dims differ: query {q.shape[1]}, page {d.shape[1]}")
    if q.shape[0] == 0 or d.shape[0] == 0:
        raise ValueError(f"maxsim needs at least one vector on each side, got {q.shape[0]} and {d.shape[0]}")
    return float((q @ d.T).max(axis=1).sum())


def maxsim_segments(queries: np.ndarray, query_starts: np.ndarray, pages: np.ndarray, page_starts: np.ndarray,
                    out: np.ndarray | None = None) -> np.ndarray:
    """MaxSim of many queries against many pages at once, ``[Q, P]``: the batched kernel that the
    index's search and the eval's score matrix both run (:func:`maxsim` is the reference it is
    tested against).

    ``queries [rows, dim]`` holds the queries' vectors one after another, query ``i`` starting at
    row ``query_starts[i]``; ``pages [cols, dim]`` holds the pages' vectors the same way, page ``j``
    starting at ``page_starts[j]``. Every query and page must have at least one vector (an empty
    one has no defined MaxSim). One matmul gives every dot product, a segmented
    ``np.maximum.reduceat`` the max over each page's vectors and a segmented ``np.add.reduceat``
    the sum over each query's vectors: nothing is padded (zero padding would win the max whenever
    every real dot product is negative). ``out`` (``[rows, cols]``, optional) receives the dot
    products, so a caller scoring many blocks can reuse one buffer. Computed in the inputs' dtype.
    """
    sims = np.matmul(queries, pages.T, out=out)  # [rows, cols]
    best = np.maximum.reduceat(sims, page_starts, axis=1)  # [rows, P]
    return np.add.reduceat(best, query_starts, axis=0)  # [Q, P]


def score_retention(q, d, kept) -> float:
    """Oracle Score Retention: MaxSim over the kept page vectors divided by MaxSim over all of them.

    Defined as 1.0 when the full score is 0.
    """
    d = np.asarray(d)
    kept = np.asarray(kept)
    if kept.ndim != 1 or kept.size == 0:
        raise ValueError(f"kept must be a non-empty 1-D index array, got shape {kept.shape}")
    if not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(f"kept must hold integer positions, got dtype {kept.dtype}")
    if kept.min() < 0 or kept.max() >= d.shape[0]:
        raise ValueError(f"kept positions must lie in [0, {d.shape[0]}), got {kept.min()}..{kept.max()}")
    full = maxsim(q, d)
    if full == 0.0:
        return 1.0
    return maxsim(q, d[kept]) / full


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float, np.floating)) and 0.0 < float(ratio) <= 1.0):
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio!r}")


def _as_curve(sr) -> np.ndarray:
    sr = np.asarray(sr, dtype=np.float64)
    if sr.ndim != 1 or sr.size == 0:
        raise ValueError(f"the SR curve must be a non-empty 1-D sequence, got shape {sr.shape}")
    if not np.isfinite(sr).all():
        raise ValueError("the SR curve contains NaN or infinite values")
    return sr
