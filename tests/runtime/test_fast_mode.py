"""Fast mode on the shipped micro bundle (torch-free): what the tail is fed, and what comes back."""

import numpy as np
import pytest
from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.runtime.encoder import Encoder, prune
from sapindex.runtime.options import IndexOptions, check_fast_mode
from sapindex.runtime.session import tail_feed

NEG = np.finfo(np.float32).min


@pytest.fixture(scope="module")
def encoder():
    return Encoder(Bundle.open(default_bundle_path()))


@pytest.fixture(scope="module")
def pages():
    """Three example pages and a small one: one batch with padding in the tail."""
    images = [Image.open(p).convert("RGB") for p in example_pages()[:3]]
    return images + [images[0].resize((300, 420))]


def test_tail_feed_takes_rows_columns_and_positions_of_the_picked_tokens():
    rng = np.random.default_rng(0)
    seq, hidden, hd = 6, 4, 2
    head = {"states": rng.normal(size=(2, seq, hidden)).astype(np.float32),
            "attention_bias": rng.normal(size=(2, 1, seq, seq)).astype(np.float32),
            "rope_cos": rng.normal(size=(2, 1, seq, hd)).astype(np.float32),
            "rope_sin": rng.normal(size=(2, 1, seq, hd)).astype(np.float32)}
    tokens = [np.array([0, 2, 5]), np.array([1, 4])]
    feed = tail_feed(head, tokens)
    assert feed["states"].shape == (2, 3, hidden) and feed["attention_bias"].shape == (2, 1, 3, 3)
    assert np.array_equal(feed["attention_mask"], [[1, 1, 1], [1, 1, 0]])
    for b, t in enumerate(tokens):
        n = len(t)
        assert np.array_equal(feed["states"][b, :n], head["states"][b, t])
        assert np.array_equal(feed["attention_bias"][b, 0, :n, :n], head["attention_bias"][b, 0][np.ix_(t, t)])
        for name in ("rope_cos", "rope_sin"):
            assert np.array_equal(feed[name][b, 0, :n], head[name][b, 0, t])
    # the padding slot of page 1: no real token attends it, and it attends only itself (no NaN row)
    assert (feed["attention_bias"][1, 0, :2, 2] == NEG).all()
    assert np.array_equal(feed["attention_bias"][1, 0, 2], [NEG, NEG, 0.0])


def test_fast_mode_keeping_every_token_is_exact_mode(encoder, pages):
    """At keep ratio 1 the tail sees every valid token: fast mode must give exact mode's vectors (the
    padding it drops was masked anyway); this checks the gather end to end on a padded batch."""
    exact = encoder.encode_pages_pruned(pages, IndexOptions(keep_ratio=1.0))
    fast = encoder.encode_pages_pruned(pages, IndexOptions(keep_ratio=1.0, mode="fast"))
    for a, b in zip(exact, fast, strict=True):
        assert np.array_equal(a.positions, b.positions) and a.n_visual == b.n_visual == len(b.positions)
        assert np.abs(a.vectors - b.vectors).max() <= 1e-5


@pytest.mark.parametrize("ratio", [0.2, 0.05])
def test_fast_mode_keeps_sap_set_and_approximates_its_vectors(encoder, pages, ratio):
    """The head is shared, so fast mode keeps exactly SAP's tokens with the same scores; the vectors are
    unit-norm and close to, not equal to, exact mode's (the later layers saw fewer tokens)."""
    tokens = encoder.encode_pages(pages)
    fast = encoder.encode_pages_pruned(pages, IndexOptions(keep_ratio=ratio, mode="fast"))
    cosines = []
    for page, f in zip(tokens, fast, strict=True):
        exact = prune(page, ratio)
        assert np.array_equal(exact.positions, f.positions) and np.allclose(exact.scores, f.scores)
        assert (f.grid, f.global_grid, f.n_visual) == (exact.grid, exact.global_grid, exact.n_visual)
        assert np.allclose(np.linalg.norm(f.vectors, axis=1), 1.0, atol=1e-5)
        cosines.append((f.vectors * exact.vectors).sum(axis=1))
    cosines = np.concatenate(cosines)
    assert 0.8 < cosines.mean() < 0.9999


def test_fast_mode_needs_a_format_2_bundle(encoder, tmp_path):
    old = Bundle(tmp_path / "v1.sap", {**encoder.bundle.manifest, "format_version": 1})
    with pytest.raises(SapIndexError, match="needs a format-2 bundle"):
        check_fast_mode(old)
    with pytest.raises(SapIndexError, match="--mode quick: choose exact or fast"):
        IndexOptions(keep_ratio=0.1, mode="quick")
