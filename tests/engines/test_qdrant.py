"""``sapindex push`` and ``search --qdrant`` against Qdrant's local mode (qdrant-client with a directory:
the same client calls as a cluster, exact scoring): the micro model on a few dozen pages ranks the same
pages with the same scores as ``sapindex search --exact``; reruns resume, ``--sync`` follows removals and
changed files; bad targets, keys and collections are one line, exit 2, nothing written."""

import http.server
import json
import shutil
import threading

import numpy as np
import pytest
from helpers import DIM, h, make_row, run_cli
from qdrant_client import QdrantClient, models

from sapindex.benchdata.examples import write_examples
from sapindex.engines import qdrant as engine
from sapindex.errors import SapIndexError
from sapindex.index.indexer import run_index
from sapindex.index.store import Index, IndexWriter
from sapindex.runtime.defaults import default_bundle_path
from sapindex.search import Searcher

N_PAGES = 32
SCORE_TOL = 1e-4  # the same float16 values summed in another order


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """32 rendered pages of the micro model's vocabulary, indexed with the built-in bundle, and one query each."""
    root = tmp_path_factory.mktemp("qdrant")
    examples = write_examples(root / "pages", n_pages=N_PAGES)
    run_index(default_bundle_path(), [str(root / "pages")], root / "idx")
    return root, [e["query"] for e in examples]


def _count(path, collection):
    client = QdrantClient(path=str(path))
    try:
        return client.count(collection).count
    finally:
        client.close()


def _same_ranking(mine, exact):
    assert [(h.path, h.page) for h in mine] == [(h.path, h.page) for h in exact] or \
        sorted((h.path, h.page) for h in mine) == sorted((h.path, h.page) for h in exact)
    assert np.allclose([h.score for h in mine], [h.score for h in exact], atol=SCORE_TOL)


def test_push_then_search_equals_exact_search(corpus, tmp_path):
    root, queries = corpus
    store = tmp_path / "qdrant"
    pushed = run_cli("push", root / "idx", "--qdrant", store, "--collection", "pages", "--json")
    assert pushed.returncode == 0, pushed.stderr
    report = json.loads(pushed.stdout)
    assert report["pushed"] == report["pages"] == N_PAGES and report["skipped"] == 0
    with Searcher.open(root / "idx") as searcher:
        exact = searcher.search_many(queries, k=10, exact=True)
    with engine.QdrantSearcher.open(str(store), "pages") as qs:
        through = qs.search_many(queries, k=10)
        info = qs.client.get_collection("pages").config
    params = info.params.vectors[engine.vector_name(Index.open(root / "idx").bundle_fingerprint)]
    assert params.multivector_config.comparator == models.MultiVectorComparator.MAX_SIM
    assert params.distance == models.Distance.DOT and params.datatype == models.Datatype.FLOAT16
    assert info.metadata["sapindex"]["dim"] == 128
    for mine, want in zip(through, exact, strict=True):
        _same_ranking(mine, want)
    # the CLI: a query file to a TREC run, the same documents as the exact search's run
    qfile = tmp_path / "q.txt"
    qfile.write_text("\n".join(queries[:6]) + "\n")
    runs = {}
    for name, args in (("qdrant", ["--qdrant", store, "--collection", "pages"]), ("exact", [root / "idx", "--exact"])):
        result = run_cli("search", *args, "--queries", qfile, "--format", "trec", "-k", 5)
        assert result.returncode == 0, result.stderr
        runs[name] = [line.split()[:3] for line in result.stdout.splitlines()]
    assert runs["qdrant"] == runs["exact"] and len(runs["qdrant"]) == 30
    one = run_cli("search", "--qdrant", store, "--collection", "pages", queries[0], "-k", 3, "--json")
    assert [(x["path"], x["page"]) for x in json.loads(one.stdout)] == [(x.path, x.page) for x in exact[0][:3]]


