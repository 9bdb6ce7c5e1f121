"""What a compression method keeps of a page: one record for every method (torch-free).

A page enters as ``vectors [n, dim]`` (its visual tokens' final vectors, L2-normalised, spatial
order) and leaves as a :class:`Kept`. Selections keep rows of the page; merges store new vectors,
placed at an anchor token when they have one. The index, the eval, the overlays and ``explain``
all read this one record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Kept", "check_vectors"]


@dataclass(frozen=True)
class Kept:
    """One page compressed.

    ``vectors [k, dim]`` float32, unit rows (selected rows as given, merged rows renormalised).
    ``positions [k]`` ascending token indices: a selection's kept tokens (``vectors ==
    page[positions]``) or a merge's anchors (the token each stored vector is placed at); None for
    merges without anchors (pooling, plain k-means). ``scores [k]``: what each position was ranked
    by, where the method ranks (None otherwise). ``cover [n]``: for each of the page's tokens, the
    row it was merged into (-1: none; ``cover[positions[i]] == i``); None for selections.
    """

    vectors: np.ndarray
    positions: np.ndarray | None
    scores: np.ndarray | None = None
    cover: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def check_vectors(vectors) -> np.ndarray:
    """``vectors`` as a float32 ``[n, dim]`` array (n, dim >= 1) of finite values; ValueError saying what is wrong."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"vectors must be a non-empty [n, dim] array, got shape {v.shape}")
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or infinite values")
    return v



def check_centrality(centrality, n: int) -> np.ndarray:
    c = np.asarray(centrality, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"centrality must be [{n}] (one score per vector), got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("centrality must be finite and non-negative")
    return c



def check_k(k: int, n: int) -> int:
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return int(k)


def check_scores(scores, n: int | None) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"eos scores must be a non-empty 1-D array, got shape {s.shape}")
    if n is not None and s.shape[0] != n:
        raise ValueError(f"eos scores cover {s.shape[0]} tokens but the page has {n} vectors")
    if not np.isfinite(s).all():
        raise ValueError("eos scores contain NaN or infinite values")
    return s



def select_rows(v: np.ndarray, keep: np.ndarray) -> Kept:
    """The rows ``keep`` of ``v`` as a :class:`Kept`."""
    keep = np.asarray(keep, dtype=np.int64)
    return Kept(np.ascontiguousarray(v[keep]), keep)


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation with torch ``F.normalize`` semantics (norm clamped to 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
