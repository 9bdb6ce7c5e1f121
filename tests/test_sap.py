"""Tests for sapindex.sap: the SAP math (in-degree, Algorithm 1 window, top-k, MaxSim, retention)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sapindex import sap

FAST = settings(max_examples=60, deadline=None)

# --- in_degree -------------------------------------------------------------------------------

# 2 heads, 4 tokens; token 0 is text, tokens 1..3 visual. Rows are query i, columns key j.
ATTN = np.array([
    [[0.25, 0.25, 0.25, 0.25],
     [0.10, 0.20, 0.30, 0.40],
     [0.00, 0.50, 0.50, 0.00],
     [0.40, 0.30, 0.20, 0.10]],
    [[1.00, 0.00, 0.00, 0.00],
     [0.00, 1.00, 0.00, 0.00],
     [0.20, 0.20, 0.20, 0.40],
     [0.00, 0.00, 0.50, 0.50]],
])
VISUAL = np.array([False, True, True, True])
# Visual block, head 0: rows [.2 .3 .4] [.5 .5 0] [.3 .2 .1] -> column sums [1.0, 1.0, 0.5]
# Visual block, head 1: rows [1 0 0] [.2 .2 .4] [0 .5 .5]   -> column sums [1.2, 0.7, 0.9]
# Mean over heads: [1.1, 0.85, 0.7]. (Counting the text row, or renormalising rows, changes this.)
EXPECTED_IN = np.array([1.1, 0.85, 0.7])


def test_in_degree_hand_example():
    np.testing.assert_allclose(sap.in_degree(ATTN, VISUAL), EXPECTED_IN)
    np.testing.assert_allclose(sap.in_degree(ATTN[None], VISUAL), EXPECTED_IN)  # [1, H, S, S]


def test_in_degree_layer_mean_hand_example():
    # Second layer: uniform 0.25 everywhere -> each visual column gets 3 * 0.25 = 0.75.
    layer2 = np.full((2, 4, 4), 0.25)
    out = sap.in_degree(np.stack([ATTN, layer2]), VISUAL)
    np.testing.assert_allclose(out, (EXPECTED_IN + 0.75) / 2)


def _row_stochastic(raw):
    e = np.exp(raw - raw.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@FAST
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_in_degree_layer_mean_is_mean_of_per_layer(n_layers, n_heads, seq, seed):
    rng = np.random.default_rng(seed)
    attn = _row_stochastic(rng.normal(size=(n_layers, n_heads, seq, seq)))
    visual = rng.random(seq) < 0.6
    visual[rng.integers(seq)] = True
    per_layer = np.stack([sap.in_degree(attn[layer], visual) for layer in range(n_layers)])
    out = sap.in_degree(attn, visual)
    assert out.shape == (visual.sum(),)
    np.testing.assert_allclose(out, per_layer.mean(axis=0), rtol=1e-12)


@FAST
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_in_degree_all_visual_sums_to_seq_len(n_layers, n_heads, seq, seed):
    attn = _row_stochastic(np.random.default_rng(seed).normal(size=(n_layers, n_heads, seq, seq)))
    out = sap.in_degree(attn, np.ones(seq, dtype=bool))
    assert out.sum() == pytest.approx(seq, rel=1e-9)
    assert (out >= 0).all()


@pytest.mark.parametrize("attn, visual, match", [
    (ATTN, np.array([0, 1, 1, 1]), "boolean mask"),
    (ATTN, VISUAL[None], "boolean mask"),
    (ATTN[0, 0], VISUAL, r"\[H, S, S\] or \[L, H, S, S\]"),
    (ATTN, np.array([True, True, True]), "4x4 positions but visual has 3"),
    (ATTN, np.zeros(4, dtype=bool), "selects no token"),
])
def test_in_degree_errors(attn, visual, match):
    with pytest.raises(ValueError, match=match):
        sap.in_degree(attn, visual)


# --- select_window / Algorithm 1 -------------------------------------------------------------

def paper_curve(n_layers, l_star):
    """SR rising to a peak at layer l*-1, then a trailing run of low values from l* on."""
    rise = np.linspace(0.3, 0.9, l_star)
    tail = np.linspace(0.2, 0.1, n_layers - l_star)
    return np.concatenate([rise, tail])


@pytest.mark.parametrize("n_layers, l_star, w, window", [
    (18, 15, 4, (11, 15)),
    (28, 24, 6, (18, 24)),
    (36, 34, 8, (26, 34)),
])
def test_select_window_paper_reference(n_layers, l_star, w, window):
    sr = paper_curve(n_layers, l_star)
    assert sap.alignment_start(sr) == l_star
    assert sap.window_width(n_layers) == w
    assert sap.select_window(sr) == window
    assert sap.select_window(list(sr), rho=0.2) == window  # plain sequences accepted


@pytest.mark.parametrize("n_layers, rho, w", [
    (15, 0.2, 3), (25, 0.28, 7), (50, 0.14, 7), (18, 0.2, 4), (28, 0.2, 6), (36, 0.2, 8),
    (5, 0.2, 1), (1, 0.2, 1), (11, 0.2, 3), (10, 1.0, 10),
])
def test_window_width_is_float_noise_safe_ceil(n_layers, rho, w):
    assert sap.window_width(n_layers, rho) == w


def test_select_window_uses_noise_safe_width():
    # 0.2 * 15 happens to be exactly 3.0 in binary floats; 0.28 * 25 is not exactly 7.
    assert 0.28 * 25 == 7.000000000000001 and math.ceil(0.28 * 25) == 8
    assert sap.select_window(paper_curve(25, 20), rho=0.28) == (13, 20)  # w = 7, not 8
    assert sap.select_window(paper_curve(15, 12)) == (9, 12)  # w = 3


def test_select_window_uses_numpy_median():
    # median([4, 1, 3, 2]) = 2.5: last layer 2 < 2.5, layer 2 (value 3) is not -> l* = 3.
    # A lower median (2) would give l* = 4.
    assert sap.alignment_start([4, 1, 3, 2]) == 3
    assert sap.select_window([4, 1, 3, 2], rho=0.5) == (1, 3)


def test_select_window_last_layer_not_below_median_or_flat():
    assert sap.alignment_start(np.arange(10.0)) == 10
    assert sap.select_window(np.arange(10.0)) == (8, 10)
    assert sap.select_window(np.full(10, 0.7)) == (8, 10)


def test_select_window_clips_at_zero_and_tiny_curves():
    sr = [5, 6, 7, 8, 1, 2, 3, 4]  # median 4.5, trailing run 1..4 -> l* = 4; w = ceil(6.4) = 7
    assert sap.select_window(sr, rho=0.8) == (0, 4)
    assert sap.select_window([0.3]) == (0, 1)
    assert sap.select_window([2.0, 1.0]) == (0, 1)  # median 1.5 -> l* = 1, w = 1


def test_peak_window_finds_the_early_peak_algorithm1_passes_over():
    micro = [0.691, 0.835, 0.685, 0.579, 0.553, 0.754]  # the built-in micro model's SR curve
    assert sap.select_window(micro) == (4, 6)  # last layer above the median: the last w = 2 layers
    assert sap.peak_window(micro) == (0, 2)  # means 0.763, 0.760, 0.632, 0.566, 0.654
    assert sap.peak_window(paper_curve(28, 24)) == (18, 24)  # a curve peaking before l*: both agree
    assert sap.peak_window([1.0, 3.0, 1.0, 3.0], rho=0.25) == (1, 2)  # ties: the earliest
    assert sap.peak_window([0.3]) == (0, 1)
    assert set(sap.WINDOW_RULES) == {"algorithm1", "sr-peak"}
    with pytest.raises(ValueError, match="rho"):
        sap.peak_window(micro, rho=0.0)


@FAST
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-5, 5)), st.floats(0.01, 1.0))
def test_peak_window_has_the_highest_mean_of_its_width(sr, rho):
    start, end = sap.peak_window(sr, rho)
    w = sap.window_width(len(sr), rho)
    assert end - start == min(w, len(sr)) and start >= 0 and end <= len(sr)
    best = max(np.mean(sr[i:i + w]) for i in range(len(sr) - w + 1))
    assert np.mean(sr[start:end]) >= best - 1e-9


@FAST
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-5, 5)), st.floats(0.01, 1.0))
def test_select_window_invariants(sr, rho):
    start, end = sap.select_window(sr, rho)
    med = np.median(sr)
    assert (sr[end:] < med).all()
    assert end == len(sr) or end == 0 or sr[end - 1] >= med
    assert start == max(0, end - math.ceil(round(rho * len(sr), 9)))


@pytest.mark.parametrize("sr, match", [
    ([], "non-empty 1-D"),
    ([[1.0, 2.0], [3.0, 4.0]], "non-empty 1-D"),
    ([1.0, float("nan")], "NaN or infinite"),
    ([1.0, float("inf")], "NaN or infinite"),
])
def test_select_window_bad_curves(sr, match):
    with pytest.raises(ValueError, match=match):
        sap.select_window(sr)


@pytest.mark.parametrize("rho", [0.0, -0.2, 1.5, float("nan")])
def test_select_window_bad_rho(rho):
    with pytest.raises(ValueError, match="rho must be in"):
        sap.select_window(np.arange(10.0), rho=rho)


# --- keep_count / top_k / random_k -----------------------------------------------------------

@pytest.mark.parametrize("n, ratio, k", [
    (25, 0.1, 2),   # round(2.5) = 2 (banker's rounding)
    (35, 0.1, 4),   # round(3.5) = 4
    (10, 0.01, 1),  # at least one
    (3, 1.0, 3), (100, 0.3, 30), (1, 0.5, 1),
])
def test_keep_count(n, ratio, k):
    assert sap.keep_count(n, ratio) == k


@pytest.mark.parametrize("n, ratio, match", [
    (10, 0.0, "keep ratio"), (10, 1.5, "keep ratio"), (10, -0.1, "keep ratio"),
    (10, "0.5", "keep ratio"), (0, 0.5, "n=0"), (-3, 0.5, "n=-3"),
])
def test_keep_count_errors(n, ratio, match):
    with pytest.raises(ValueError, match=match):
        sap.keep_count(n, ratio)


def test_top_k_ascending_and_ties_to_lower_index():
    assert sap.top_k([0, 8, 1, 9], 0.5).tolist() == [1, 3]
    assert sap.top_k([1, 3, 3, 2, 3], 0.4).tolist() == [1, 2]
    assert sap.top_k([1, 3, 3, 2, 3], 0.6).tolist() == [1, 2, 4]
    assert sap.top_k([5, 5, 5, 5], 0.5).tolist() == [0, 1]
    assert sap.top_k([2, 7, 7, 7], 0.25).tolist() == [1]


def test_jaccard_of_kept_sets():
    assert sap.jaccard([1, 2, 3], [1, 2, 3]) == 1.0
    assert sap.jaccard([0, 1, 2], [1, 2, 3]) == 2 / 4
    assert sap.jaccard([0], [5]) == 0.0 and sap.jaccard([], []) == 0.0


@FAST
@given(arrays(np.float64, st.integers(1, 50), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0, 3.25])),
       st.floats(0.01, 1.0))
def test_top_k_properties(scores, ratio):
    kept = sap.top_k(scores, ratio)
    assert len(kept) == sap.keep_count(len(scores), ratio)
    assert (np.diff(kept) > 0).all()  # sorted and unique
    dropped = np.setdiff1d(np.arange(len(scores)), kept)
    if len(dropped):
        assert scores[kept].min() >= scores[dropped].max()
        # ties: a dropped token equal to the weakest kept one must sit after every kept tie
        tie = scores[kept].min()
        assert all(d > kept[scores[kept] == tie].max() for d in dropped[scores[dropped] == tie])


@pytest.mark.parametrize("scores, match", [
    ([1.0, float("nan")], "NaN"), ([[1.0, 2.0]], "1-D"),
])
def test_top_k_errors(scores, match):
    with pytest.raises(ValueError, match=match):
        sap.top_k(scores, 0.5)


def test_random_k_subset_shape_and_uniformity():
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(3000):
        kept = sap.random_k(10, 0.3, rng)
        assert len(kept) == 3 and (np.diff(kept) > 0).all() and kept[0] >= 0 and kept[-1] < 10
        counts[kept] += 1
    np.testing.assert_allclose(counts / 3000, 0.3, atol=0.04)  # each position kept ~k/n of the time
    assert sap.random_k(7, 1.0, rng).tolist() == list(range(7))
    a, b = sap.random_k(50, 0.2, np.random.default_rng(5)), sap.random_k(50, 0.2, np.random.default_rng(5))
    assert a.tolist() == b.tolist()
    with pytest.raises(ValueError, match="keep ratio"):
        sap.random_k(10, 0.0, rng)


# --- maxsim / score_retention ----------------------------------------------------------------

Q = np.array([[1.0, 0.0], [0.0, 1.0]])
D = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, -1.0]])
# q0 . d = [0.5, 1, 0] -> 1;  q1 . d = [0.5, 0, -1] -> 0.5;  MaxSim = 1.5


def test_maxsim_hand_example():
    assert sap.maxsim(Q, D) == pytest.approx(1.5)
    assert sap.maxsim(Q, D[[2]]) == pytest.approx(-1.0)  # q0 -> 0, q1 -> -1


@pytest.mark.parametrize("q, d, match", [
    (Q[0], D, "2-D arrays"), (Q, np.ones((3, 3)), "embedding dims differ: query 2, page 3"),
    (np.zeros((0, 2)), D, "at least one vector"), (Q, np.zeros((0, 2)), "at least one vector"),
])
def test_maxsim_errors(q, d, match):
    with pytest.raises(ValueError, match=match):
        sap.maxsim(q, d)


def test_maxsim_segments_equals_maxsim_per_pair():
    rng = np.random.default_rng(5)
    queries = [rng.standard_normal((m, 8)) for m in (1, 4, 9)]
    pages = [rng.standard_normal((n, 8)) for n in (1, 1, 6, 30, 2)]

    def starts(arrays):
        return np.cumsum([0] + [len(a) for a in arrays[:-1]])

    got = sap.maxsim_segments(np.concatenate(queries), starts(queries), np.concatenate(pages), starts(pages))
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, [[sap.maxsim(q, d) for d in pages] for q in queries], rtol=1e-12)
    assert sap.maxsim_segments(Q, np.array([0]), D, np.array([0, 2]))[0].tolist() == pytest.approx([1.5, -1.0])


def test_score_retention_hand_example():
    assert sap.score_retention(Q, D, [0]) == pytest.approx(1.0 / 1.5)  # q0 -> .5, q1 -> .5
    assert sap.score_retention(Q, D, np.array([1, 2])) == pytest.approx(1.0 / 1.5)  # 1 + 0
    assert sap.score_retention(Q, D, [0, 1]) == pytest.approx(1.0)
    assert sap.score_retention(np.zeros((2, 2)), D, [2]) == 1.0  # full score 0


@pytest.mark.parametrize("kept, match", [
    ([3], r"must lie in \[0, 3\)"), ([-1, 0], r"must lie in \[0, 3\)"), ([], "non-empty 1-D"),
    ([[0, 1]], "non-empty 1-D"), (np.array([True, False, True]), "integer positions"),
    (np.array([0.0, 1.0]), "integer positions"),
])
def test_score_retention_errors(kept, match):
    with pytest.raises(ValueError, match=match):
        sap.score_retention(Q, D, kept)


@FAST
@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_score_retention_bounds(m, n, dim, seed):
    rng = np.random.default_rng(seed)
    q, d = rng.random((m, dim)), rng.random((n, dim))  # non-negative -> non-negative similarities
    sub = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
    r = sap.score_retention(q, d, sub)
    assert 0.0 <= r <= 1.0 + 1e-12
    assert sap.score_retention(q, d, np.arange(n)) == pytest.approx(1.0)
    # keeping more positions never lowers retention
    assert sap.score_retention(q, d, np.union1d(sub, [0])) >= r - 1e-12


def test_causal_correction_divides_by_attending_rows():
    # causal uniform attention over 3 visual tokens: rows [1,0,0], [.5,.5,0], [1/3,1/3,1/3]
    attn = np.array([[[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]]])
    c = sap.in_degree(attn, np.ones(3, dtype=bool))
    np.testing.assert_allclose(c, [11 / 6, 5 / 6, 1 / 3])
    np.testing.assert_allclose(sap.causal_correction(c), [11 / 18, 5 / 12, 1 / 3])
    flat = sap.causal_correction(np.arange(4, 0, -1.0))  # column sums proportional to V - j
    np.testing.assert_allclose(flat, np.ones(4))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        sap.causal_correction(np.zeros((2, 2)))


def test_causal_correction_divides_by_the_rows_that_see_each_token_in_sequence_order():
    """Values in another order than the sequence (Idefics3 pages are stored spatially): the
    divisor is ``V - seq_rank``, so the result is the sequence-order correction, permuted."""
    seq_values = np.array([6.0, 5.0, 1.0, 3.0])  # sequence order: divisors 4, 3, 2, 1
    order = np.array([2, 0, 3, 1])  # spatial position k holds sequence token order[k]
    corrected = sap.causal_correction(seq_values[order], seq_rank=order)
    np.testing.assert_allclose(corrected, sap.causal_correction(seq_values)[order])
    np.testing.assert_allclose(corrected, [1 / 2, 6 / 4, 3 / 1, 5 / 3])
    with pytest.raises(ValueError, match="permutation"):
        sap.causal_correction(seq_values, seq_rank=[0, 0, 1, 2])


def test_select_is_top_k_or_its_causal_correction():
    """sap.select is the one SAP selection rule (index-time pruning and eval's sap/sap-poscorr)."""
    rng = np.random.default_rng(3)
    centrality, rank = rng.random(40), rng.permutation(40)
    np.testing.assert_array_equal(sap.select(centrality, 0.2), sap.top_k(centrality, 0.2))
    corrected = sap.top_k(sap.causal_correction(centrality, rank), 0.2)
    np.testing.assert_array_equal(sap.select(centrality, 0.2, rank), corrected)
    assert not np.array_equal(corrected, sap.top_k(centrality, 0.2))  # the correction changes the pick here
