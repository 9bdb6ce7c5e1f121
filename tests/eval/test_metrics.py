"""sapindex.eval.metrics: exact MaxSim scores and pytrec_eval-style ranking metrics.

Timing (measured by hand, not asserted): ``maxsim_matrix`` for 1000 queries x 1000 pages,
M = 20 query tokens, k = 80 page vectors, dim = 128, float32, default chunking (64 pages, 4 Mi
score block), on the development machine (2 CPU cores, numpy 2.x with OpenBLAS): 3.5-4.8 s,
typically ~3.7 s, over 13 runs. The bare matmuls alone take ~2.5 s of that (0.41 TFLOP); the
segmented max and sum ~1 s. Smaller or larger chunks (16..256 pages) were no faster.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sapindex.eval.metrics import maxsim_matrix, mrr_at_k, ndcg_at_k, rank_of_relevant, recall_at_k, retrieval_metrics

# --------------------------------------------------------------------------- maxsim_matrix


def loop_maxsim(queries, pages):
    return np.array([[float((q.astype(np.float64) @ p.astype(np.float64).T).max(axis=1).sum()) for p in pages]
                     for q in queries])


def random_set(rng, n, max_len, dim, offset=0.0, min_len=1):
    return [(rng.standard_normal((int(rng.integers(min_len, max_len + 1)), dim)) + offset).astype(np.float32)
            for _ in range(n)]


@pytest.mark.parametrize("chunk_pages,block_elements", [(64, 1 << 22), (3, 40), (1, 1), (5, 7)])
def test_maxsim_matches_loop_with_variable_lengths(chunk_pages, block_elements):
    rng = np.random.default_rng(0)
    queries = random_set(rng, 13, 6, 8) + [rng.standard_normal((1, 8)).astype(np.float32)]  # M_i = 1 too
    pages = random_set(rng, 17, 9, 8) + [rng.standard_normal((1, 8)).astype(np.float32)]  # k_j = 1 too
    got = maxsim_matrix(queries, pages, chunk_pages=chunk_pages, block_elements=block_elements)
    assert got.shape == (14, 18) and got.dtype == np.float32
    np.testing.assert_allclose(got, loop_maxsim(queries, pages), rtol=1e-5, atol=1e-4)


def test_maxsim_negative_dot_products_are_not_beaten_by_padding():
    """All dot products negative: a zero pad vector would win every max and give 0."""
    rng = np.random.default_rng(1)
    queries = [-np.abs(q) - 0.1 for q in random_set(rng, 5, 4, 6)]
    pages = [np.abs(p) + 0.1 for p in random_set(rng, 7, 10, 6)]
    pages[3] = pages[3][:1]  # a single-vector page next to longer ones
    got = maxsim_matrix(queries, pages, chunk_pages=4)
    expected = loop_maxsim(queries, pages)
    assert (expected < 0).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_maxsim_hand_example_and_dtypes():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float16)
    p1 = np.array([[2.0, -1.0], [-3.0, 0.5]])  # max per token: 2, 0.5
    p2 = np.array([[-1.0, -2.0]])  # -1, -2
    np.testing.assert_array_equal(maxsim_matrix([q], [p1, p2]), [[2.5, -3.0]])


def test_maxsim_empty_inputs():
    assert maxsim_matrix([], [np.ones((2, 4))]).shape == (0, 1)
    assert maxsim_matrix([np.ones((2, 4))], []).shape == (1, 0)
    with pytest.raises(ValueError, match="page 1"):
        maxsim_matrix([np.ones((2, 4))], [np.ones((2, 4)), np.ones((0, 4))])
    with pytest.raises(ValueError, match="dim"):
        maxsim_matrix([np.ones((2, 4))], [np.ones((2, 3))])


# --------------------------------------------------------------------------- ranking metrics


def reference_ranks(scores, relevant, page_ids):
    """pytrec_eval's order, spelled out: score descending, then page id descending."""
    out = np.zeros(scores.shape, dtype=int)
    for i, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda j: (row[j], page_ids[j]), reverse=True)
        for rank, j in enumerate(order, start=1):
            if relevant[i, j]:
                out[i, j] = rank
    return out


def test_ties_break_by_page_id_descending():
    scores = np.array([1.0, 2.0, 2.0, 0.5])
    ids = ["a", "b", "c", "d"]
    # b and c tie at 2.0: c (larger id) ranks first, b second
    assert rank_of_relevant(scores, [0, 1, 0, 0], ids).tolist() == [[0, 2, 0, 0]]
    assert rank_of_relevant(scores, [0, 0, 1, 0], ids).tolist() == [[0, 0, 1, 0]]
    # the same pages under swapped ids swap places
    assert rank_of_relevant(scores, [0, 1, 0, 0], ["a", "c", "b", "d"]).tolist() == [[0, 1, 0, 0]]
    # without ids the later column wins the tie (the column index is the id)
    assert rank_of_relevant(scores, [0, 1, 0, 0]).tolist() == [[0, 2, 0, 0]]
    # ids compare as strings, as trec_eval's strcmp does: "9" > "10"
    assert rank_of_relevant([5.0, 5.0], [0, 1], ["9", "10"]).tolist() == [[0, 2]]
    relevant = [0, 1, 0, 0]
    assert ndcg_at_k(scores, relevant, 5, ids)[0] == pytest.approx(1 / math.log2(3))
    assert recall_at_k(scores, relevant, 1, ids)[0] == 0.0
    assert recall_at_k(scores, relevant, 5, ids)[0] == 1.0
    assert mrr_at_k(scores, relevant, 10, ids)[0] == 0.5


