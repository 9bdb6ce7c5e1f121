"""The one registry of compression methods: what each is called, what it needs and what it can do.

``sapindex eval`` runs every entry of :data:`METHODS` one way (:meth:`Method.compress`); ``sapindex
index`` stores the entries that have an ``index_option`` (:data:`INDEX_METHODS` are the ``--method``
choices), ``sapindex prune`` cuts the ``prunable`` ones, and fast mode applies to the ``fast_mode``
one. What a method needs (the page's SAP centrality, its EOS attention, a keep ratio, a fitted
parameter) is declared, and a call without it is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from sapindex import sap
from sapindex.compression import merging, selection
from sapindex.compression.kept import Kept
from sapindex.errors import SapIndexError
from sapindex.sap import RANDOM_SEEDS

__all__ = ["Method", "METHODS", "DEFAULT_METHOD", "INDEX_METHODS", "PRUNABLE_METHODS", "compress", "resolve_method",
           "index_flags", "check_method", "reduce_page"]


class _Inputs(NamedTuple):
    """The arguments of :meth:`Method.compress`, as a method's ``call`` receives them."""

    ratio: float | None
    eos: np.ndarray | None
    centrality: np.ndarray | None
    seq_rank: np.ndarray | None
    seed: int
    adaptive_k: float | None
    budget_scale: float | None


_T = TypeVar("_T")


def _given(value: _T | None) -> _T:
    """An input :meth:`Method.compress` has checked is there (it is in the method's ``needs``), for the
    ``call`` of a method whose function takes it as not optional."""
    assert value is not None
    return value


#: Why :meth:`Method.compress` refuses a call that lacks an input the method needs, in the order checked.
_MISSING = {
    "eos": "needs the page's EOS attention scores",
    "adaptive_k": "needs adaptive_k (see calibrate_adaptive_eos)",
    "budget_scale": "needs budget_scale (see calibrate_budget)",
    "ratio": "needs a keep ratio",
    "centrality": "needs the page's SAP centrality",
    "seq_rank": "needs the page's sequence ranks (TokenLayout.seq_rank)",
}


@dataclass(frozen=True)
class Method:
    """A registered compression method: SAP, the full reference, a baseline or a method beyond the paper.

    ``needs``: the :meth:`compress` arguments the method reads (a call without one is refused).
    ``seeds``: the seeds eval runs and averages (:data:`RANDOM_SEEDS` for random, ``(0,)`` for the
    others; the deterministic methods ignore the seed, k-means uses it as ``random_state``).
    ``merging``: stores new vectors rather than rows of the page. ``matched``: keeps exactly
    ``keep_count(n, ratio)`` vectors per page (Adaptive-EOS matches only the global rate; pooling
    may return fewer on exact ties; full keeps every vector). ``causal_only``: applies only to
    bundles with a causal decoder (the position correction has nothing to correct in a prefix-LM).
    ``fast``: selects as SAP does, but the stored vectors are the ones ``index --mode fast`` computes
    (the layers after the window on the prompt and the kept tokens only); eval re-encodes the pages
    for them, so it runs only when asked for, on format-2 bundles. ``index_option``: the ``sapindex
    index`` options that store this method (None: eval only). ``prunable``: ``sapindex prune`` can
    cut an index of it to a lower ratio (its rows are SAP's top tokens by their stored score).
    ``fast_mode``: ``index --mode fast`` can store it.
    """

    name: str
    #: ``call(vectors, inputs)``, ``inputs`` an :class:`_Inputs`; use :meth:`compress`, which checks them.
    call: Callable[[np.ndarray, _Inputs], Kept]
    needs: tuple[str, ...]
    description: str
    seeds: tuple[int, ...] = (0,)
    merging: bool = False
    matched: bool = True
    causal_only: bool = False
    fast: bool = False
    index_option: str | None = None
    prunable: bool = False
    fast_mode: bool = False

    @property
    def calibrated(self) -> bool:
        """Needs a parameter fitted on pages (Adaptive-EOS's ``k``, sap-budget's scale)."""
        return "adaptive_k" in self.needs or "budget_scale" in self.needs

    @property
    def eval_only(self) -> bool:
        """No index stores it (the paper's baselines)."""
        return self.index_option is None

    def compress(self, vectors, *, ratio: float | None = None, eos: np.ndarray | None = None,
                 centrality: np.ndarray | None = None, seq_rank: np.ndarray | None = None,
                 seed: int = 0, adaptive_k: float | None = None, budget_scale: float | None = None) -> Kept:
        """Uniform entry point: pass what the method needs (:attr:`needs`), extra inputs are ignored.

        ``ratio`` for all but full, Adaptive-EOS and sap-budget, ``eos`` for the EOS methods,
        ``adaptive_k`` for Adaptive-EOS, ``budget_scale`` for sap-budget, ``centrality`` for the SAP
        methods and ``seq_rank`` for ``sap-poscorr``; ``seed`` is used by random and the k-means
        methods and ignored by the others.
        """
        inputs = _Inputs(ratio, eos, centrality, seq_rank, seed, adaptive_k, budget_scale)
        for name, why in _MISSING.items():
            if name in self.needs and getattr(inputs, name) is None:
                raise ValueError(f"method {self.name!r} {why}")
        return self.call(vectors, inputs)


