"""Token compression: what a page keeps of its visual tokens' vectors, in one package (torch-free).

- :mod:`~sapindex.compression.kept`: :class:`Kept`, the one record every method returns (vectors,
  positions, scores, cover);
- :mod:`~sapindex.compression.selection`: methods that keep rows of the page (SAP, sap-budget, and
  the paper's random, EOS and Adaptive-EOS baselines);
- :mod:`~sapindex.compression.merging`: methods that store new vectors (sap-merge, sap-kmeans, and
  the paper's pooling and k-means baselines);
- :mod:`~sapindex.compression.registry`: :data:`METHODS`, the one registry, with what each method
  needs and can do (index, prune, fast mode, eval only), and the ``index --method`` rules.

:mod:`sapindex.sap` stays the numpy reference of the paper's math (keep counts, top-k, the window,
the position correction) that these methods call.
"""

from sapindex.compression.kept import Kept, check_vectors
from sapindex.compression.merging import (
    anchor_merge,
    central_kmeans,
    cluster,
    grid_coordinates,
    pooling,
    pooling_labels,
    sap_kmeans,
    sap_merge,
)
from sapindex.compression.registry import (
    DEFAULT_METHOD,
    INDEX_METHODS,
    METHODS,
    PRUNABLE_METHODS,
    Method,
    check_method,
    compress,
    index_flags,
    reduce_page,
    resolve_method,
)
from sapindex.compression.selection import (
    adaptive_eos,
    adaptive_eos_mask,
    budget_count,
    budget_scale_from,
    calibrate_adaptive_eos,
    calibrate_budget,
    effective_tokens,
    eos,
    full,
    random,
    sap_budget,
    sap_select,
)
from sapindex.sap import RANDOM_SEEDS

__all__ = ["Kept", "Method", "METHODS", "DEFAULT_METHOD", "INDEX_METHODS", "PRUNABLE_METHODS", "RANDOM_SEEDS",
           "adaptive_eos", "adaptive_eos_mask", "anchor_merge", "budget_count", "budget_scale_from",
           "calibrate_adaptive_eos", "calibrate_budget", "central_kmeans", "check_method", "check_vectors",
           "cluster", "compress", "effective_tokens", "eos", "full", "grid_coordinates", "index_flags",
           "pooling", "pooling_labels", "random", "reduce_page", "resolve_method", "sap_budget",
           "sap_kmeans", "sap_merge", "sap_select"]