@pytest.mark.slow  # indexes the pages twice
def test_rerun_resumes_and_sync_follows_the_index(corpus, tmp_path):
    root, queries = corpus
    pages, idx, store = tmp_path / "pages", tmp_path / "idx", tmp_path / "qdrant"
    shutil.copytree(root / "pages", pages)
    run_index(default_bundle_path(), [str(pages)], idx)
    client = engine.connect(str(store))
    done = []

    def killed(n, total):  # the push dies after its second batch of 4 points
        done.append(n)
        if n >= 8:
            raise KeyboardInterrupt
    with Index.open(idx) as index, pytest.raises(KeyboardInterrupt):
        engine.push(client, str(store), "c", index, batch_size=4, progress=killed)
    with Index.open(idx) as index:
        again = engine.push(client, str(store), "c", index, batch_size=4)
    assert again.skipped == 8 and again.pushed == N_PAGES - 8 and client.count("c").count == N_PAGES
    client.close()
    # a removed file and a changed one: --sync deletes their old points, the changed file's new page is pushed
    gone, changed = pages / "page-01.png", pages / "page-02.png"
    assert run_cli("remove", idx, gone).returncode == 0
    gone.unlink()
    shutil.copy(pages / "page-03.png", changed)  # new content at the same path
    shutil.copy(root / "pages" / "page-04.png", pages / "page-03.png")  # page-03's old content moves on
    run_index(default_bundle_path(), [str(pages)], idx)
    synced = run_cli("push", idx, "--qdrant", store, "--collection", "c", "--sync", "--json")
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    with Index.open(idx) as index:
        held = {engine.point_id(r["content_hash"], r["page"]) for r in index.iter_rows()}
    client = QdrantClient(path=str(store))
    ids = {str(p.id) for p in client.scroll("c", limit=1000)[0]}
    client.close()
    assert ids == held and report["deleted"] >= 1 and report["pages"] == len(held)
    with engine.QdrantSearcher.open(str(store), "c") as qs:
        paths = {hit.path for hits in qs.search_many(queries, k=5) for hit in hits}
    assert str(gone) not in paths


def _other_index(path, fingerprint, dim=DIM):
    with IndexWriter.create_or_open(path, fingerprint, dim) as idx:
        idx.add_pages([make_row(f"/x/{i}.pdf", h(i), 1, 4, seed=i, dim=dim) for i in range(3)])
    return path


def test_refusals_write_nothing(corpus, tmp_path):
    root, _ = corpus
    store = tmp_path / "qdrant"
    assert run_cli("push", root / "idx", "--qdrant", store, "--collection", "c").returncode == 0
    other = run_cli("push", _other_index(tmp_path / "other", "f" * 64, 128), "--qdrant", store, "--collection", "c")
    assert other.returncode == 2 and "holds vectors of bundle" in other.stderr and "Traceback" not in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert _count(store, "c") == N_PAGES
    client = QdrantClient(path=str(store))
    client.create_collection("foreign", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    client.close()
    foreign = run_cli("push", root / "idx", "--qdrant", store, "--collection", "foreign")
    assert foreign.returncode == 2 and "was not made by sapindex push" in foreign.stderr
    assert _count(store, "foreign") == 0
    missing = run_cli("search", "--qdrant", store, "--collection", "nope", "revenue")
    assert missing.returncode == 2 and "no collection 'nope'" in missing.stderr
    for args, message in ((["--where", "page = 1"], "need the index"), ([], "--qdrant and --collection go together")):
        bad = run_cli("search", "--qdrant", store, "revenue", *args) if not args else \
            run_cli("search", "--qdrant", store, "--collection", "c", "revenue", *args)
        assert bad.returncode == 2 and message in bad.stderr
    unreachable = run_cli("push", root / "idx", "--qdrant", "http://127.0.0.1:9", "--collection", "c")
    assert unreachable.returncode == 2 and "cannot reach Qdrant" in unreachable.stderr
    (tmp_path / "empty.key").write_text("\n")
    empty = run_cli("push", root / "idx", "--qdrant", "http://127.0.0.1:9", "--collection", "c",
                    "--api-key-file", tmp_path / "empty.key")
    assert empty.returncode == 2 and "the key on one line" in empty.stderr


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """What a Qdrant server with an API key answers a request with a wrong one (no Qdrant server runs here)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b'{"status":{"error":"Unauthorized: Invalid API key or JWT"},"time":0.0}'
        self.send_response(401, "Unauthorized")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_wrong_api_key_is_one_line(corpus, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "wrong.key").write_text("not-the-key\n")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli("push", corpus[0] / "idx", "--qdrant", url, "--collection", "c",
                         "--api-key-file", tmp_path / "wrong.key")
        assert result.returncode == 2 and "refused the request (401" in result.stderr, result.stderr
        warning, error = result.stderr.strip().splitlines()
        assert warning.startswith("warning:") and "unencrypted" in warning and error.startswith("error:")
        with pytest.raises(SapIndexError, match="is for a server URL"):
            engine.connect(str(tmp_path / "local"), tmp_path / "wrong.key")
    finally:
        server.shutdown()
