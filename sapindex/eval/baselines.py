"""The index-time, query-agnostic compression methods ``sapindex eval`` compares: SAP and its baselines (torch-free).

Every method takes one page's final multi-vector embedding ``vectors [n, dim]`` (float32,
L2-normalised, one row per visual token) and returns a :class:`Compressed` page. Apart from full
and Adaptive-EOS, all of them keep exactly ``sapindex.sap.keep_count(n, ratio)`` vectors, so the
baselines are compared with SAP at matched vector counts (see docs/SAP_METHOD.md, "Baselines the
paper compares with"):

``full(vectors)``
    every vector: the uncompressed page, the reference that retention is measured against.
``sap_select(vectors, centrality, ratio[, seq_rank])``
    SAP itself: the ``keep_count`` tokens of highest window centrality, ranked by the causal
    position correction when ``seq_rank`` is given (the same selection as
    ``sapindex.runtime.encoder.prune``, which feeds the index).
``random(vectors, ratio, seed)``
    a uniform subset of ``keep_count`` positions (:func:`sapindex.sap.random_k` with
    ``np.random.default_rng(seed)``); the paper averages 5 seeds (:data:`RANDOM_SEEDS`).
``eos(vectors, eos, ratio)``
    the ``keep_count`` tokens with the highest final-layer attention from the last valid token
    (head mean), ties to the lower index (:func:`sapindex.sap.top_k`).
``adaptive_eos(vectors, eos, k)``
    DocPruner: keep token ``j`` if ``eos[j] > mean(eos) + k * std(eos)`` on its page (population
    std), never fewer than one token (the argmax). ``k`` comes from
    :func:`calibrate_adaptive_eos` on held-out pages so that the *global* keep rate is ``ratio``;
    the per-page counts are not matched (they vary with each page's score distribution).
``pooling(vectors, ratio)``
    colpali-engine's ``HierarchicalTokenPooler`` with ``keep_count`` clusters (see
    :func:`pooling` for the exact semantics and the one difference).
``cluster(vectors, ratio, seed)``
    k-means with ``keep_count`` clusters; the L2-renormalised centroids are stored.

Beyond the paper (:mod:`sapindex.merging`, also ``index --method`` options):

``sap_merge(vectors, centrality, ratio)``
    SAP's ``keep_count`` anchors, each the uniform mean of itself and the dropped tokens most
    similar to it (cosine), L2-renormalised.
``sap_kmeans(vectors, centrality, ratio, seed)``
    k-means++ with ``keep_count`` clusters, tokens weighted by centrality; weighted centroids.
``sap_budget(vectors, centrality, scale)``
    SAP's selection with a per-page count, ``scale`` times the page's effective central tokens;
    ``scale`` comes from :func:`sapindex.merging.calibrate_budget` over the evaluated pages, so the
    corpus keeps the fixed ratio's total (up to rounding) and the per-page counts vary.

Selection methods (full, SAP, random, eos, adaptive-eos, sap-budget) return the kept rows and their
token positions; merging methods (pooling, cluster, sap-merge, sap-kmeans) return new vectors and
``positions=None``.

:data:`METHODS` maps eval's method names (``full``, ``sap``, ``sap-poscorr`` and the baselines)
to :class:`Baseline` records with one uniform entry point, :meth:`Baseline.compress`, so the eval
runner runs every method one way. The page signals (EOS scores, SAP centrality, sequence ranks)
are provided by the caller (the encoder's outputs); this module only uses numpy, scipy and
scikit-learn (the latter imported lazily).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from sapindex import merging, sap
from sapindex.sap import RANDOM_SEEDS

__all__ = [
    "Compressed",
    "Baseline",
    "METHODS",
    "RANDOM_SEEDS",
    "full",
    "sap_select",
    "random",
    "eos",
    "adaptive_eos",
    "adaptive_eos_mask",
    "calibrate_adaptive_eos",
    "pooling",
    "pooling_labels",
    "cluster",
    "sap_merge",
    "sap_kmeans",
    "sap_budget",
    "compress",
]


@dataclass(frozen=True)
class Compressed:
    """One compressed page.

    ``vectors``: ``[k, dim]`` float32, L2-normalised rows (selected rows as given, merged rows
    renormalised). ``positions``: for selection methods, the kept token indices ``[k]`` (int64,
    ascending, ``vectors == input[positions]``); ``None`` for merging methods.
    """

    vectors: np.ndarray
    positions: np.ndarray | None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


# --------------------------------------------------------------------------------------------
# selection methods


def full(vectors) -> Compressed:
    """Every vector: the uncompressed page, the reference every method's retention is measured against."""
    v = merging.check_vectors(vectors)
    return Compressed(v, np.arange(v.shape[0], dtype=np.int64))