#: Every method by name, in eval's report order. All index-time and query-agnostic.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", lambda v, a: selection.full(v), needs=(), matched=False,
               description="every visual token: the reference of retention, evaluated once at ratio 1"),
        Method("sap", lambda v, a: selection.sap_select(v, a.centrality, _given(a.ratio)),
               needs=("ratio", "centrality"), index_option="--method sap", prunable=True, fast_mode=True,
               description="top-k SAP window centrality (visual in-degree)"),
        Method("sap-poscorr", lambda v, a: selection.sap_select(v, a.centrality, _given(a.ratio), a.seq_rank),
               needs=("ratio", "centrality", "seq_rank"), causal_only=True,
               index_option="--method sap --position-correction", prunable=True, fast_mode=True,
               description="SAP ranked by the causal position correction (index --position-correction)"),
        Method("sap-fast", lambda v, a: selection.sap_select(v, a.centrality, _given(a.ratio)),
               needs=("ratio", "centrality"), fast=True, index_option="--mode fast",
               description="SAP's kept tokens with fast-mode vectors (index --mode fast: the layers after the "
                           "window on the prompt and kept tokens only; an approximation)"),
        Method("random", lambda v, a: selection.random(v, _given(a.ratio), a.seed), needs=("ratio",),
               seeds=RANDOM_SEEDS, description="uniform random subset, averaged over 5 seeds"),
        Method("eos", lambda v, a: selection.eos(v, _given(a.eos), _given(a.ratio)), needs=("ratio", "eos"),
               description="top-k final-layer attention from the last valid token (head mean)"),
        Method("adaptive-eos", lambda v, a: selection.adaptive_eos(v, _given(a.eos), _given(a.adaptive_k)),
               needs=("eos", "adaptive_k"), matched=False,
               description="DocPruner: eos > mean + k*std per page, k fitted to the global keep rate"),
        Method("pooling", lambda v, a: merging.pooling(v, _given(a.ratio)), needs=("ratio",), merging=True,
               description="colpali-engine hierarchical token pooling (Ward), keep_count clusters"),
        Method("cluster", lambda v, a: merging.cluster(v, _given(a.ratio), a.seed), needs=("ratio",), merging=True,
               description="k-means (keep_count clusters), L2-renormalised centroids"),
        Method("sap-merge", lambda v, a: merging.sap_merge(v, a.centrality, _given(a.ratio)),
               needs=("ratio", "centrality"), merging=True, index_option="--method sap-merge",
               description="SAP anchors, each the mean of itself and the dropped tokens most similar to it "
                           "(beyond the paper)"),
        Method("sap-kmeans", lambda v, a: merging.sap_kmeans(v, a.centrality, _given(a.ratio), a.seed),
               needs=("ratio", "centrality"), merging=True, index_option="--method sap-kmeans",
               description="k-means++ weighted by SAP centrality, weighted centroids (beyond the paper)"),
        Method("sap-budget", lambda v, a: selection.sap_budget(v, a.centrality, _given(a.budget_scale)),
               needs=("centrality", "budget_scale"), matched=False,
               index_option="--method sap-budget --budget-from REPORT.json",
               description="SAP with per-page counts in proportion to the page's effective central tokens, the "
                           "corpus total of the fixed ratio (beyond the paper)"),
    )
}

