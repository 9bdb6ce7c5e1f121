"""The compression methods (sapindex.compression: SAP, the paper's baselines, the registry) against direct
computations."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sapindex import compression as C
from sapindex import sap

NS = (1, 2, 3, 7, 50, 257)
RATIOS = (0.01, 0.1, 1 / 3, 0.5, 0.9, 1.0)


def unit(rng, n, dim=32):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sorted_rows(x):
    return x[np.lexsort(x.T[::-1])]


# ------------------------------------------------------------------------------ matched counts


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_matched_counts(n, ratio):
    rng = np.random.default_rng(n)
    v = unit(rng, n)
    e = rng.random(n)
    k = sap.keep_count(n, ratio)
    outs = {
        "random": C.random(v, ratio, seed=3),
        "eos": C.eos(v, e, ratio),
        "pooling": C.pooling(v, ratio),
        "cluster": C.cluster(v, ratio, seed=0),
    }
    for name, out in outs.items():
        assert len(out) == k, name
        assert out.vectors.shape == (k, v.shape[1]) and out.vectors.dtype == np.float32, name
        np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5, err_msg=name)
    for name in ("random", "eos"):
        pos = outs[name].positions
        assert pos.dtype == np.int64 and np.all(np.diff(pos) > 0) and pos.min() >= 0 and pos.max() < n
        np.testing.assert_array_equal(outs[name].vectors, v[pos])
    assert outs["pooling"].positions is None and outs["cluster"].positions is None


# ------------------------------------------------------------------------------ random


def test_random_is_sap_random_k_and_deterministic():
    rng = np.random.default_rng(0)
    v = unit(rng, 100)
    for seed in C.RANDOM_SEEDS:
        out = C.random(v, 0.25, seed)
        np.testing.assert_array_equal(out.positions, sap.random_k(100, 0.25, np.random.default_rng(seed)))
        np.testing.assert_array_equal(C.random(v, 0.25, seed).positions, out.positions)
    draws = {tuple(C.random(v, 0.25, s).positions) for s in C.RANDOM_SEEDS}
    assert len(draws) == len(C.RANDOM_SEEDS)


# ------------------------------------------------------------------------------ eos


def test_eos_is_argsort_top_k_with_lower_index_ties():
    rng = np.random.default_rng(1)
    for n in (1, 5, 40, 300):
        v = unit(rng, n)
        e = rng.integers(0, 6, n).astype(np.float32)  # many ties
        for ratio in (0.1, 0.3, 0.5, 1.0):
            k = sap.keep_count(n, ratio)
            expect = np.sort(np.argsort(-e.astype(np.float64), kind="stable")[:k])
            out = C.eos(v, e, ratio)
            np.testing.assert_array_equal(out.positions, expect)
            np.testing.assert_array_equal(out.vectors, v[expect])


def test_eos_checks_its_input():
    v = unit(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="cover 3 tokens"):
        C.eos(v, np.ones(3), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        C.eos(v, np.array([1.0, np.nan, 0, 0]), 0.5)


# ------------------------------------------------------------------------------ adaptive eos


def test_adaptive_threshold_by_hand():
    e = np.array([1.0, 2.0, 3.0, 4.0, 10.0])  # mean 4, population std sqrt(10)
    v = unit(np.random.default_rng(0), 5)
    assert np.isclose(e.std(), np.sqrt(10.0))
    cases = {0.5: [4],                # threshold 4 + 1.58 = 5.58
             -0.5: [2, 3, 4],         # 4 - 1.58 = 2.42
             -1.0: [0, 1, 2, 3, 4],   # 4 - 3.16 = 0.84
             3.0: [4]}                # 13.49: nothing above, the argmax is forced in
    for k, expect in cases.items():
        out = C.adaptive_eos(v, e, k)
        np.testing.assert_array_equal(out.positions, expect)
        np.testing.assert_array_equal(out.vectors, v[expect])
    # k = 0: strictly above the mean (4.0 itself is not kept)
    np.testing.assert_array_equal(C.adaptive_eos(v, e, 0.0).positions, [4])


def test_adaptive_matches_formula_on_random_pages():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(1, 400))
        e = rng.gamma(0.5, size=n).astype(np.float32)
        k = float(rng.uniform(-1.5, 3.0))
        s = e.astype(np.float64)
        keep = s > s.mean() + k * np.sqrt(((s - s.mean()) ** 2).mean())
        keep[np.argmax(s)] = True
        np.testing.assert_array_equal(C.adaptive_eos(unit(rng, n), e, k).positions, np.flatnonzero(keep))


def test_adaptive_flat_page_keeps_the_first_argmax():
    v = unit(np.random.default_rng(0), 6)
    for k in (-2.0, 0.0, 2.0):
        np.testing.assert_array_equal(C.adaptive_eos(v, np.full(6, 0.25), k).positions, [0])
    np.testing.assert_array_equal(C.adaptive_eos(v[:1], np.array([3.0]), 1.0).positions, [0])


def synthetic_eos_pages(rng, n_pages):
    """Pages of varied length and peakedness, like EOS attention (a few salient tokens, a long tail)."""
    pages = []
    for _ in range(n_pages):
        n = int(rng.integers(100, 900))
        e = rng.gamma(float(rng.uniform(0.2, 2.0)), size=n)
        pages.append((e / e.sum()).astype(np.float32))
    return pages


def global_rate(pages, k):
    return sum(int(C.adaptive_eos_mask(p, k).sum()) for p in pages) / sum(p.size for p in pages)


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.25, 0.5])
def test_calibrate_adaptive_eos_reaches_the_global_rate(ratio):
    rng = np.random.default_rng(int(ratio * 100))
    pages = synthetic_eos_pages(rng, 60)
    total = sum(p.size for p in pages)
    k = C.calibrate_adaptive_eos(pages, ratio)
    r = global_rate(pages, k)
    assert abs(r - ratio) <= 3 / total  # the step function moves by ~1 token at a time
    # no other plateau is closer: nudging k either way (past the neighbouring z-scores) is not better
    for dk in (-1e-3, 1e-3, -1e-2, 1e-2):
        assert abs(global_rate(pages, k + dk) - ratio) >= abs(r - ratio) - 1e-12
    # k is applied per page: the counts are not matched per page, only globally
    counts = [int(C.adaptive_eos_mask(p, k).sum()) for p in pages]
    assert len({c - sap.keep_count(p.size, ratio) for c, p in zip(counts, pages, strict=True)}) > 1
    # and it carries over to held-out pages from the same distribution
    assert abs(global_rate(synthetic_eos_pages(rng, 60), k) - ratio) < 0.03


def test_calibrate_adaptive_eos_is_monotone_and_handles_the_ends():
    rng = np.random.default_rng(5)
    pages = synthetic_eos_pages(rng, 20)
    ks = [C.calibrate_adaptive_eos(pages, r) for r in (0.05, 0.1, 0.2, 0.4, 0.8)]
    assert all(a > b for a, b in zip(ks, ks[1:], strict=False))
    assert global_rate(pages, C.calibrate_adaptive_eos(pages, 1.0)) == 1.0
    # below n_pages / total nothing but the argmaxes can be kept
    k = C.calibrate_adaptive_eos(pages, 1e-4)
    assert all(C.adaptive_eos_mask(p, k).sum() == 1 for p in pages)
    # tiny exact case: z-scores of [0, 0, 0, 1] are -1/sqrt(3) x3 and sqrt(3); rate 1/4 or 1
    page = np.array([0.0, 0.0, 0.0, 1.0])
    assert global_rate([page], C.calibrate_adaptive_eos([page], 0.3)) == 0.25
    assert global_rate([page], C.calibrate_adaptive_eos([page], 0.7)) == 1.0
    with pytest.raises(ValueError):
        C.calibrate_adaptive_eos([], 0.1)


# ------------------------------------------------------------------------------ pooling


@pytest.fixture(scope="module")
def colpali_pooler():
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("torch")
    from sapindex.models._compat import prepare_torch_side

    prepare_torch_side()
    token_pooling = pytest.importorskip("colpali_engine.compression.token_pooling")
    return token_pooling.HierarchicalTokenPooler()


@pytest.mark.parametrize("n,pool_factor,dim", [(2, 2, 8), (9, 3, 16), (30, 3, 128), (101, 4, 128),
                                               (257, 9, 128), (400, 25, 64)])
def test_pooling_equals_colpali_hierarchical_token_pooler(colpali_pooler, n, pool_factor, dim):
    import torch

    rng = np.random.default_rng(n)
    v = unit(rng, n, dim)
    k = max(n // pool_factor, 1)
    ratio = k / n
    assert sap.keep_count(n, ratio) == k  # same cluster count on both sides
    ref = colpali_pooler.pool_embeddings([torch.from_numpy(v.copy())], pool_factor=pool_factor)[0].numpy()
    ours = C.pooling(v, ratio).vectors
    assert ours.shape == ref.shape == (k, dim)
    np.testing.assert_allclose(ours, ref, atol=1e-6)  # same cluster order (by label)
    np.testing.assert_allclose(sorted_rows(ours), sorted_rows(ref), atol=1e-6)


def test_pooling_is_the_renormalised_mean_of_its_clusters():
    rng = np.random.default_rng(7)
    v = unit(rng, 120)
    k = sap.keep_count(120, 0.2)
    labels = C.pooling_labels(v, k)
    assert set(labels.tolist()) == set(range(k))
    expect = normalize(np.stack([v[labels == c].mean(axis=0) for c in range(k)]))
    np.testing.assert_allclose(C.pooling(v, 0.2).vectors, expect, atol=1e-6)


def test_pooling_count_is_at_most_keep_count_on_ties():
    rng = np.random.default_rng(8)
    base = unit(rng, 3)
    v = np.repeat(base, 10, axis=0)  # 30 tokens, 3 distinct: duplicates merge at height 0
    out = C.pooling(v, 0.5)
    assert len(out) == 3 < sap.keep_count(30, 0.5)
    np.testing.assert_allclose(sorted_rows(out.vectors), sorted_rows(base), atol=1e-6)


def test_pooling_count_equals_keep_count_on_generic_data():
    rng = np.random.default_rng(9)
    for n in (5, 64, 333):
        v = unit(rng, n, 128)
        for ratio in (0.05, 0.1, 0.33, 0.7):
            assert len(C.pooling(v, ratio)) == sap.keep_count(n, ratio)


# ------------------------------------------------------------------------------ cluster


def test_cluster_centroids_are_renormalised_member_means():
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(10)
    v = unit(rng, 300, 128)
    for seed in (0, 1):
        out = C.cluster(v, 0.1, seed)
        with threadpool_limits(limits=1):
            km = KMeans(n_clusters=30, n_init=4, random_state=seed).fit(v.astype(np.float64))
        labels = km.labels_
        assert set(labels.tolist()) == set(range(30))
        means = np.stack([v[labels == c].astype(np.float64).mean(axis=0) for c in range(30)])
        np.testing.assert_allclose(out.vectors, normalize(means), atol=1e-6)
        np.testing.assert_allclose(km.cluster_centers_, means, atol=1e-6)  # converged Lloyd
        # each member is closer to its own centroid than to any other (a k-means fixed point)
        d = ((v[:, None, :].astype(np.float64) - means[None]) ** 2).sum(-1)
        assert np.all(d[np.arange(300), labels] <= d.min(axis=1) + 1e-9)


def test_cluster_is_deterministic_for_a_seed():
    v = unit(np.random.default_rng(11), 200, 64)
    a, b, c = C.cluster(v, 0.1, 0), C.cluster(v, 0.1, 0), C.cluster(v, 0.1, 1)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert not np.array_equal(sorted_rows(a.vectors), sorted_rows(c.vectors))


def test_cluster_with_fewer_distinct_vectors_than_k_still_stores_k():
    base = unit(np.random.default_rng(12), 2)
    v = np.repeat(base, 5, axis=0)
    out = C.cluster(v, 0.5, 0)
    assert len(out) == 5
    # every stored vector is one of the two distinct tokens
    assert np.all(np.abs(out.vectors @ base.T).max(axis=1) > 1 - 1e-6)


# ------------------------------------------------------------------------------ registry


def test_registry_dispatches_to_the_methods():
    assert list(C.METHODS) == ["full", "sap", "sap-poscorr", "sap-fast", "random", "eos", "adaptive-eos", "pooling",
                               "cluster", "sap-merge", "sap-kmeans", "sap-budget"]
    rng = np.random.default_rng(13)
    v, e, c, rank = unit(rng, 80), rng.random(80), rng.random(80), rng.permutation(80)
    np.testing.assert_array_equal(C.compress("full", v).vectors, v)
    np.testing.assert_array_equal(C.compress("sap", v, ratio=0.2, centrality=c).positions, sap.top_k(c, 0.2))
    np.testing.assert_array_equal(C.compress("sap-poscorr", v, ratio=0.2, centrality=c, seq_rank=rank).positions,
                                  sap.top_k(sap.causal_correction(c, rank), 0.2))
    assert C.METHODS["sap-poscorr"].causal_only and not C.METHODS["sap"].causal_only
    # sap-fast selects as SAP; its vectors come from the fast-mode encoder (the eval runner)
    np.testing.assert_array_equal(C.compress("sap-fast", v, ratio=0.2, centrality=c).positions, sap.top_k(c, 0.2))
    assert C.METHODS["sap-fast"].fast and not any(C.METHODS[m].fast for m in C.METHODS if m != "sap-fast")
    np.testing.assert_array_equal(C.compress("random", v, ratio=0.2, seed=2).positions,
                                  C.random(v, 0.2, 2).positions)
    np.testing.assert_array_equal(C.compress("eos", v, ratio=0.2, eos=e).positions, C.eos(v, e, 0.2).positions)
    np.testing.assert_array_equal(C.compress("adaptive-eos", v, eos=e, adaptive_k=0.5).positions,
                                  C.adaptive_eos(v, e, 0.5).positions)
    np.testing.assert_array_equal(C.compress("pooling", v, ratio=0.2).vectors, C.pooling(v, 0.2).vectors)
    np.testing.assert_array_equal(C.compress("cluster", v, ratio=0.2, seed=1).vectors, C.cluster(v, 0.2, 1).vectors)
    k = sap.keep_count(80, 0.2)
    np.testing.assert_array_equal(C.compress("sap-merge", v, ratio=0.2, centrality=c).vectors,
                                  C.anchor_merge(v, c, k).vectors)
    np.testing.assert_array_equal(C.compress("sap-kmeans", v, ratio=0.2, centrality=c, seed=1).vectors,
                                  C.central_kmeans(v, c, k, seed=1).vectors)
    budget = C.compress("sap-budget", v, centrality=c, budget_scale=0.5)
    np.testing.assert_array_equal(budget.positions, sap.highest(c, C.budget_count(c, 0.5)))
    assert C.METHODS["sap-merge"].merging and C.METHODS["sap-kmeans"].merging and C.METHODS["sap-kmeans"].matched
    assert C.METHODS["sap-budget"].calibrated and not C.METHODS["sap-budget"].matched
    with pytest.raises(ValueError, match="budget_scale"):
        C.compress("sap-budget", v, ratio=0.2, centrality=c)
    assert C.METHODS["random"].seeds == C.RANDOM_SEEDS and C.METHODS["eos"].seeds == (0,)
    assert not C.METHODS["adaptive-eos"].matched and C.METHODS["adaptive-eos"].calibrated
    assert C.METHODS["pooling"].merging and C.METHODS["cluster"].merging and not C.METHODS["eos"].merging
    with pytest.raises(ValueError, match="EOS"):
        C.compress("eos", v, ratio=0.2)
    with pytest.raises(ValueError, match="adaptive_k"):
        C.compress("adaptive-eos", v, eos=e)
    with pytest.raises(ValueError, match="keep ratio"):
        C.compress("pooling", v)
    with pytest.raises(ValueError, match="centrality"):
        C.compress("sap", v, ratio=0.2)
    with pytest.raises(ValueError, match="sequence ranks"):
        C.compress("sap-poscorr", v, ratio=0.2, centrality=c)
    with pytest.raises(ValueError, match="unknown method"):
        C.compress("light-colpali", v, ratio=0.2)
    # what each method can do, read off the one registry
    assert C.INDEX_METHODS == ("sap", "sap-merge", "sap-kmeans", "sap-budget") and C.DEFAULT_METHOD == "sap"
    assert C.PRUNABLE_METHODS == ("sap", "sap-poscorr")
    assert [m for m in C.METHODS if C.METHODS[m].fast_mode] == ["sap", "sap-poscorr"]
    assert {m for m in C.METHODS if C.METHODS[m].eval_only} == {"full", "random", "eos", "adaptive-eos", "pooling",
                                                                 "cluster"}
    assert [m for m in C.METHODS if "eos" in C.METHODS[m].needs] == ["eos", "adaptive-eos"]


def test_running_every_baseline_imports_no_torch():
    code = (
        "import sys, numpy as np\n"
        "from sapindex import compression as C\n"
        "v = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)\n"
        "v /= np.linalg.norm(v, axis=1, keepdims=True); e = np.random.default_rng(1).random(40)\n"
        "k = C.calibrate_adaptive_eos([e], 0.2)\n"
        "for name in C.METHODS:\n"
        "    C.compress(name, v, ratio=0.2, eos=e, adaptive_k=k, centrality=e, seq_rank=np.arange(40),\n"
        "               budget_scale=0.3)\n"
        "print(','.join(m for m in ('torch', 'transformers', 'colpali_engine', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