def sap_select(vectors, centrality, ratio: float, seq_rank=None) -> Compressed:
    """SAP: the ``keep_count(n, ratio)`` tokens of highest window centrality, ties to the lower index.

    With ``seq_rank`` (each token's rank in sequence order) the tokens are ranked by
    :func:`sapindex.sap.causal_correction` instead (``sap-poscorr``, causal decoders only).
    """
    v = merging.check_vectors(vectors)
    scores = np.asarray(centrality)
    if scores.shape != (v.shape[0],):
        raise ValueError(f"centrality must be [{v.shape[0]}] (one score per vector), got shape {scores.shape}")
    return _select(v, sap.select(scores, ratio, seq_rank))


def random(vectors, ratio: float, seed: int) -> Compressed:
    """A uniform random subset of ``keep_count(n, ratio)`` tokens, drawn with ``np.random.default_rng(seed)``.

    Deterministic for a seed; average over :data:`RANDOM_SEEDS` for the paper's random floor.
    """
    v = merging.check_vectors(vectors)
    keep = sap.random_k(v.shape[0], ratio, np.random.default_rng(seed))
    return _select(v, keep)


def eos(vectors, eos: np.ndarray, ratio: float) -> Compressed:
    """The ``keep_count(n, ratio)`` tokens with the highest EOS attention, ties to the lower index."""
    v = merging.check_vectors(vectors)
    scores = _check_scores(eos, v.shape[0])
    return _select(v, sap.top_k(scores, ratio))


def adaptive_eos_mask(eos: np.ndarray, k: float) -> np.ndarray:
    """DocPruner's keep mask ``eos > mean(eos) + k * std(eos)`` (population std, float64), argmax forced in.

    A page whose scores are all equal (std 0) keeps only its first token (the argmax).
    """
    s = _check_scores(eos, None)
    if not math.isfinite(float(k)):
        raise ValueError(f"k must be finite, got {k!r}")
    mu = s.mean()
    sigma = s.std()  # ddof=0: population std
    mask = s > mu + float(k) * sigma
    mask[int(np.argmax(s))] = True
    return mask


def adaptive_eos(vectors, eos: np.ndarray, k: float) -> Compressed:
    """DocPruner-style adaptive EOS pruning: keep ``j`` if ``eos[j] > mean + k * std`` (at least the argmax).

    ``k`` is the threshold in page standard deviations, calibrated with
    :func:`calibrate_adaptive_eos` so that the **global** keep rate over held-out pages equals the
    target ratio. Unlike the other baselines this does *not* match the per-page vector count: a
    page with a few salient tokens keeps fewer than ``keep_count(n, ratio)``, a flat one more.
    """
    v = merging.check_vectors(vectors)
    s = _check_scores(eos, v.shape[0])
    return _select(v, np.flatnonzero(adaptive_eos_mask(s, k)))


