"""Merges: methods that store new vectors, each summarising a group of the page's tokens (torch-free).

The paper's merging baselines, colpali-engine's hierarchical token :func:`pooling` and plain
k-means :func:`cluster`, summarise every token but ignore which tokens the model treats as
anchors. Beyond the paper, two methods keep SAP's structural anchors and summarise the tokens it
drops, at the same ``k`` vectors per page (bench/RESULTS.md, "Beyond the paper", has the
measurements and why each variant is the one shipped):

:func:`anchor_merge` (``sap-merge``)
    SAP's top-``k`` tokens are the anchors; every other visual token joins one anchor (the most
    similar by cosine of the final vectors, the nearest on the page grid, or a mix) and each stored
    vector is the weighted mean of its group, L2-renormalised.
:func:`central_kmeans` (``sap-kmeans``)
    k-means++ on the page's vectors with each token weighted by its SAP centrality, so that the
    clusters gather round the tokens the model attends to; each cluster is stored as its members'
    weighted mean and placed at its most central member.

Their results are :class:`~sapindex.compression.kept.Kept` records with positions (the token each
vector is placed at, its anchor: overlays and explain pictures draw it where a selection draws a
kept token) and ``cover`` (the stored vector each visual token was merged into, so the pictures
can show the cells a vector stands for). Positions are the page's spatial token indices, as
everywhere in the index (``sapindex.runtime.layout``)."""

from __future__ import annotations

import warnings

import numpy as np

from sapindex import sap
from sapindex.compression.kept import Kept, check_centrality, check_k, check_vectors, normalize

__all__ = ["ASSIGNMENTS", "WEIGHTS", "anchor_merge", "central_kmeans", "cluster", "grid_coordinates", "pooling",
           "pooling_labels", "sap_kmeans", "sap_merge"]

