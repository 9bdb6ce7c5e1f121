"""The methods beyond the paper (sapindex.compression: sap-merge, sap-kmeans, sap-budget) against direct,
loop-by-loop computations on small pages."""

import warnings

import numpy as np
import pytest

from sapindex import compression, sap


def unit(rng, n, dim=8):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def direct_mean(rows, weights):
    m = (rows.astype(np.float64) * np.asarray(weights, np.float64)[:, None]).sum(axis=0)
    return m / np.linalg.norm(m)


def check_cover(merged, n):
    """Each stored vector's anchor is covered by that vector, every token by one vector."""
    assert merged.cover.shape == (n,) and merged.cover.min() >= 0 and merged.cover.max() == len(merged) - 1
    np.testing.assert_array_equal(merged.cover[merged.positions], np.arange(len(merged)))
    assert np.all(np.diff(merged.positions) > 0)


@pytest.mark.parametrize("weights", ["uniform", "centrality"])
def test_anchor_merge_by_cosine_is_the_mean_of_each_anchor_and_its_most_similar_dropped_tokens(weights):
    rng = np.random.default_rng(0)
    v, c = unit(rng, 30), rng.random(30)
    k = sap.keep_count(30, 0.2)
    merged = compression.anchor_merge(v, c, k, weights=weights)
    anchors = sap.highest(c, k)
    np.testing.assert_array_equal(merged.positions, anchors)  # exactly SAP's kept tokens
    check_cover(merged, 30)
    for t in range(30):  # each dropped token joins the anchor its vector is most similar to
        if t not in anchors:
            sims = [float(np.dot(v[t].astype(np.float64), v[a].astype(np.float64))) for a in anchors]
            assert merged.cover[t] == int(np.argmax(sims))
    for i in range(k):
        members = np.flatnonzero(merged.cover == i)
        w = np.ones(len(members)) if weights == "uniform" else c[members]
        np.testing.assert_allclose(merged.vectors[i], direct_mean(v[members], w), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(merged.vectors, axis=1), 1.0, atol=1e-6)


def test_anchor_merge_on_the_grid_joins_the_nearest_anchor_and_both_mixes_the_two():
    rng = np.random.default_rng(1)
    v, c = unit(rng, 24), rng.random(24)
    coords = compression.grid_coordinates(24, (4, 6))
    merged = compression.anchor_merge(v, c, 4, assign="grid", coords=coords)
    anchors = sap.highest(c, 4)
    for t in range(24):
        d = [np.hypot(t // 6 - a // 6, t % 6 - a % 6) for a in anchors]
        best = np.flatnonzero(np.isclose(d, min(d)))[0]  # ties to the lower anchor
        assert merged.cover[t] == (list(anchors).index(t) if t in anchors else best)
    both = compression.anchor_merge(v, c, 4, assign="both", coords=coords)
    diagonal = np.hypot(3, 5)
    for t in set(range(24)) - set(anchors):
        score = [float(v[t].astype(np.float64) @ v[a].astype(np.float64))
                 - np.hypot(t // 6 - a // 6, t % 6 - a % 6) / diagonal for a in anchors]
        assert both.cover[t] == int(np.argmax(score))
    with pytest.raises(ValueError, match="coords"):
        compression.anchor_merge(v, c, 4, assign="grid")
    with pytest.raises(ValueError, match="assign"):
        compression.anchor_merge(v, c, 4, assign="nearest")


def test_grid_coordinates_place_global_tile_tokens_over_the_page_region_they_cover():
    xy = compression.grid_coordinates(6 + 4, (2, 3), (2, 2))
    np.testing.assert_array_equal(xy[:6], [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    # global cell (0, 0) covers page rows [0, 1) and cols [0, 1.5): its centre, in page-cell units
    np.testing.assert_allclose(xy[6], [0.0, 0.25])
    np.testing.assert_allclose(xy[9], [1.0, 1.75])
    with pytest.raises(ValueError, match="exceed"):
        compression.grid_coordinates(11, (2, 3), (2, 2))


def test_central_kmeans_is_scikit_learns_weighted_kmeans_placed_at_each_clusters_most_central_token():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(2)
    v, c = unit(rng, 40), rng.random(40)
    c[5] = 0.0  # a token nobody attends still belongs to a cluster
    merged = compression.central_kmeans(v, c, 6, seed=3)
    assert len(merged) == 6  # matched count
    check_cover(merged, 40)
    w = np.maximum(c, c[c > 0].min() * 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = KMeans(n_clusters=6, n_init=4, random_state=3).fit(v.astype(np.float64), sample_weight=w).labels_
    for i in range(6):
        members = np.flatnonzero(merged.cover == i)
        assert len(np.unique(labels[members])) == 1 and np.sum(labels == labels[members[0]]) == len(members)
        assert merged.positions[i] == members[np.argmax(c[members])]  # its most central member
        np.testing.assert_allclose(merged.vectors[i], direct_mean(v[members], w[members]), atol=1e-6)
    whole = compression.central_kmeans(v, c, 40)
    np.testing.assert_array_equal(whole.vectors, v)
    np.testing.assert_array_equal(whole.cover, np.arange(40))


def test_effective_tokens_and_the_budget_count_follow_the_entropy_of_the_centrality():
    assert compression.effective_tokens([0, 0, 5, 0]) == pytest.approx(1.0)
    assert compression.effective_tokens([1, 1, 1, 1]) == pytest.approx(4.0)
    c = np.array([0.5, 0.25, 0.25])
    assert compression.effective_tokens(c) == pytest.approx(np.exp(-(c * np.log(c)).sum()))
    assert compression.effective_tokens(np.zeros(7)) == 7.0
    assert compression.budget_count([1, 1, 1, 1], 0.5) == 2
    assert compression.budget_count([1, 1, 1, 1], 10.0) == 4  # at most every token
    assert compression.budget_count([0, 0, 5, 0], 0.01) == 1  # at least one
    with pytest.raises(ValueError, match="positive"):
        compression.budget_count([1, 1], 0.0)


def test_calibrate_budget_spreads_the_fixed_ratios_total_by_content():
    rng = np.random.default_rng(4)
    # pages of one size whose attention is spread over more or fewer tokens
    pages = [rng.random(200) ** p for p in (1, 2, 4, 8, 16, 32)]
    scale = compression.calibrate_budget(pages, 0.1)
    eff = np.array([compression.effective_tokens(c) for c in pages])
    assert scale == pytest.approx(6 * sap.keep_count(200, 0.1) / eff.sum())
    counts = np.array([compression.budget_count(c, scale) for c in pages])
    assert abs(counts.sum() - 6 * 20) <= 3  # the same total, up to rounding
    assert np.all(np.diff(counts) < 0)  # more concentrated attention, fewer vectors


def test_bad_inputs_are_refused():
    v, c = unit(np.random.default_rng(5), 5), np.ones(5)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        compression.anchor_merge(v, c, 6)
    with pytest.raises(ValueError, match="centrality must be"):
        compression.central_kmeans(v, np.ones(4), 2)
    with pytest.raises(ValueError, match="non-negative"):
        compression.anchor_merge(v, -c, 2)
    with pytest.raises(ValueError, match="at least one page"):
        compression.calibrate_budget([], 0.1)
