"""Beyond the paper: keep SAP's structural anchors and summarise the tokens it drops (torch-free).

SAP keeps the ``k`` most central tokens of a page and throws the rest away; the merging
baselines (hierarchical pooling, k-means) keep a summary of every token but ignore which tokens
the model treats as anchors. The methods here combine the two, at the same ``k`` vectors per page
(bench/RESULTS.md, "Beyond the paper", has the measurements and why each variant is the one
shipped):

:func:`anchor_merge` (``sap-merge``)
    SAP's top-``k`` tokens are the anchors; every other visual token joins one anchor (the most
    similar by cosine of the final vectors, the nearest on the page grid, or a mix) and each stored
    vector is the weighted mean of its group, L2-renormalised.
:func:`central_kmeans` (``sap-kmeans``)
    k-means++ on the page's vectors with each token weighted by its SAP centrality, so that the
    clusters gather round the tokens the model attends to; each cluster is stored as its members'
    weighted mean and placed at its most central member.
:func:`budget_count` (``sap-budget``)
    how many vectors each page gets when the corpus total of a fixed ratio is spread by content
    instead: in proportion to the number of tokens the page's attention is spread over (the
    exponential of its centrality's entropy), with one scale for all pages
    (:func:`calibrate_budget`); SAP then keeps that many anchors.

Every result is a :class:`Merged`: the stored vectors, the token each one is placed at (its
anchor: overlays and explain pictures draw it where a selection method draws a kept token), and
``cover``, the stored vector each visual token was merged into, so the pictures can show the
cells a vector stands for. Positions are the page's spatial token indices, as everywhere in the
index (``sapindex.runtime.layout``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from sapindex import sap

__all__ = ["ASSIGNMENTS", "WEIGHTS", "Merged", "anchor_merge", "budget_count", "calibrate_budget", "central_kmeans",
           "check_vectors", "effective_tokens", "grid_coordinates"]

#: How :func:`anchor_merge` assigns a dropped token to an anchor.
ASSIGNMENTS = ("cosine", "grid", "both")
#: How :func:`anchor_merge` weighs a group's members in its mean.
WEIGHTS = ("uniform", "centrality")


@dataclass(frozen=True)
class Merged:
    """One page reduced to ``k`` vectors.

    ``vectors [k, dim]`` float32, unit rows. ``positions [k]`` int64, strictly ascending: the
    token each vector is placed at (its anchor), and row ``i`` of ``vectors`` belongs to
    ``positions[i]``. ``cover [n]`` int64: for each of the page's ``n`` visual tokens, the row of
    ``vectors`` it was merged into (``-1``: no stored vector stands for it). For every ``i``,
    ``cover[positions[i]] == i``.
    """

    vectors: np.ndarray
    positions: np.ndarray
    cover: np.ndarray

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def grid_coordinates(n: int, grid: tuple[int, int], global_grid: tuple[int, int] | None = None) -> np.ndarray:
    """``[n, 2]`` float64 (row, col) of each spatial token on the page, in units of the page grid.

    Tokens past ``rows * cols`` (Idefics3's global tile) are placed at the centre of the page
    region their global-grid cell covers, so a grid distance between a page token and a global
    token means the same as between two page tokens.
    """
    rows, cols = grid
    k = np.arange(n)
    local = k < rows * cols
    out = np.zeros((n, 2), dtype=np.float64)
    out[local, 0], out[local, 1] = k[local] // cols, k[local] % cols
    extra = k[~local] - rows * cols
    if extra.size:
        g_rows, g_cols = global_grid or (0, 0)
        if g_rows < 1 or g_cols < 1 or extra.max() >= g_rows * g_cols:
            raise ValueError(f"{n} tokens exceed grid {grid} and global grid {global_grid}")
        out[~local, 0] = (extra // g_cols + 0.5) * rows / g_rows - 0.5
        out[~local, 1] = (extra % g_cols + 0.5) * cols / g_cols - 0.5
    return out


def anchor_merge(vectors, centrality, k: int, *, assign: str = "cosine", weights: str = "uniform",
                 coords: np.ndarray | None = None) -> Merged:
    """SAP anchors with the dropped tokens merged in (``sap-merge``).

    The anchors are SAP's ``k`` kept tokens (:func:`sapindex.sap.highest` of ``centrality``: the
    same set ``sap`` keeps). Each other token joins one anchor:

    - ``assign="cosine"``: the anchor whose final vector is most similar (ties to the lower anchor);
    - ``"grid"``: the nearest anchor on the page (``coords``, :func:`grid_coordinates`; ties to the
      lower anchor);
    - ``"both"``: the highest ``cosine - distance / diagonal`` (similar and near).

    Stored vector ``i`` is the ``weights``-weighted mean of anchor ``i`` and its members (uniform, or
    each token's centrality; a group whose weights are all zero falls back to uniform),
    L2-renormalised, computed in float64.
    """
    v = check_vectors(vectors)
    c = _check_centrality(centrality, v.shape[0])
    if assign not in ASSIGNMENTS:
        raise ValueError(f"assign must be one of {ASSIGNMENTS}, got {assign!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    n = v.shape[0]
    anchors = sap.highest(c, _check_k(k, n))
    affinity = None
    if assign in ("cosine", "both"):
        affinity = v.astype(np.float64) @ v[anchors].astype(np.float64).T
    if assign in ("grid", "both"):
        if coords is None or np.shape(coords) != (n, 2):
            raise ValueError(f"assign={assign!r} needs coords [{n}, 2] (grid_coordinates)")
        d = np.sqrt(((coords[:, None, :] - coords[anchors][None, :, :]) ** 2).sum(axis=2))
        near = -d if assign == "grid" else -d / max(float(np.hypot(*np.ptp(coords, axis=0))), 1.0)
        affinity = near if affinity is None else affinity + near
    cover = np.argmax(affinity, axis=1)  # first maximum: ties to the lower anchor
    cover[anchors] = np.arange(anchors.shape[0])
    w = np.ones(n) if weights == "uniform" else c
    return Merged(_group_means(v, cover, anchors.shape[0], w), anchors.astype(np.int64), cover.astype(np.int64))


def central_kmeans(vectors, centrality, k: int, *, seed: int = 0, n_init: int = 4) -> Merged:
    """k-means++ weighted by SAP centrality (``sap-kmeans``): clusters gather round the anchors.

    scikit-learn's ``KMeans(n_clusters=k, n_init=n_init, random_state=seed)`` fitted with
    ``sample_weight = centrality`` (floored at a tiny positive value, so a token the model never
    attends still belongs to a cluster), single-threaded, in float64. Each stored vector is its
    final cluster's centrality-weighted mean (the k-means centroid), L2-renormalised; it is placed
    at the cluster's most central member (ties to the lower index). A cluster left empty by the
    final assignment (degenerate pages with fewer than ``k`` distinct vectors) is dropped, so a page
    may store fewer than ``k`` vectors then.
    """
    v = check_vectors(vectors)
    c = _check_centrality(centrality, v.shape[0])
    n = v.shape[0]
    k = _check_k(k, n)
    if k == n:
        ident = np.arange(n, dtype=np.int64)
        return Merged(v.copy(), ident, ident.copy())
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    w = np.maximum(c, _weight_floor(c))
    with warnings.catch_warnings(), threadpool_limits(limits=1):  # one thread: see eval.baselines.cluster
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(v.astype(np.float64),
                                                                             sample_weight=w).labels_
    return _placed(v, c, labels.astype(np.int64), w)


def effective_tokens(centrality) -> float:
    """``exp(entropy)`` of the page's centrality as a distribution: how many tokens the model's
    attention is spread over (1 when one token takes it all, ``n`` when every token gets as much)."""
    c = np.asarray(centrality, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("centrality must be a non-empty 1-D array of finite, non-negative values")
    total = c.sum()
    if total <= 0:
        return float(c.size)  # no signal: as spread as it gets
    q = c[c > 0] / total
    return float(np.exp(-(q * np.log(q)).sum()))


def budget_count(centrality, scale: float) -> int:
    """Vectors a page gets under a corpus budget (``sap-budget``): ``scale`` times its
    :func:`effective_tokens`, rounded, at least 1 and at most its token count."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"the budget scale must be a positive number, got {scale!r}")
    n = int(np.shape(centrality)[0])
    return int(min(n, max(1, round(scale * effective_tokens(centrality)))))


def calibrate_budget(centralities, ratio: float) -> float:
    """The :func:`budget_count` scale that spreads the vectors a fixed ``ratio`` keeps on these
    pages, ``sum(keep_count(n_p, ratio))``, in proportion to each page's effective tokens.

    Calibrated once on calibration pages and applied to each new page on its own (an index grows
    page by page), the corpus total then matches the fixed ratio's up to rounding and to how far
    the new pages differ from the calibration pages (bench/RESULTS.md measures both).
    """
    centralities = list(centralities)
    if not centralities:
        raise ValueError("calibrate_budget needs at least one page")
    target = sum(sap.keep_count(len(c), ratio) for c in centralities)
    return float(target / sum(effective_tokens(c) for c in centralities))


# --------------------------------------------------------------------------------------------
# helpers


def _placed(v: np.ndarray, c: np.ndarray, labels: np.ndarray, w: np.ndarray) -> Merged:
    """Clusters ``labels [n]`` -> a :class:`Merged`: each non-empty cluster's ``w``-weighted mean,
    placed at its most central member, rows ordered by that position."""
    groups = np.unique(labels)
    order = np.lexsort((np.arange(c.shape[0]), -c))  # most central first, ties to the lower index
    first = {}
    for t in order:
        first.setdefault(int(labels[t]), int(t))
    anchors = np.array([first[int(g)] for g in groups], dtype=np.int64)
    rank = np.argsort(anchors, kind="stable")
    relabel = np.empty(int(groups.max()) + 1, dtype=np.int64)
    relabel[groups[rank]] = np.arange(groups.size)
    cover = relabel[labels]
    return Merged(_group_means(v, cover, groups.size, w), anchors[rank], cover)


def _group_means(v: np.ndarray, cover: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    """The ``w``-weighted mean of each group ``0..k-1`` of ``cover`` (uniform where the weights sum
    to 0), L2-renormalised, as float32."""
    x = v.astype(np.float64)
    sums = np.zeros((k, v.shape[1]))
    np.add.at(sums, cover, x * w[:, None])
    totals = np.bincount(cover, weights=w, minlength=k)
    flat = totals <= 0
    if flat.any():
        plain = np.zeros((k, v.shape[1]))
        np.add.at(plain, cover, x)
        sums[flat] = plain[flat]
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _weight_floor(c: np.ndarray) -> float:
    positive = c[c > 0]
    return float(positive.min()) * 1e-3 if positive.size else 1.0


def check_vectors(vectors) -> np.ndarray:
    """``vectors`` as a float32 ``[n, dim]`` array (n, dim >= 1) of finite values; ValueError saying what is wrong."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"vectors must be a non-empty [n, dim] array, got shape {v.shape}")
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or infinite values")
    return v


def _check_centrality(centrality, n: int) -> np.ndarray:
    c = np.asarray(centrality, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"centrality must be [{n}] (one score per vector), got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("centrality must be finite and non-negative")
    return c


def _check_k(k: int, n: int) -> int:
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return int(k)
