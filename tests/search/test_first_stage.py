"""Two-stage search: the first stage's estimate, candidates rescored exactly, new pages coded at
load, filters, a rebuilt stage picked up by an open searcher, and the CLI (optimize, inspect, --exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import h, make_row, run_cli

from sapindex.index.store import Index
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder
from sapindex.sap import maxsim
from sapindex.search import Searcher, first_stage

DIM = 128


@pytest.fixture(scope="module")
def encoder():
    return Encoder(Bundle.open(default_bundle_path()), graphs=("text",))


def clustered_rows(n, seed=0, n_topics=40, k=12):
    """Pages drawn around a few topics (as real pages are), so the first stage has structure to find."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, 4, DIM)).astype(np.float32)
    rows = []
    for i in range(n):
        t = topics[rng.integers(n_topics)]
        v = t[rng.integers(4, size=k)] + 0.6 * rng.standard_normal((k, DIM)).astype(np.float32)
        row = make_row(f"/c/d{i // 5}.pdf", h(i // 5), i % 5 + 1, k, seed=i, dim=DIM)
        row.vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        rows.append(row)
    return rows, topics


@pytest.fixture
def optimized(tmp_path):
    rows, topics = clustered_rows(3000)
    with Index.create_or_open(tmp_path / "idx", "fp", DIM) as idx:
        idx.add_pages(rows)
        info = first_stage.build(idx)
    return tmp_path / "idx", rows, topics, info


def test_the_estimate_is_exact_maxsim_when_every_vector_is_its_own_centroid():
    rng = np.random.default_rng(0)
    pages = [rng.standard_normal((int(rng.integers(2, 6)), 8)) for _ in range(50)]
    pages = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in pages]
    vecs = np.concatenate(pages).astype(np.float32)
    codes = np.arange(len(vecs), dtype=np.uint16)
    owner = np.repeat(np.arange(50), [len(p) for p in pages])
    postings = first_stage.Postings(codes, owner, 50, len(vecs))
    q = rng.standard_normal((5, 8)).astype(np.float32)
    exact = np.array([maxsim(q, p) for p in pages])
    got = postings.candidates(q @ vecs.T, nprobe=len(vecs), depth=7)
    assert set(got) == set(np.argsort(-exact)[:7])
    allowed = np.arange(50) % 2 == 0
    got = postings.candidates(q @ vecs.T, nprobe=len(vecs), depth=7, allowed=allowed)
    assert set(got) == set(np.flatnonzero(allowed)[np.argsort(-exact[allowed])[:7]])
    assert len(postings.candidates(q @ vecs.T, 4, 100, allowed=np.zeros(50, bool))) == 0


def test_two_stage_returns_exact_scores_with_high_recall(optimized, encoder):
    path, rows, topics, info = optimized
    assert info["pages"] == 3000 and info["n_centroids"] == first_stage.n_centroids_for(3000 * 12)
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000, depth=300)  # a tenth of the pages
    assert searcher.two_stage() and not searcher.two_stage(exact=True) and searcher.stats()["search"] == "two-stage"
    by_key = {(r.path, r.page): r.vectors.astype(np.float16).astype(np.float32) for r in rows}
    rng = np.random.default_rng(1)
    recalls = []
    for _ in range(20):
        t = topics[rng.integers(len(topics))]
        q = t[rng.integers(4, size=6)] + 0.3 * rng.standard_normal((6, DIM)).astype(np.float32)
        fast = searcher.search_vectors([q], 10)[0]
        exact = searcher.search_vectors([q], 10, exact=True)[0]
        for hit in fast:  # every score is the exact MaxSim of that page
            assert hit.score == pytest.approx(maxsim(q, by_key[(hit.path, hit.page)]), rel=1e-4)
        recalls.append(len({(x.path, x.page) for x in fast} & {(x.path, x.page) for x in exact}) / 10)
    assert np.mean(recalls) >= 0.95
    searcher.depth = 5000  # every page a candidate: the exact ranking
    q = topics[0][:3]
    assert searcher.search_vectors([q], 10)[0] == searcher.search_vectors([q], 10, exact=True)[0]


def test_pages_added_after_optimize_are_found_and_filters_apply(optimized, encoder):
    path, rows, topics, _ = optimized
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000, depth=64)
    q = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    new = make_row("/new/answer.pdf", h(10**6), 1, 4, seed=9, dim=DIM)
    new.vectors = q.copy()  # its MaxSim with q is the largest possible
    with Index.create_or_open(path, "fp", DIM) as idx:
        idx.add_pages([new])
    hits = searcher.search_vectors([q], 5)[0]
    assert hits[0].path == "/new/answer.pdf" and searcher.two_stage()
    only = searcher.search_vectors([q], 5, path_prefix="/c/d1")[0]
    assert only and all(x.path.startswith("/c/d1") for x in only)
    assert searcher.search_vectors([q], 5, where="page = 2")[0][0].page == 2
    assert only == searcher.search_vectors([q], 5, path_prefix="/c/d1", exact=True)[0][:len(only)] or \
        len(only) == 5  # candidates are approximate, the scores exact


def test_a_rebuilt_stage_is_picked_up_and_the_old_one_removed(optimized, encoder):
    path, _, _, info = optimized
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000)
    with Index.open_writer(path) as idx:
        again = first_stage.build(idx, seed=1)
    assert again["dir"] != info["dir"] and not (path / info["dir"]).exists()
    assert searcher.refresh() and searcher.first_stage()["dir"] == again["dir"]
    (path / first_stage.META).write_text("{not json")
    with pytest.raises(Exception, match="first_stage.json"):
        Searcher(Index.open(path), encoder)


def test_cli_optimize_inspect_and_exact(tmp_path):
    rows, _ = clustered_rows(200)
    meta = {"bundle_path": str(default_bundle_path().resolve()), "builtin": True}
    with Index.create_or_open(tmp_path / "idx", Bundle.open(default_bundle_path()).fingerprint, DIM, meta) as idx:
        idx.add_pages(rows)
    before = run_cli("inspect", tmp_path / "idx")
    assert "first_stage             none: exact search" in before.stdout
    result = run_cli("optimize", tmp_path / "idx", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pages"] == 200
    after = json.loads(run_cli("inspect", tmp_path / "idx", "--json").stdout)
    assert after["first_stage"]["kind"] == "centroids" and after["sap_scores"] is True
    exact = run_cli("search", tmp_path / "idx", "annual report", "--exact", "--json")
    assert exact.returncode == 0 and len(json.loads(exact.stdout)) == 5
    with Index.open_writer(tmp_path / "idx"):
        locked = run_cli("optimize", tmp_path / "idx")
    assert locked.returncode == 2 and "another process is writing" in locked.stderr
    empty = tmp_path / "empty"
    with Index.create_or_open(empty, "fp", DIM):
        pass
    nothing = run_cli("optimize", empty)
    assert nothing.returncode == 2 and "holds no pages" in nothing.stderr


def test_projection_keeps_the_fewest_axes_with_most_of_the_variance():
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((4000, 10)) @ rng.standard_normal((10, DIM))
    axes, kept = first_stage.projection(low_rank.astype(np.float32))
    assert axes.shape == (DIM, 16) and kept > 0.999
    np.testing.assert_allclose(axes.T @ axes, np.eye(16), atol=1e-5)  # orthonormal axes
    axes, kept = first_stage.projection(rng.standard_normal((4000, DIM)).astype(np.float32))
    assert axes.shape == (DIM, 64) and 0.5 < kept < 0.9  # isotropic: no 64 axes keep 90 %
