"""Two-stage search through the compressed first stage: the page estimate, recall and exact scores
on both kept-vector distributions, pages added or deleted after optimize, a rebuilt stage picked up,
a kill during optimize, a memory cap below the float vectors, and the CLI (optimize, inspect, --exact)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import h, make_row, run_cli

from sapindex.benchdata import token_vectors as tv
from sapindex.index.store import Index, IndexWriter
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder, prune
from sapindex.sap import maxsim
from sapindex.search import Searcher, compressed, first_stage

DIM = 128


@pytest.fixture(scope="module")
def encoder():
    return Encoder(Bundle.open(default_bundle_path()), graphs=("text",))


@pytest.fixture(scope="module")
def micro_kept():
    """Kept vectors (keep 0.1) of 12 toy pages encoded by the built-in micro model."""
    from sapindex.testing.toy_pages import render_page

    rng = np.random.default_rng(0)
    words = ["invoice", "total", "revenue", "policy", "travel", "budget", "report", "annual", "chart", "table"]
    images = [render_page([str(w) for w in rng.choice(words, 40)], (448, 448), rng) for _ in range(12)]
    enc = Encoder(Bundle.open(default_bundle_path()))
    return [prune(t, 0.1).vectors for t in enc.encode_pages(images)]


def rows_of(pages, prefix="/c"):
    rows = []
    for i, v in enumerate(pages):
        row = make_row(f"{prefix}/d{i // 5}.pdf", h(i // 5 + (10**5 if prefix != "/c" else 0)), i % 5 + 1, len(v),
                       seed=i, dim=DIM, n_visual=256)
        row.vectors = v
        rows.append(row)
    return rows


def optimized_index(path, pages):
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:
        idx.add_pages(rows_of(pages))
        info = first_stage.build(idx)
    return info


@pytest.fixture
def spread(tmp_path):
    pages = list(tv.spread_pages(3000, seed=1))
    info = optimized_index(tmp_path / "idx", pages)
    return tmp_path / "idx", pages, info


def test_the_estimate_ranks_by_exact_maxsim_when_every_vector_is_a_hit():
    rng = np.random.default_rng(0)
    pages = [rng.standard_normal((int(rng.integers(2, 6)), 8)) for _ in range(50)]
    pages = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in pages]
    vecs = np.concatenate(pages).astype(np.float32)
    owner = np.repeat(np.arange(50), [len(p) for p in pages])
    q = rng.standard_normal((5, 8)).astype(np.float32)
    sims = q @ vecs.T
    order = np.argsort(-sims, axis=1)
    d, hit = np.take_along_axis(sims, order, 1), owner[order]  # every vector retrieved by every token
    exact = np.array([maxsim(q, p) for p in pages])
    assert set(compressed.estimate_top(d, hit, 7, None, 50)) == set(np.argsort(-exact)[:7])
    allowed = np.arange(50) % 2 == 0
    got = compressed.estimate_top(d, hit, 7, allowed, 50)
    assert set(got) == set(np.flatnonzero(allowed)[np.argsort(-exact[allowed])[:7]])
    # a token's unretrieved vectors score its floor: with 3 hits per token, the hit pages come first,
    # and pages no token retrieved fill the depth (a filter can leave nothing else)
    got = compressed.estimate_top(d[:, :3], hit[:, :3], 40, None, 50)
    assert len(got) == 40 and set(hit[:, :3].ravel()) <= set(got)
    only = np.zeros(50, bool)
    only[[1, 2]] = True
    assert list(compressed.estimate_top(d[:, :3], hit[:, :3], 10, only, 50)) == [1, 2]
    assert len(compressed.estimate_top(d, np.full_like(hit, -1), 5, None, 50)) == 5  # no hits at all


def test_token_scores_stay_within_the_codes_error_at_any_nprobe(spread):
    """The codes' round trip: each retrieved vector's approximate score against its exact dot
    product (16-byte codes on the spread distribution: |error| p99 0.17, max 0.32 measured), at the
    default nprobe and at every list probed (where faiss's default HNSW search left lists out and
    scored some vectors ~2e31)."""
    path, pages, info = spread
    stage = first_stage.load(path)
    vectors = np.concatenate(pages).astype(np.float16).astype(np.float32)
    q = np.concatenate(tv.queries_near(pages, 3, seed=3))
    for nprobe in (32, info["n_lists"] // 2, info["n_lists"]):
        d, i = first_stage.search_tokens(stage.tokens, q, 200, nprobe)
        assert (i >= 0).all()
        error = np.abs(d - np.einsum("td,tkd->tk", q, vectors[i]))
        assert error.max() <= 0.4 and error.mean() <= 0.08, (nprobe, error.max(), error.mean())


def test_centroid_evidence_ranks_pages_that_tie_on_their_hits(monkeypatch):
    """Token 0 hits pages 0-9 and token 1 pages 20-29, every hit alike (near-copies of one vector):
    the hits cannot tell the pages apart; the page whose centroids come closest to the token that
    missed it must win."""
    d = np.array([[1.0] * 10, [0.9] * 10])
    hit = np.array([list(range(10)), list(range(20, 30))])
    asked = []

    def centroid_scores(pages):
        asked.append(pages)
        c = np.zeros((len(pages), 2))
        c[:, 0], c[:, 1] = 0.2, 0.5
        c[pages == 3, 1], c[pages == 25, 0] = 0.89, 0.99
        return c

    monkeypatch.setattr(compressed, "POOL_FACTOR", 10)
    assert set(compressed.estimate_top(d, hit, 2, None, 40, centroid_scores)) == {3, 25}
    assert sorted(asked[0]) == [*range(10), *range(20, 30)]
    allowed = np.ones(40, bool)
    allowed[3] = False  # a filtered page is never refined into the result
    assert 3 not in compressed.estimate_top(d, hit, 2, allowed, 40, centroid_scores)


def test_centroid_scores_are_each_pages_best_centroid_product(spread, encoder):
    path, pages, _ = spread
    extra = list(tv.spread_pages(5003, seed=9, start=5000))  # pages 5000-5002
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:
        idx.add_pages(rows_of(extra, prefix="/added"))
    stage = first_stage.load(path)
    view = compressed.open_view(Index.open(path), stage)
    assert view.n_pages == 3003
    q = tv.queries_near(pages, 1, seed=4)[0]
    asked = np.array([0, 7, 2999, 3000, 3002])
    stored = [pages[0], pages[7], pages[2999], *extra[::2]]
    want = [(q @ stage.centroids[stage.assign(v.astype(np.float16).astype(np.float32))].astype(np.float32).T).max(1)
            for v in stored]
    np.testing.assert_allclose(view.centroid_scores(q, asked), np.array(want), rtol=1e-5, atol=1e-6)
    assert stage.lists.dtype == np.uint16 and len(stage.lists) == stage.offsets[-1]


def recall_and_exact_scores(searcher, pages, queries):
    by_key = {(f"/c/d{i // 5}.pdf", i % 5 + 1): v.astype(np.float16).astype(np.float32) for i, v in enumerate(pages)}
    recalls = []
    for q in queries:
        fast = searcher.search_vectors([q], 10)[0]
        exact = searcher.search_vectors([q], 10, exact=True)[0]
        for hit in fast:  # every score is the exact MaxSim of that page
            assert hit.score == pytest.approx(maxsim(q, by_key[(hit.path, hit.page)]), rel=1e-4)
        recalls.append(len({(x.path, x.page) for x in fast} & {(x.path, x.page) for x in exact}) / 10)
    return float(np.mean(recalls))


def test_two_stage_recall_and_exact_scores_on_the_spread_distribution(spread, encoder):
    path, pages, info = spread
    assert tv.axes_for_variance(np.concatenate(pages[:500])) >= 64  # the distribution is what it claims
    assert info["pages"] == 3000 and info["kind"] == "ivf-pq" and info["bytes_per_vector"] <= 40
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000)
    assert searcher.two_stage() and not searcher.two_stage(exact=True) and searcher.holding() == "first stage"
    assert recall_and_exact_scores(searcher, pages, tv.queries_near(pages, 20, seed=2)) >= 0.95
    searcher.depth = 5000  # every page a candidate: the exact ranking
    q = tv.queries_near(pages, 1, seed=3)[0]
    assert searcher.search_vectors([q], 10)[0] == searcher.search_vectors([q], 10, exact=True)[0]


def test_two_stage_recall_on_resampled_micro_model_vectors(micro_kept, encoder, tmp_path):
    assert tv.axes_for_variance(np.concatenate(micro_kept)) < 64  # low-rank, unlike a real retriever's
    pages = list(tv.resampled_pages(micro_kept, 3000, seed=1))
    optimized_index(tmp_path / "idx", pages)
    searcher = Searcher(Index.open(tmp_path / "idx"), encoder, two_stage_min_pages=1000)
    assert recall_and_exact_scores(searcher, pages, tv.queries_near(pages, 20, seed=2)) >= 0.95


def test_two_stage_recall_with_encoded_queries_on_micro_model_vectors(micro_kept, encoder, tmp_path):
    """Text queries encoded by the micro model score its low-rank pages almost alike: the stage must
    code each vector's residual to its list's centroid (raw-vector codes measured 0.89 here, 1.0 by residual)."""
    pages = list(tv.resampled_pages(micro_kept, 3000, seed=1))
    optimized_index(tmp_path / "idx", pages)
    searcher = Searcher(Index.open(tmp_path / "idx"), encoder, two_stage_min_pages=1000)
    assert searcher.first_stage()["kind"] == "ivf-pq" and searcher.holding() == "first stage"
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["invoice", "total", "revenue", "policy", "travel", "budget", "report"], 3))
             for _ in range(20)]
    assert recall_and_exact_scores(searcher, pages, encoder.encode_queries(texts)) >= 0.97


def test_pages_added_or_deleted_after_optimize_and_filters(spread, encoder):
    path, pages, _ = spread
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000, depth=64)
    q = tv.queries_near(pages, 1, seed=5)[0]
    new = make_row("/new/answer.pdf", h(10**6), 1, len(q), seed=9, dim=DIM)
    new.vectors = q.copy()  # its MaxSim with q is the largest possible
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:
        idx.add_pages([new])
    hits = searcher.search_vectors([q], 5)[0]
    assert hits[0].path == "/new/answer.pdf" and searcher.two_stage()
    assert searcher.stats()["first_stage"]["pages_added_since"] == 1
    only = searcher.search_vectors([q], 5, path_prefix="/c/d1")[0]
    assert only and all(x.path.startswith("/c/d1") for x in only)
    assert searcher.search_vectors([q], 5, where="page = 2")[0][0].page == 2
    assert searcher.search_vectors([q], 3, where="path = '/c/d7.pdf' AND page = 4")[0][0][:2] == ("/c/d7.pdf", 4)
    gone = hits[1].path
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:
        idx.remove_paths([gone, "/new/answer.pdf"])
    after = searcher.search_vectors([q], 5)[0]
    assert gone not in {x.path for x in after} and "/new/answer.pdf" not in {x.path for x in after}
    assert gone not in {x.path for x in searcher.search_vectors([q], 50, exact=True)[0]}
    assert searcher.stats()["first_stage"]["pages_deleted_since"] == 5
    again = make_row("/new/again.pdf", h(10**6 + 1), 1, len(q), seed=9, dim=DIM)
    again.vectors = q.copy()
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:
        idx.add_pages([again])
    assert searcher.search_vectors([q], 1)[0][0].path == "/new/again.pdf"  # added after a deletion, coded anew


def test_a_rebuilt_stage_is_picked_up_and_the_old_one_removed(spread, encoder):
    path, _, info = spread
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000)
    with IndexWriter.open_writer(path) as idx:
        again = first_stage.build(idx, seed=1)
    assert again["dir"] != info["dir"] and not (path / info["dir"]).exists()
    assert searcher.refresh() and searcher.first_stage()["dir"] == again["dir"]
    (path / first_stage.META).write_text("{not json")
    with pytest.raises(Exception, match="first_stage.json"):
        Searcher(Index.open(path), encoder)


def test_an_older_first_stage_is_ignored_until_optimize(tmp_path, encoder):
    with IndexWriter.create_or_open(tmp_path / "idx", "fp", DIM) as idx:
        idx.add_pages(rows_of(list(tv.spread_pages(50, seed=1))))
    (tmp_path / "idx" / first_stage.META).write_text(json.dumps(
        {"format": first_stage.FORMAT, "format_version": 1, "kind": "centroids", "dir": "first_stage-old"}))
    assert first_stage.outdated(tmp_path / "idx") and first_stage.load(tmp_path / "idx") is None
    searcher = Searcher(Index.open(tmp_path / "idx"), encoder, two_stage_min_pages=10)
    assert searcher.holding() == "resident" and len(searcher.search_vectors([np.eye(DIM, dtype=np.float32)[:2]])[0])


@pytest.mark.slow
def test_kill_during_optimize_leaves_the_previous_stage(spread, encoder):
    path, pages, info = spread
    with IndexWriter.create_or_open(path, "fp", DIM) as idx:  # enough vectors that coding takes a while
        idx.add_pages(rows_of(list(tv.spread_pages(23000, seed=4, start=3000)), prefix="/more"))
    proc = subprocess.Popen([sys.executable, "-m", "sapindex.cli", "optimize", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name != info["dir"] for p in path.glob("first_stage-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "optimize ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_stage.load_info(path)["dir"] == info["dir"]
    searcher = Searcher(Index.open(path), encoder, two_stage_min_pages=1000)
    q = tv.queries_near(pages, 1, seed=8)[0]
    assert searcher.first_stage()["dir"] == info["dir"]
    assert searcher.stats()["first_stage"]["pages_added_since"] == 20000
    assert searcher.search_vectors([q], 5)[0] == searcher.search_vectors([q], 5, exact=True)[0]
    with IndexWriter.open_writer(path) as idx:  # the next optimize clears the killed build's directory
        again = first_stage.build(idx)
    assert [p.name for p in path.glob("first_stage-*")] == [again["dir"]]


CAPPED = """
import json, resource, sys
import faiss, lancedb  # libraries loaded before the cap: it bounds the data, not the code
import numpy as np
from sapindex.index.store import Index, IndexWriter
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder
from sapindex.search import Searcher
enc = Encoder(Bundle.open(default_bundle_path()), graphs=("text",))
queries = [np.asarray(q, np.float32) for q in json.loads(sys.stdin.read())]
data = int(next(l for l in open("/proc/self/status") if l.startswith("VmData")).split()[1]) * 1024
cap = data + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
s = Searcher(Index.open(sys.argv[1]), enc, two_stage_min_pages=1000)
out = [[list(x) for x in s.search_vectors([q], 5)[0]] for q in queries]
out += [[list(x) for x in s.search_vectors([q], 5, exact=True)[0]] for q in queries]
try:
    np.ones(int(sys.argv[3]) // 8)
    print("cap not enforced")
except MemoryError:
    print(json.dumps([s.holding(), out]))
"""


@pytest.mark.slow
def test_an_index_larger_than_its_memory_cap_searches_correctly(tmp_path, encoder):
    pages = list(tv.spread_pages(12000, seed=6))
    optimized_index(tmp_path / "idx", pages)
    float_bytes = sum(len(p) for p in pages) * DIM * 4  # ~450 MB as float32
    queries = tv.queries_near(pages, 3, seed=1)
    with Searcher(Index.open(tmp_path / "idx"), encoder, two_stage_min_pages=1000) as s:
        want = [[list(x) for x in s.search_vectors([q], 5)[0]] for q in queries]
        want += [[list(x) for x in s.search_vectors([q], 5, exact=True)[0]] for q in queries]
    cap = float_bytes // 2  # the data the searcher may add: half the float vectors
    done = subprocess.run([sys.executable, "-c", CAPPED, str(tmp_path / "idx"), str(cap), str(float_bytes)],
                          input=json.dumps([q.tolist() for q in queries]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    holding, got = json.loads(done.stdout)
    assert holding == "first stage"
    assert [[(p, n) for p, n, _ in hits] for hits in got] == [[(p, n) for p, n, _ in hits] for hits in want]
    np.testing.assert_allclose([s for hits in got for _, _, s in hits], [s for hits in want for _, _, s in hits],
                               rtol=1e-5)


def test_cli_optimize_inspect_and_exact(tmp_path):
    pages = list(tv.spread_pages(200, seed=1))
    meta = {"bundle_path": str(default_bundle_path().resolve()), "builtin": True}
    with IndexWriter.create_or_open(tmp_path / "idx", Bundle.open(default_bundle_path()).fingerprint, DIM, meta) as idx:
        idx.add_pages(rows_of(pages))
    before = run_cli("inspect", tmp_path / "idx")
    assert "first_stage             none: exact search" in before.stdout
    wide = json.loads(run_cli("optimize", tmp_path / "idx", "--code-bytes", "32", "--json").stdout)
    assert wide["pq_bytes"] == 32 and wide["bytes_per_vector"] > 32
    result = run_cli("optimize", tmp_path / "idx", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pages"] == 200 and json.loads(result.stdout)["pq_bytes"] == 16
    after = json.loads(run_cli("inspect", tmp_path / "idx", "--json").stdout)
    assert after["first_stage"]["kind"] == "ivf-pq" and after["sap_scores"] is True
    assert "bytes a vector" in run_cli("inspect", tmp_path / "idx").stdout
    exact = run_cli("search", tmp_path / "idx", "annual report", "--exact", "--json")
    assert exact.returncode == 0 and len(json.loads(exact.stdout)) == 5
    with IndexWriter.open_writer(tmp_path / "idx"):
        locked = run_cli("optimize", tmp_path / "idx")
    assert locked.returncode == 2 and "another process is writing" in locked.stderr
    empty = tmp_path / "empty"
    with IndexWriter.create_or_open(empty, "fp", DIM):
        pass
    nothing = run_cli("optimize", empty)
    assert nothing.returncode == 2 and "holds no pages" in nothing.stderr
