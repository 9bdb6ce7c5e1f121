"""MaxSim over stored vectors in the dtype they are stored in: float16 pages are scored by ONNX
Runtime, float32 ones by numpy.

Why: an index stores its kept vectors as float16, and numpy converts float16 to float32 one
element at a time (~1.3 ns an element here: 3-4x the matmul itself), which made reading the pages
cost more than scoring them. ONNX Runtime's vectorised ``Cast`` then ``MatMul``
(``sapindex/assets/kernels/half_sims.onnx``, built by :mod:`sapindex.exporter.kernels`) gives the
same float32 dot products 3-4x faster (RESULTS.md "Exact rescoring: ONNX Runtime against numpy").
The results equal :func:`sapindex.sap.maxsim_segments` on the same vectors up to float32 summation
order (~1e-6 relative): exact MaxSim, not an approximation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from sapindex.sap import maxsim_segments

HALF_SIMS = Path(__file__).resolve().parent.parent / "assets" / "kernels" / "half_sims.onnx"


@functools.cache
def _session(threads: int):
    """One ONNX Runtime session per thread count, shared by every thread of the process (``run``
    is thread-safe). ONNX Runtime's memory arena keeps the largest call's buffers for the life of
    the process (without it, glibc's heap grew twice as much on the same calls): callers bound it
    by the size of what they score at once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(HALF_SIMS), sess_options=options, providers=["CPUExecutionProvider"])


def dots(pages: np.ndarray, queries: np.ndarray, threads: int = 1) -> np.ndarray:
    """``[rows of pages, rows of queries]`` float32: every dot product of float16 ``pages`` with
    float32 ``queries``. Also the small products a search makes beside other threads (the first
    stage's centroids against a query): numpy's OpenBLAS would wake its own threads for them, which
    then spin against faiss's (measured: +6-11 ms a query at 10^5 pages, against +2 ms here)."""
    q = np.ascontiguousarray(queries, np.float32)
    return _session(threads).run(None, {"pages": np.ascontiguousarray(pages, np.float16), "queries": q})[0]


def maxsim(queries: np.ndarray, query_starts: np.ndarray, pages: np.ndarray, page_starts: np.ndarray,
           threads: int = 1) -> np.ndarray:
    """MaxSim ``[Q, P]`` of queries (float32 rows, query ``i`` from ``query_starts[i]``) against
    pages (rows one after another, page ``j`` from ``page_starts[j]``), as
    :func:`sapindex.sap.maxsim_segments`. float16 ``pages`` go through ONNX Runtime with
    ``threads`` threads (1 suits one query's rescoring beside other searches; 0, every core,
    suits a long scan); any other dtype through numpy."""
    if pages.dtype != np.float16:
        return maxsim_segments(queries, query_starts, pages, page_starts)
    best = np.maximum.reduceat(dots(pages, queries, threads), page_starts, axis=0)  # [P, tokens]
    return np.ascontiguousarray(np.add.reduceat(best, query_starts, axis=1).T)  # [Q, P]
