"""The index methods: how one page's encoded tokens become the vectors the index stores (torch-free).

``sap`` is the paper's selection (:func:`sapindex.runtime.encoder.prune`) and the default. The others, beyond the
paper (:mod:`sapindex.merging`; measured in bench/RESULTS.md, "Beyond the paper"), also start from
SAP's centrality but store something else for the page:

- ``sap-kmeans``: k-means clusters weighted by centrality, placed at their most central token;
- ``sap-merge``: SAP's kept tokens, each averaged with the dropped tokens most similar to it;
- ``sap-budget``: SAP's selection with a per-page count in proportion to how spread the page's
  centrality is, scaled by a factor calibrated on calibration pages (``sapindex eval`` reports it).

Every method stores ``keep_count(n, ratio)`` vectors per page (``sap-budget``: as many on average)
at positions that are tokens of the page (the merged ones at their anchor), so search, overlays and
explanations read every index alike; the merging methods also record ``cover``, the stored vector
each token was merged into. An index holds one method (the indexer refuses to mix them).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sapindex import merging, sap
from sapindex.errors import SapIndexError

#: ``index --method`` choices (module docstring); :data:`DEFAULT_METHOD` first.
INDEX_METHODS = ("sap", "sap-kmeans", "sap-merge", "sap-budget")
#: The methods whose rows are SAP's top ``keep_count`` tokens by their stored score: ``sapindex prune`` can
#: cut them to a lower ratio exactly (a merged vector or a budgeted count cannot be cut that way).
PRUNABLE_METHODS = ("sap", "sap-poscorr")
#: What a new index stores when no method is asked for: the paper's SAP. ``sap-kmeans`` beat it on the
#: micro model's held-out sets, but so did plain k-means clustering, which the paper measures well below
#: SAP on real retrievers (ColQwen2, ViDoRe v2, keep 0.1: 81.4 against 72.2 % NDCG@5 retention): the
#: micro model cannot choose. ``sap`` also prunes (``sapindex prune``) and runs in fast mode.
#: ``sapindex eval`` recommends a method measured on the user's own data (:func:`index_flags`).
DEFAULT_METHOD = "sap"


def resolve_method(method: str | None, stored: set[str]) -> str:
    """The method a run encodes with: ``method`` when given; else the one the index already holds
    (``stored``: its rows' methods), so resuming needs no flag; else :data:`DEFAULT_METHOD`."""
    if method is not None:
        return method
    if len(stored) == 1:
        held = next(iter(stored))
        return "sap" if held == "sap-poscorr" else held
    return DEFAULT_METHOD


def method_name(method: str, position_correction: bool) -> str:
    """What an index records for a run: ``method``, or ``sap-poscorr`` for ``sap`` ranked with the
    causal position correction."""
    return "sap-poscorr" if position_correction and method == "sap" else method


def index_flags(method: str) -> str | None:
    """The ``sapindex index`` options that store what eval method ``method`` measured, or None
    when no index stores it (baselines such as ``random`` or ``pooling``)."""
    if method == "sap-poscorr":
        return "--method sap --position-correction"
    if method == "sap-fast":
        return "--mode fast"
    if method == "sap-budget":
        return "--method sap-budget --budget-from REPORT.json"
    return f"--method {method}" if method in INDEX_METHODS else None


def check_method(method: str, *, mode: str = "exact", position_correction: bool = False,
                 budget_scale: float | None = None) -> None:
    """Refuse a method the run cannot apply, in one line."""
    if method not in INDEX_METHODS:
        raise SapIndexError(f"--method {method}: choose from {', '.join(INDEX_METHODS)}")
    if position_correction and method != "sap":
        raise SapIndexError(f"--position-correction ranks SAP's selection (--method sap); --method {method} "
                            "ranks by plain centrality")
    if mode != "exact" and method != "sap":
        raise SapIndexError(f"--method {method} summarises every token of the page, which fast mode never "
                            "computes; use --mode exact")
    if method == "sap-budget" and budget_scale is None:
        raise SapIndexError("--method sap-budget needs the budget scale calibrated for this bundle and ratio "
                            "(--budget-from REPORT.json of `sapindex eval ... --methods sap-budget`)")
    if budget_scale is not None and method != "sap-budget":
        raise SapIndexError(f"--budget-from calibrates --method sap-budget, not --method {method}")
    if budget_scale is not None and not (np.isfinite(budget_scale) and budget_scale > 0):
        raise SapIndexError(f"the budget scale must be a positive number, got {budget_scale}")


class Stored(NamedTuple):
    """What a method keeps of a page: ``vectors [k, dim]``, ``positions [k]`` (ascending tokens),
    ``scores [k]`` (each position's centrality) and ``cover [n]`` (the row each token was merged
    into, -1 for none; None for a selection, where each row stands for its own token only)."""

    vectors: np.ndarray
    positions: np.ndarray
    scores: np.ndarray
    cover: np.ndarray | None


def reduce_page(embeddings: np.ndarray, centrality: np.ndarray, method: str, keep_ratio: float, *,
                budget_scale: float | None = None) -> Stored:
    """One page's visual tokens (spatial order) -> what ``method`` stores, for every method but ``sap``
    (:func:`sapindex.runtime.encoder.prune`, which also ranks with the position correction)."""
    c = np.asarray(centrality, np.float64)
    if method == "sap-budget":
        kept = sap.highest(c, merging.budget_count(c, budget_scale))
        return Stored(embeddings[kept], kept.astype(np.int32), c[kept], None)
    k = sap.keep_count(embeddings.shape[0], keep_ratio)
    if method == "sap-merge":
        merged = merging.anchor_merge(embeddings, c, k)
    elif method == "sap-kmeans":
        merged = merging.central_kmeans(embeddings, c, k)
    else:
        raise SapIndexError(f"unknown index method {method!r}")
    return Stored(merged.vectors, merged.positions.astype(np.int32), c[merged.positions],
                  merged.cover.astype(np.int32))