def calibrate_adaptive_eos(eos_list, ratio: float, *, max_iter: int = 200) -> float:
    """The DocPruner ``k`` whose global keep rate on ``eos_list`` is closest to ``ratio``.

    The global keep rate ``sum_p kept_p(k) / sum_p n_p`` is a non-increasing step function of
    ``k`` (each page's threshold ``mean + k * std`` grows with ``k``); it is at its maximum (1
    when no page is flat) for ``k < -sqrt(n_max)`` and ``n_pages / total`` for
    ``k >= sqrt(n_max)`` (population z-scores lie in ``[-sqrt(n - 1), sqrt(n - 1)]``), so ``k``
    is bisected over ``[-sqrt(n_max) - 1, sqrt(n_max) + 1]`` down to adjacent floats. Of the two
    plateaus that bracket ``ratio``, the one whose rate is closer wins (the lower k, i.e. more
    tokens, on an exact tie), and the returned ``k`` is moved to the middle of that plateau
    (half-way between the neighbouring page z-scores) so that float noise when re-applying it
    cannot flip a token. Rates below ``n_pages / total`` cannot be reached (every page keeps its
    argmax); the upper end is returned then.
    """
    sap._check_ratio(ratio)
    pages = [_check_scores(e, None) for e in eos_list]
    if not pages:
        raise ValueError("calibrate_adaptive_eos needs at least one page")
    total = sum(p.shape[0] for p in pages)
    stats = [(p, p.mean(), p.std()) for p in pages]
    flat = np.concatenate(pages)
    mus = np.concatenate([np.full(p.shape[0], mu) for p, mu, _ in stats])
    sigmas = np.concatenate([np.full(p.shape[0], sigma) for p, _, sigma in stats])
    starts = np.cumsum([0] + [p.shape[0] for p in pages[:-1]])
    argmaxes = starts + np.array([int(np.argmax(p)) for p in pages])

    def rate(k: float) -> float:
        # the same float arithmetic as adaptive_eos_mask, page by page
        above = flat > mus + k * sigmas
        return (int(above.sum()) + int((~above[argmaxes]).sum())) / total

    bound = math.sqrt(max(p.shape[0] for p in pages)) + 1.0
    lo, hi = -bound, bound  # rate(lo) is the maximum rate; rate(hi) == n_pages / total
    r_lo, r_hi = rate(lo), rate(hi)
    if r_hi >= ratio:
        return _plateau_mid(stats, hi, rate)
    # invariant: rate(lo) >= ratio > rate(hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        r = rate(mid)
        if r >= ratio:
            lo, r_lo = mid, r
        else:
            hi, r_hi = mid, r
    best = lo if abs(r_lo - ratio) <= abs(r_hi - ratio) else hi
    return _plateau_mid(stats, best, rate)


def _plateau_mid(stats, k: float, rate: Callable[[float], float]) -> float:
    """The middle of the plateau of ``rate`` containing ``k`` (between neighbouring z-scores), if it agrees."""
    zs = [(p - mu) / sigma for p, mu, sigma in stats if sigma > 0]
    if not zs:
        return float(k)
    z = np.concatenate(zs)
    below, above = z[z <= k], z[z > k]
    if below.size and above.size:
        cand = 0.5 * (below.max() + above.min())
    elif above.size:
        cand = above.min() - 1.0
    else:
        cand = below.max() + 1.0
    cand = float(cand)
    return cand if rate(cand) == rate(k) else float(k)


# --------------------------------------------------------------------------------------------
# merging methods


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
    v = merging.check_vectors(vectors)
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


def pooling(vectors, ratio: float) -> Compressed:
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
    v = merging.check_vectors(vectors)
    n = v.shape[0]
    k = sap.keep_count(n, ratio)
    if k == n:
        return Compressed(v.copy(), None)
    labels = pooling_labels(v, k)
    return Compressed(_cluster_means(v, labels, k), None)


def cluster(vectors, ratio: float, seed: int = 0) -> Compressed:
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
    v = merging.check_vectors(vectors)
    n = v.shape[0]
    k = sap.keep_count(n, ratio)
    if k == n:
        return Compressed(v.copy(), None)
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
    return Compressed(_normalize(centers).astype(np.float32), None)


def sap_merge(vectors, centrality, ratio: float) -> Compressed:
    """SAP anchors with the dropped tokens merged in (:func:`sapindex.merging.anchor_merge`, the variant
    chosen on the training split: cosine assignment, uniform weights) at ``keep_count(n, ratio)``."""
    v = merging.check_vectors(vectors)
    return Compressed(merging.anchor_merge(v, centrality, sap.keep_count(v.shape[0], ratio)).vectors, None)


def sap_kmeans(vectors, centrality, ratio: float, seed: int = 0) -> Compressed:
    """Centrality-weighted k-means at ``keep_count(n, ratio)`` (:func:`sapindex.merging.central_kmeans`)."""
    v = merging.check_vectors(vectors)
    return Compressed(merging.central_kmeans(v, centrality, sap.keep_count(v.shape[0], ratio), seed=seed).vectors,
                      None)