def test_three_relevant_pages_one_beyond_k():
    scores = np.arange(12, 0, -1, dtype=float)[None, :]  # column j ranks j + 1
    relevant = np.zeros((1, 12), dtype=bool)
    relevant[0, [0, 2, 11]] = True  # ranks 1, 3, 12
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(scores, relevant, 5)[0] == pytest.approx(dcg / idcg)
    assert ndcg_at_k(scores, relevant, 10)[0] == pytest.approx(dcg / idcg)
    assert ndcg_at_k(scores, relevant, 1)[0] == pytest.approx(1.0)  # IDCG@1 uses min(k, 3) = 1 page
    assert ndcg_at_k(scores, relevant, 12)[0] == pytest.approx((dcg + 1 / math.log2(13)) / idcg)  # IDCG@12 = IDCG@3
    assert recall_at_k(scores, relevant, 1)[0] == pytest.approx(1 / 3)
    assert recall_at_k(scores, relevant, 5)[0] == pytest.approx(2 / 3)
    assert recall_at_k(scores, relevant, 12)[0] == pytest.approx(1.0)
    assert mrr_at_k(scores, relevant, 10)[0] == 1.0


def test_relevant_page_beyond_k_and_query_without_relevant():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    relevant = np.array([[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=bool)
    assert ndcg_at_k(scores, relevant, 5)[0] == 0.0
    assert recall_at_k(scores, relevant, 5)[0] == 0.0
    assert mrr_at_k(scores, relevant, 5)[0] == 0.0
    assert mrr_at_k(scores, relevant, 6)[0] == pytest.approx(1 / 6)
    assert ndcg_at_k(scores, relevant, 6)[0] == pytest.approx(1 / math.log2(7))
    for fn in (ndcg_at_k, recall_at_k, mrr_at_k):
        assert np.isnan(fn(scores, relevant, 5)[1])


def test_metrics_match_a_sorted_reference_with_many_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(30, 15)).astype(float)  # many ties
    relevant = rng.random((30, 15)) < 0.2
    relevant[:, 0] |= ~relevant.any(axis=1)
    ids = [f"p{rng.integers(0, 1000):03d}{j}" for j in range(15)]
    ranks = reference_ranks(scores, relevant, ids)
    np.testing.assert_array_equal(rank_of_relevant(scores, relevant, ids), ranks)
    for k in (1, 5, 10):
        n_rel = relevant.sum(axis=1)
        hit = (ranks >= 1) & (ranks <= k)
        dcg = np.where(hit, 1 / np.log2(ranks + 1.0, where=ranks > 0, out=np.ones(ranks.shape)), 0).sum(axis=1)
        idcg = np.array([sum(1 / math.log2(i + 1) for i in range(1, min(k, n) + 1)) for n in n_rel])
        np.testing.assert_allclose(ndcg_at_k(scores, relevant, k, ids), dcg / idcg)
        np.testing.assert_allclose(recall_at_k(scores, relevant, k, ids), hit.sum(axis=1) / n_rel)
        first = np.where(ranks > 0, ranks, 10**9).min(axis=1)
        np.testing.assert_allclose(mrr_at_k(scores, relevant, k, ids), np.where(first <= k, 1 / first, 0))


def test_evaluate_means_and_per_query():
    page_ids = ["d0", "d1", "d2", "d3"]
    query_ids = ["q1", "q2", "q3"]
    scores = np.array([[0.9, 0.1, 0.2, 0.3],   # q1: d0 relevant, rank 1
                       [0.9, 0.8, 0.7, 0.6],   # q2: d2 and d3 relevant, ranks 3 and 4
                       [0.5, 0.5, 0.5, 0.5]])  # q3: nothing relevant among the pages
    qrels = {"q1": {"d0": 1, "d1": 0}, "q2": {"d2": 2, "d3": 1}, "q3": {"elsewhere": 1}}
    result = retrieval_metrics(scores, query_ids, page_ids, qrels)
    assert result["n_queries"] == 2 and result["excluded_queries"] == ["q3"]
    assert result["query_ids"] == query_ids
    q2_ndcg5 = (1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert result["per_query"]["ndcg@5"][1] == pytest.approx(q2_ndcg5)
    assert np.isnan(result["per_query"]["ndcg@5"][2])
    assert result["ndcg@5"] == pytest.approx((1 + q2_ndcg5) / 2)
    assert result["ndcg@10"] == pytest.approx((1 + q2_ndcg5) / 2)
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@5"] == pytest.approx(1.0)
    assert result["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    for name in ("ndcg@1", "recall@10", "mrr@5"):
        assert name in result and result["per_query"][name].shape == (3,)
    with pytest.raises(ValueError, match="queries"):
        retrieval_metrics(scores[:2], query_ids, page_ids, qrels)


def test_evaluate_rejects_nan_scores():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), ["q"], ["a", "b"], {"q": {"a": 1}})