#: ``index --method`` choices: the methods an index stores under their own name; :data:`DEFAULT_METHOD` first
#: (``sap-poscorr`` is ``--method sap --position-correction``).
INDEX_METHODS = tuple(m for m, spec in METHODS.items()
                      if spec.index_option and spec.index_option.split()[:2] == ["--method", m])
#: The stored methods ``sapindex prune`` can cut to a lower ratio exactly (a merged vector or a budgeted
#: count cannot be cut that way).
PRUNABLE_METHODS = tuple(m for m, spec in METHODS.items() if spec.prunable)
#: What a new index stores when no method is asked for: the paper's SAP. ``sap-kmeans`` beat it on the
#: micro model's held-out sets, but so did plain k-means clustering, which the paper measures well below
#: SAP on real retrievers (ColQwen2, ViDoRe v2, keep 0.1: 81.4 against 72.2 % NDCG@5 retention): the
#: micro model cannot choose. ``sap`` also prunes (``sapindex prune``) and runs in fast mode.
#: ``sapindex eval`` recommends a method measured on the user's own data (:func:`index_flags`).
DEFAULT_METHOD = "sap"


def compress(name: str, vectors, **kwargs) -> Kept:
    """``METHODS[name].compress(vectors, **kwargs)`` with a clear error for an unknown name."""
    try:
        method = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None
    return method.compress(vectors, **kwargs)


def resolve_method(method: str | None, stored: set[str]) -> str:
    """The method an ``index`` run encodes with: ``method`` when given; else the one the index already
    holds (``stored``: its rows' methods), so resuming needs no flag; else :data:`DEFAULT_METHOD`."""
    if method is not None:
        return method
    return next(iter(stored)) if len(stored) == 1 else DEFAULT_METHOD


def index_flags(method: str) -> str | None:
    """The ``sapindex index`` options that store what method ``method`` measured, or None when no
    index stores it (baselines such as ``random`` or ``pooling``)."""
    spec = METHODS.get(method)
    return spec.index_option if spec else None


def check_method(method: str, *, mode: str = "exact", budget_scale: float | None = None) -> None:
    """Refuse a method an ``index`` run cannot apply, in one line."""
    if method not in INDEX_METHODS and method != "sap-poscorr":
        raise SapIndexError(f"--method {method}: choose from {', '.join(INDEX_METHODS)}")
    if mode != "exact" and not METHODS[method].fast_mode:
        raise SapIndexError(f"--method {method} summarises every token of the page, which fast mode never "
                            "computes; use --mode exact")
    if method == "sap-budget" and budget_scale is None:
        raise SapIndexError("--method sap-budget needs the budget scale calibrated for this bundle and ratio "
                            "(--budget-from REPORT.json of `sapindex eval ... --methods sap-budget`)")
    if budget_scale is not None and method != "sap-budget":
        raise SapIndexError(f"--budget-from calibrates --method sap-budget, not --method {method}")
    if budget_scale is not None and not (np.isfinite(budget_scale) and budget_scale > 0):
        raise SapIndexError(f"the budget scale must be a positive number, got {budget_scale}")


def reduce_page(embeddings: np.ndarray, centrality: np.ndarray, method: str, keep_ratio: float, *,
                budget_scale: float | None = None) -> Kept:
    """What index ``method`` stores of one page (visual tokens in spatial order), for every method
    but ``sap`` and ``sap-poscorr`` (:func:`sapindex.runtime.encoder.prune`, which ranks with the
    page's sequence order too): int32 positions, each position's centrality as its score, int32 cover."""
    c = np.asarray(centrality, np.float64)
    if method == "sap-budget":
        assert budget_scale is not None  # check_method refuses sap-budget without it
        kept = sap.highest(c, selection.budget_count(c, budget_scale))
        return Kept(embeddings[kept], kept.astype(np.int32), c[kept])
    k = sap.keep_count(embeddings.shape[0], keep_ratio)
    if method == "sap-merge":
        merged = merging.anchor_merge(embeddings, c, k)
    elif method == "sap-kmeans":
        merged = merging.central_kmeans(embeddings, c, k)
    else:
        raise SapIndexError(f"unknown index method {method!r}")
    assert merged.positions is not None and merged.cover is not None  # both merges place and cover every row
    return Kept(merged.vectors, merged.positions.astype(np.int32), c[merged.positions], merged.cover.astype(np.int32))