#: How :func:`anchor_merge` assigns a dropped token to an anchor.
ASSIGNMENTS = ("cosine", "grid", "both")
#: How :func:`anchor_merge` weighs a group's members in its mean.
WEIGHTS = ("uniform", "centrality")


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
                 coords: np.ndarray | None = None) -> Kept:
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
    c = check_centrality(centrality, v.shape[0])
    if assign not in ASSIGNMENTS:
        raise ValueError(f"assign must be one of {ASSIGNMENTS}, got {assign!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    n = v.shape[0]
    anchors = sap.highest(c, check_k(k, n))
    affinity = None
    if assign in ("cosine", "both"):
        affinity = v.astype(np.float64) @ v[anchors].astype(np.float64).T
    if assign in ("grid", "both"):
        if coords is None or np.shape(coords) != (n, 2):
            raise ValueError(f"assign={assign!r} needs coords [{n}, 2] (grid_coordinates)")
        d = np.sqrt(((coords[:, None, :] - coords[anchors][None, :, :]) ** 2).sum(axis=2))
        near = -d if assign == "grid" else -d / max(float(np.hypot(*np.ptp(coords, axis=0))), 1.0)
        affinity = near if affinity is None else affinity + near
    assert affinity is not None  # every assignment in ASSIGNMENTS sets it
    cover = np.argmax(affinity, axis=1)  # first maximum: ties to the lower anchor
    cover[anchors] = np.arange(anchors.shape[0])
    w = np.ones(n) if weights == "uniform" else c
    return Kept(_group_means(v, cover, anchors.shape[0], w), anchors.astype(np.int64),
                cover=cover.astype(np.int64))


def central_kmeans(vectors, centrality, k: int, *, seed: int = 0, n_init: int = 4) -> Kept:
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
    c = check_centrality(centrality, v.shape[0])
    n = v.shape[0]
    k = check_k(k, n)
    if k == n:
        ident = np.arange(n, dtype=np.int64)
        return Kept(v.copy(), ident, cover=ident.copy())
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    w = np.maximum(c, _weight_floor(c))
    with warnings.catch_warnings(), threadpool_limits(limits=1):  # one thread: see cluster
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(v.astype(np.float64),
                                                                             sample_weight=w).labels_
    return _placed(v, c, labels.astype(np.int64), w)


def pooling_labels(vectors, n_clusters: int) -> np.ndarray:
    """Cluster labels ``[n]`` (0-based) of colpali-engine's hierarchical token pooling with ``n_clusters``.

    Reproduces ``HierarchicalTokenPooler._pool_single_embedding`` (colpali-engine 0.3.18):
    ``D = 1 - E @ E.T`` in float32, ``linkage(D, metric="euclidean", method="ward")``,
    ``fcluster(Z, t=n_clusters, criterion="maxclust") - 1``. Note that colpali passes the square
    matrix ``D`` as *observations*: Ward runs on the Euclidean distances between the rows of the
    cosine-distance matrix (each token described by its cosine distances to all tokens), not on
    the condensed cosine distances themselves. We do the same, so the clusters are identical;
    scipy's "looks like an uncondensed distance matrix" ClusterWarning is silenced.
    """
    v = check_vectors(vectors)
    n = v.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    from scipy.cluster.hierarchy import ClusterWarning, fcluster, linkage

    distances = 1 - v @ v.T  # float32, as colpali's torch.mm + numpy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterWarning)
        z = linkage(distances, metric="euclidean", method="ward")
    return (fcluster(z, t=n_clusters, criterion="maxclust") - 1).astype(np.int64)


def pooling(vectors, ratio: float) -> Kept:
    """Hierarchical token pooling (colpali-engine's ``HierarchicalTokenPooler``) to ``keep_count`` clusters.

    Same math as colpali-engine 0.3.18 (see :func:`pooling_labels`): Ward clusters of the
    cosine-distance rows, each cluster's float32 mean, L2-renormalised (``F.normalize``, eps
    1e-12), rows ordered by cluster label. The one difference is the parameterisation: colpali
    asks for ``max(n // pool_factor, 1)`` clusters, we ask for ``keep_count(n, ratio)`` so that the
    count matches the other methods. Edge cases follow colpali's identity shortcut for
    ``pool_factor == 1``: when ``keep_count == n`` (ratio 1, or n == 1, which colpali rejects) the
    page is returned unchanged.

    ``fcluster(..., criterion="maxclust")`` returns *at most* the requested number of clusters:
    with ties in the merge heights (e.g. duplicate tokens, which merge at height 0) it can return
    fewer. On generic data (no exact ties) the count equals ``keep_count(n, ratio)``.
    """
    v = check_vectors(vectors)
    n = v.shape[0]
    k = sap.keep_count(n, ratio)
    if k == n:
        return Kept(v.copy(), None)
    labels = pooling_labels(v, k)
    return Kept(_cluster_means(v, labels, k), None)


def cluster(vectors, ratio: float, seed: int = 0) -> Kept:
    """k-means merge: cluster the vectors into ``k = keep_count(n, ratio)`` groups and store the centroids.

    The paper: "cluster the final 128-d vectors into k clusters, store the centroids". We run
    scikit-learn's ``KMeans(n_clusters=k, n_init=4, random_state=seed)`` (k-means++, Lloyd, in
    float64, single-threaded; deterministic for a seed), then recompute each centroid as the mean of the members
    of its final assignment (one closing M-step, so a stored centroid is exactly its members'
    mean) and **L2-renormalise** it: MaxSim compares unit query vectors with unit page vectors
    (dot product = cosine), and a raw centroid's norm (< 1, smaller for spread clusters) would
    only shrink its scores. A cluster left without members by the final assignment (only in
    degenerate data) keeps the centroid KMeans returned, so exactly ``k`` vectors are stored
    (duplicate centroids are possible when the page has fewer than ``k`` distinct vectors).
    ``keep_count == n`` returns the page unchanged (every token its own cluster).
    """
    v = check_vectors(vectors)
    n = v.shape[0]
    k = sap.keep_count(n, ratio)
    if k == n:
        return Kept(v.copy(), None)
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    x = v.astype(np.float64)
    # One thread: a page is small, and OpenMP + OpenBLAS threads fighting over the cores made a
    # n=800 page ~10x slower (1 s instead of 0.1 s); parallelise across pages instead.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    labels = km.labels_.astype(np.int64)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, v.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    centers = np.array(km.cluster_centers_, dtype=np.float64)
    nonempty = counts > 0
    centers[nonempty] = sums[nonempty] / counts[nonempty, None]
    return Kept(normalize(centers).astype(np.float32), None)


def sap_merge(vectors, centrality, ratio: float) -> Kept:
    """SAP anchors with the dropped tokens merged in (:func:`anchor_merge`, the variant
    chosen on the training split: cosine assignment, uniform weights) at ``keep_count(n, ratio)``."""
    v = check_vectors(vectors)
    return anchor_merge(v, centrality, sap.keep_count(v.shape[0], ratio))


def sap_kmeans(vectors, centrality, ratio: float, seed: int = 0) -> Kept:
    """Centrality-weighted k-means at ``keep_count(n, ratio)`` (:func:`central_kmeans`)."""
    v = check_vectors(vectors)
    return central_kmeans(v, centrality, sap.keep_count(v.shape[0], ratio), seed=seed)


def _placed(v: np.ndarray, c: np.ndarray, labels: np.ndarray, w: np.ndarray) -> Kept:
    """Clusters ``labels [n]`` -> a :class:`Kept`: each non-empty cluster's ``w``-weighted mean,
    placed at its most central member, rows ordered by that position."""
    groups = np.unique(labels)
    order = np.lexsort((np.arange(c.shape[0]), -c))  # most central first, ties to the lower index
    first: dict[int, int] = {}
    for t in order:
        first.setdefault(int(labels[t]), int(t))
    anchors = np.array([first[int(g)] for g in groups], dtype=np.int64)
    rank = np.argsort(anchors, kind="stable")
    relabel = np.empty(int(groups.max()) + 1, dtype=np.int64)
    relabel[groups[rank]] = np.arange(groups.size)
    cover = relabel[labels]
    return Kept(_group_means(v, cover, groups.size, w), anchors[rank], cover=cover)


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


def _cluster_means(v: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Float32 mean of each non-empty cluster, in label order, L2-renormalised (colpali's loop)."""
    rows = [v[labels == c].mean(axis=0) for c in range(k) if (labels == c).any()]
    return normalize(np.stack(rows)).astype(np.float32)
