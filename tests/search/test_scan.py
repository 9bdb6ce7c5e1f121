"""sapindex.search.scan: the exact MaxSim scan over an index, against per-page loops and sap.maxsim."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DIM, h, make_row

from sapindex import sap
from sapindex.eval.metrics import maxsim_matrix
from sapindex.index.store import Hit, Index, IndexWriter, PageRow
from sapindex.search.scan import search_index


def loop_maxsim(q, pages):
    return [float((d @ q.T).max(axis=0).sum()) for d in pages]


@pytest.mark.parametrize("vector_dtype", ["float16", "float32"])
def test_search_equals_a_per_page_loop(tmp_path, vector_dtype):
    rng = np.random.default_rng(7)
    counts = [1, 1, 2, 3, 5, 8, 13, 40, 1, 7] * 6  # 60 pages, kept counts including 1
    rows = [make_row(f"doc{i % 13:02d}.pdf", h(i % 13), i // 13 + 1, c, 1000 + i) for i, c in enumerate(counts)]
    with IndexWriter.create_or_open(tmp_path / "idx", "fp-A", DIM, vector_dtype=vector_dtype) as idx:
        for start in range(0, len(rows), 9):  # several fragments
            idx.add_pages(rows[start:start + 9])
    reader = Index.open(tmp_path / "idx")
    cast = np.float16 if vector_dtype == "float16" else np.float32
    stored = [r.vectors.astype(cast).astype(np.float32) for r in rows]
    for m in (1, 5, 20):
        q = rng.standard_normal((m, DIM)).astype(np.float32)
        expected = loop_maxsim(q, stored)
        ranking = sorted(range(len(rows)), key=lambda i: (-expected[i], rows[i].path, rows[i].page))
        for chunk in (1, 7, 1024):
            hits = search_index(reader, q, k=None, chunk_pages=chunk)
            assert len(hits) == len(rows)
            got = {(x.path, x.page): x.score for x in hits}
            for i, r in enumerate(rows):
                assert got[(r.path, r.page)] == pytest.approx(expected[i], rel=1e-5, abs=1e-5)
            assert [(x.path, x.page) for x in hits] == [(rows[i].path, rows[i].page) for i in ranking]
            top = search_index(reader, q, k=5, chunk_pages=chunk)
            assert top == hits[:5] and all(isinstance(x, Hit) for x in top)
    with pytest.raises(ValueError, match="query_vectors"):
        search_index(reader, np.zeros((3, DIM + 1), np.float32))
    assert search_index(reader, q, k=0) == []


def test_search_ties_are_broken_by_path_then_page(tmp_path):
    # vectors of 0 / 0.5 / 1: every dot product and sum is exact in float16 and float32
    base = np.zeros((2, DIM), np.float32)
    base[0, 0], base[1, 1] = 1.0, 0.5
    rows = []
    for path, page in [("b.pdf", 2), ("a.pdf", 3), ("b.pdf", 1), ("a.pdf", 1), ("c.pdf", 1)]:
        vecs = base if path != "c.pdf" else base * 0.5
        rows.append(PageRow(path, h(ord(path[0])), page, 1, 1, (1, 2), 2, np.arange(2), vecs, 1.0))
    with IndexWriter.create_or_open(tmp_path / "idx", "fp-A", DIM) as idx:
        for r in rows:  # one fragment each: ties across chunks too
            idx.add_pages([r])
        q = np.zeros((2, DIM), np.float32)
        q[0, 0] = q[1, 1] = 1.0
        for chunk in (1, 2, 100):
            hits = search_index(idx, q, k=3, chunk_pages=chunk)
            assert hits == [Hit("a.pdf", 1, 1.5), Hit("a.pdf", 3, 1.5), Hit("b.pdf", 1, 1.5)]
            assert search_index(idx, q, k=None, chunk_pages=chunk)[-1] == Hit("c.pdf", 1, 0.75)


def test_search_and_maxsim_matrix_equal_the_reference_maxsim(tmp_path):
    """One kernel: the store's search and the eval's score matrix both score as ``sap.maxsim``."""
    rng = np.random.default_rng(11)
    rows = [make_row(f"r{i:02d}.pdf", h(i), 1, int(rng.integers(1, 30)), 500 + i) for i in range(40)]
    with IndexWriter.create_or_open(tmp_path / "idx", "fp-A", DIM, vector_dtype="float32") as idx:
        idx.add_pages(rows[:25])
        idx.add_pages(rows[25:])
        queries = [rng.standard_normal((m, DIM)).astype(np.float32) for m in (1, 3, 17)]
        matrix = maxsim_matrix(queries, [r.vectors for r in rows], chunk_pages=6)
        for qi, q in enumerate(queries):
            reference = [sap.maxsim(q, r.vectors) for r in rows]
            for chunk in (1, 9, 1024):
                got = {x.path: x.score for x in search_index(idx, q, k=None, chunk_pages=chunk)}
                np.testing.assert_allclose([got[r.path] for r in rows], reference, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(matrix[qi], reference, rtol=1e-5, atol=1e-5)