def sap_budget(vectors, centrality, scale: float) -> Compressed:
    """SAP's selection of :func:`sapindex.merging.budget_count` tokens (the page's share of a corpus budget)."""
    v = merging.check_vectors(vectors)
    return _select(v, sap.highest(centrality, merging.budget_count(centrality, scale)))


# --------------------------------------------------------------------------------------------
# registry


class _Inputs(NamedTuple):
    """The arguments of :meth:`Baseline.compress`, as a method's ``call`` receives them."""

    ratio: float | None
    eos: np.ndarray | None
    centrality: np.ndarray | None
    seq_rank: np.ndarray | None
    seed: int
    adaptive_k: float | None
    budget_scale: float | None


#: Why :meth:`Baseline.compress` refuses a call that lacks an input the method needs, in the order checked.
_MISSING = {
    "eos": "needs the page's EOS attention scores",
    "adaptive_k": "needs adaptive_k (see calibrate_adaptive_eos)",
    "budget_scale": "needs budget_scale (see sapindex.merging.calibrate_budget)",
    "ratio": "needs a keep ratio",
    "centrality": "needs the page's SAP centrality",
    "seq_rank": "needs the page's sequence ranks (TokenLayout.seq_rank)",
}


@dataclass(frozen=True)
class Baseline:
    """A registered compression method: SAP, the full reference or a baseline.

    ``needs``: the :meth:`compress` arguments the method reads (a call without one is refused).
    ``seeds``: the seeds to run and average (:data:`RANDOM_SEEDS` for random, ``(0,)`` for the
    others; the deterministic methods ignore the seed, k-means uses it as ``random_state``).
    ``merging``: returns new vectors (``positions is None``). ``matched``: keeps exactly
    ``keep_count(n, ratio)`` vectors per page (Adaptive-EOS matches only the global rate; pooling
    may return fewer on exact ties; full keeps every vector). ``causal_only``: applies only to
    bundles with a causal decoder (the position correction has nothing to correct in a prefix-LM).
    ``fast``: selects as SAP does, but the stored vectors are the ones ``index --mode fast`` computes (the
    layers after the window on the prompt and the kept tokens only); the eval runner re-encodes the pages
    for them, so it runs only when asked for (``--methods ...,sap-fast``), on format-2 bundles.
    """

    name: str
    #: ``call(vectors, inputs)``, ``inputs`` an :class:`_Inputs`; use :meth:`compress`, which checks them.
    call: Callable[[np.ndarray, _Inputs], Compressed]
    needs: tuple[str, ...]
    description: str
    seeds: tuple[int, ...] = (0,)
    merging: bool = False
    matched: bool = True
    causal_only: bool = False
    fast: bool = False  # the kept tokens' vectors come from the fast-mode tail run, not from the exact vectors

    @property
    def calibrated(self) -> bool:
        """Needs a parameter fitted on pages (Adaptive-EOS's ``k``, sap-budget's scale)."""
        return "adaptive_k" in self.needs or "budget_scale" in self.needs

    def compress(self, vectors, *, ratio: float | None = None, eos: np.ndarray | None = None,
                 centrality: np.ndarray | None = None, seq_rank: np.ndarray | None = None,
                 seed: int = 0, adaptive_k: float | None = None, budget_scale: float | None = None) -> Compressed:
        """Uniform entry point: pass what the method needs (:attr:`needs`), extra inputs are ignored.

        ``ratio`` for all but full, Adaptive-EOS and sap-budget, ``eos`` for the EOS methods,
        ``adaptive_k`` for Adaptive-EOS, ``budget_scale`` for sap-budget, ``centrality`` for the SAP
        methods and ``seq_rank`` for ``sap-poscorr``; ``seed`` is used by random and the k-means
        methods and ignored by the others.
        """
        inputs = _Inputs(ratio, eos, centrality, seq_rank, seed, adaptive_k, budget_scale)
        for name, why in _MISSING.items():
            if name in self.needs and getattr(inputs, name) is None:
                raise ValueError(f"baseline {self.name!r} {why}")
        return self.call(vectors, inputs)


