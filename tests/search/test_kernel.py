"""The float16 MaxSim kernel: the same scores as the numpy reference on the same vectors, from any
thread, and the shipped graph is the one the exporter builds."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest

from sapindex.exporter import kernels
from sapindex.sap import maxsim_segments
from sapindex.search import kernel


def _pages(rng, counts, dim=128):
    v = rng.standard_normal((sum(counts), dim)).astype(np.float16)
    v[0, :4] = [65504, -65504, 6e-8, -6e-8]  # float16's largest and smallest magnitudes
    return v, np.cumsum([0] + counts[:-1]).astype(np.int64)


def test_float16_pages_score_as_the_numpy_reference():
    rng = np.random.default_rng(0)
    pages, page_starts = _pages(rng, [1, 74, 3, 120, 1, 50])
    queries = rng.standard_normal((33, 128)).astype(np.float32)
    query_starts = np.array([0, 1, 20])
    got = kernel.maxsim(queries, query_starts, pages, page_starts)
    want = maxsim_segments(queries, query_starts, pages.astype(np.float32), page_starts)
    assert got.shape == (3, 6) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(kernel.maxsim(queries, query_starts, pages, page_starts, threads=0), want, rtol=1e-5)


def test_float32_pages_take_the_numpy_path_unchanged():
    rng = np.random.default_rng(1)
    pages, page_starts = _pages(rng, [5, 7])
    pages = pages.astype(np.float32)
    q = rng.standard_normal((4, 128)).astype(np.float32)
    assert np.array_equal(kernel.maxsim(q, np.zeros(1, np.int64), pages, page_starts),
                          maxsim_segments(q, np.zeros(1, np.int64), pages, page_starts))


def test_threads_share_one_session_and_agree():
    rng = np.random.default_rng(2)
    pages, page_starts = _pages(rng, [74] * 64)
    queries = [rng.standard_normal((20, 128)).astype(np.float32) for _ in range(16)]
    alone = [kernel.maxsim(q, np.zeros(1, np.int64), pages, page_starts) for q in queries]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: kernel.maxsim(q, np.zeros(1, np.int64), pages, page_starts), queries))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_the_shipped_graph_is_the_one_the_exporter_builds(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the exporter's extra builds the graph")
    shipped = onnx.load(str(kernel.HALF_SIMS))
    assert shipped.graph == kernels.half_sims_model().graph
    written = kernels.write_assets(tmp_path)
    assert [p.name for p in written] == [kernel.HALF_SIMS.name]
    assert onnx.load(str(written[0])).graph == shipped.graph