#: Eval's method name -> method, in report order. All index-time and query-agnostic.
METHODS: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("full", lambda v, a: full(v), needs=(), matched=False,
                 description="every visual token: the reference of retention, evaluated once at ratio 1"),
        Baseline("sap", lambda v, a: sap_select(v, a.centrality, a.ratio), needs=("ratio", "centrality"),
                 description="top-k SAP window centrality (visual in-degree)"),
        Baseline("sap-poscorr", lambda v, a: sap_select(v, a.centrality, a.ratio, a.seq_rank),
                 needs=("ratio", "centrality", "seq_rank"), causal_only=True,
                 description="SAP ranked by the causal position correction (index --position-correction)"),
        Baseline("sap-fast", lambda v, a: sap_select(v, a.centrality, a.ratio), needs=("ratio", "centrality"),
                 fast=True, description="SAP's kept tokens with fast-mode vectors (index --mode fast: the layers "
                                        "after the window on the prompt and kept tokens only; an approximation)"),
        Baseline("random", lambda v, a: random(v, a.ratio, a.seed), needs=("ratio",), seeds=RANDOM_SEEDS,
                 description="uniform random subset, averaged over 5 seeds"),
        Baseline("eos", lambda v, a: eos(v, a.eos, a.ratio), needs=("ratio", "eos"),
                 description="top-k final-layer attention from the last valid token (head mean)"),
        Baseline("adaptive-eos", lambda v, a: adaptive_eos(v, a.eos, a.adaptive_k), needs=("eos", "adaptive_k"),
                 matched=False,
                 description="DocPruner: eos > mean + k*std per page, k fitted to the global keep rate"),
        Baseline("pooling", lambda v, a: pooling(v, a.ratio), needs=("ratio",), merging=True,
                 description="colpali-engine hierarchical token pooling (Ward), keep_count clusters"),
        Baseline("cluster", lambda v, a: cluster(v, a.ratio, a.seed), needs=("ratio",), merging=True,
                 description="k-means (keep_count clusters), L2-renormalised centroids"),
        Baseline("sap-merge", lambda v, a: sap_merge(v, a.centrality, a.ratio), needs=("ratio", "centrality"),
                 merging=True, description="SAP anchors, each the mean of itself and the dropped tokens most "
                                           "similar to it (beyond the paper)"),
        Baseline("sap-kmeans", lambda v, a: sap_kmeans(v, a.centrality, a.ratio, a.seed),
                 needs=("ratio", "centrality"), merging=True,
                 description="k-means++ weighted by SAP centrality, weighted centroids (beyond the paper)"),
        Baseline("sap-budget", lambda v, a: sap_budget(v, a.centrality, a.budget_scale),
                 needs=("centrality", "budget_scale"), matched=False,
                 description="SAP with per-page counts in proportion to the page's effective central tokens, "
                             "the corpus total of the fixed ratio (beyond the paper)"),
    )
}


def compress(name: str, vectors, **kwargs) -> Compressed:
    """``METHODS[name].compress(vectors, **kwargs)`` with a clear error for an unknown name."""
    try:
        method = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(METHODS)}") from None
    return method.compress(vectors, **kwargs)


# --------------------------------------------------------------------------------------------
# helpers


def _check_scores(scores, n: int | None) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"eos scores must be a non-empty 1-D array, got shape {s.shape}")
    if n is not None and s.shape[0] != n:
        raise ValueError(f"eos scores cover {s.shape[0]} tokens but the page has {n} vectors")
    if not np.isfinite(s).all():
        raise ValueError("eos scores contain NaN or infinite values")
    return s


def _select(v: np.ndarray, keep: np.ndarray) -> Compressed:
    keep = np.asarray(keep, dtype=np.int64)
    return Compressed(np.ascontiguousarray(v[keep]), keep)


def _normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation with torch ``F.normalize`` semantics (norm clamped to 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cluster_means(v: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Float32 mean of each non-empty cluster, in label order, L2-renormalised (colpali's loop)."""
    rows = [v[labels == c].mean(axis=0) for c in range(k) if (labels == c).any()]
    return _normalize(np.stack(rows)).astype(np.float32)
