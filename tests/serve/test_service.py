"""``sapindex serve`` tested as a client meets it: a real server process on a free port, queried over
HTTP while ``sapindex index`` adds pages; every kind of bad request answered with a 4xx JSON error
and the service still alive; the bearer token; the refusals before it starts."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import TOKEN, Server, free_port, run_cli
from PIL import Image, ImageOps

from sapindex.index.indexer import run_index
from sapindex.runtime.defaults import default_bundle_path, example_pages


def new_pages(directory: Path, n: int) -> Path:
    """``n`` pages the index has not seen (mirrored example pages: new content hashes)."""
    directory.mkdir(parents=True)
    for i, page in enumerate(example_pages()[:n]):
        with Image.open(page) as im:
            ImageOps.mirror(im.convert("RGB")).save(directory / f"new-{i}.png")
    return directory


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    pages = root / "pages"
    pages.mkdir()
    for p in example_pages()[:4]:
        shutil.copy(p, pages / p.name)
    run_index(default_bundle_path(), [str(pages)], root / "idx")
    server = Server(root / "idx")
    yield server, root
    server.stop()


def test_search_batch_stats_and_health(served):
    server, root = served
    status, health = server.call("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["version"] >= 1
    status, stats = server.call("GET", "/stats")
    assert status == 200 and stats["pages"] == 4 and stats["bundle"]["family"] == "colqwen2"
    assert stats["limits"]["k"] == 1000
    status, one = server.call("POST", "/search", {"query": "annual report", "k": 3})
    assert status == 200 and [h["rank"] for h in one["hits"]] == [1, 2, 3]
    scores = [h["score"] for h in one["hits"]]
    assert scores == sorted(scores, reverse=True) and all(h["page"] == 1 for h in one["hits"])
    status, batch = server.call("POST", "/search/batch", {"queries": ["annual report", "travel"], "k": 3})
    assert status == 200 and len(batch["results"]) == 2
    assert [h["path"] for h in batch["results"][0]["hits"]] == [h["path"] for h in one["hits"]]
    name = Path(one["hits"][0]["path"]).name
    status, only = server.call("POST", "/search", {"query": "annual report", "k": 10,
                                                   "where": f"path LIKE '%{name}'"})
    assert status == 200 and [Path(h["path"]).name for h in only["hits"]] == [name]


def test_concurrent_clients_get_the_same_answers(served):
    server, _ = served
    queries = ["annual report", "travel policy", "revenue", "figure 2"]
    want = {q: server.call("POST", "/search", {"query": q, "k": 3})[1]["hits"] for q in queries}
    name = Path(want["revenue"][0]["path"]).name
    only = server.call("POST", "/search", {"query": "revenue", "k": 5, "where": f"path LIKE '%{name}'"})[1]["hits"]
    before = server.call("GET", "/stats")[1]["batching"]
    bodies = [{"query": q, "k": 3} for q in queries] * 6 + [{"query": "revenue", "k": 5,
                                                            "where": f"path LIKE '%{name}'"}] * 4
    bodies += [{"query": "revenue", "where": "bogus (("}] * 2  # a bad filter fails its own requests only
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: (b, server.call("POST", "/search", b)), bodies))
    for body, (status, answer) in got:
        if body.get("where") == "bogus ((":
            assert status == 400 and "filter 'bogus (('" in answer["error"]
        else:
            expected = only if "where" in body else want[body["query"]]
            assert status == 200 and [(x["path"], x["page"]) for x in answer["hits"]] == [
                (x["path"], x["page"]) for x in expected]
            assert [x["score"] for x in answer["hits"]] == pytest.approx([x["score"] for x in expected], rel=1e-5)
    after = server.call("GET", "/stats")[1]["batching"]
    assert after["queries"] - before["queries"] == len(bodies)
    assert after["batches"] - before["batches"] < len(bodies)  # concurrent requests shared batches


@pytest.mark.parametrize("route, body, raw, content_type, status, message", [
    ("/search", {"k": 3}, None, "application/json", 422, "query: Field required"),
    ("/search", {"query": "x", "k": 0}, None, "application/json", 422, "k: Input should be greater than or equal to 1"),
    ("/search", {"query": "x", "k": 10**6}, None, "application/json", 422,
     "k: Input should be less than or equal to 1000"),
    ("/search", {"query": "x", "k": "5"}, None, "application/json", 422, "k: Input should be a valid integer"),
    ("/search", {"query": "x", "limit": 5}, None, "application/json", 422, "limit: unknown field"),
    ("/search", {"query": "   "}, None, "application/json", 400, "query: empty query"),
    ("/search", {"query": "word " * 600}, None, "application/json", 400, "tokens, the limit is 512"),
    ("/search", {"query": "x", "where": "bogus (("}, None, "application/json", 400, "filter 'bogus (('"),
    ("/search", None, b"{not json", "application/json", 400, "not valid JSON"),
    ("/search", None, b"[1, 2]", "application/json", 422, "must be a JSON object"),
    ("/search", None, None, "application/json", 422, "must be a JSON object"),
    ("/search", None, b"query=x", "application/x-www-form-urlencoded", 415, "send JSON"),
    ("/search/batch", {"queries": []}, None, "application/json", 422, "queries: List should have at least 1 item"),
    ("/search/batch", {"queries": ["ok", ""]}, None, "application/json", 400, "queries[1]: empty query"),
    ("/search/batch", {"queries": ["q"] * 300}, None, "application/json", 422, "queries: List should have at most 256"),
    ("/nowhere", None, None, None, 404, "Not Found"),
])
def test_bad_requests_get_a_json_error_and_the_service_lives(served, route, body, raw, content_type, status, message):
    server, _ = served
    method = "GET" if route == "/nowhere" else "POST"
    got, answer = server.call(method, route, body, raw=raw, content_type=content_type)
    assert got == status and message in answer["error"], answer
    assert server.call("GET", "/health")[0] == 200 and server.proc.poll() is None


def test_pages_indexed_while_serving_become_searchable(served):
    server, root = served
    _, before = server.call("GET", "/stats")
    added = new_pages(root / "more", 2)
    result = run_cli("index", str(added), "--out", str(root / "idx"))
    assert result.returncode == 0, result.stderr
    status, stats = server.call("GET", "/stats")
    assert status == 200 and stats["pages"] == before["pages"] + 2 and stats["version"] > before["version"]
    _, hits = server.call("POST", "/search", {"query": "annual report", "k": 100})
    assert {Path(h["path"]).name for h in hits["hits"]} >= {"new-0.png", "new-1.png"}
    _, only_new = server.call("POST", "/search", {"query": "annual report", "k": 100,
                                                  "path_prefix": str(added)})
    assert sorted(Path(h["path"]).name for h in only_new["hits"]) == ["new-0.png", "new-1.png"]


def test_explain(served):
    server, root = served
    _, one = server.call("POST", "/search", {"query": "annual report", "k": 1})
    hit = one["hits"][0]
    route = "/explain?" + urllib.parse.urlencode({"query": "annual report", "path": hit["path"], "page": hit["page"]})
    status, ctype, body = server.get_raw(route)
    assert status == 200 and ctype == "image/png" and body.startswith(b"\x89PNG")
    status, numbers = server.call("GET", route + "&format=json")
    assert status == 200 and numbers["score"] == pytest.approx(hit["score"], rel=1e-5)
    assert sum(m["contribution"] for m in numbers["matches"]) == pytest.approx(hit["score"], rel=1e-5)
    missing = "/explain?" + urllib.parse.urlencode({"query": "x", "path": "/nope.png", "page": 1})
    status, answer = server.call("GET", missing)
    assert status == 404 and "is not in the index" in answer["error"]
    status, answer = server.call("GET", "/explain?path=a.png&page=1")
    assert status == 422 and answer["error"] == "query: Field required"
    status, answer = server.call("GET", route.replace("page=1", "page=0"))
    assert status == 422 and "page" in answer["error"]
    gone = root / "more" / "new-1.png"  # indexed while serving (the test above), now deleted
    gone.unlink()
    route = "/explain?" + urllib.parse.urlencode({"query": "x", "path": str(gone), "page": 1})
    status, answer = server.call("GET", route)
    assert status == 409 and "no such file or directory" in answer["error"]


def test_bearer_token(served, tmp_path):
    _, root = served
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    server = Server(root / "idx", "--token-file", str(token_file))
    try:
        status, answer = server.call("POST", "/search", {"query": "annual report"})
        assert status == 401 and "bearer token" in answer["error"]
        assert server.call("GET", "/stats", token="wrong-token-wrong-token")[0] == 401
        assert server.call("GET", "/health")[0] == 401
        status, answer = server.call("POST", "/search", {"query": "annual report", "k": 2}, token=TOKEN)
        assert status == 200 and len(answer["hits"]) == 2
    finally:
        server.stop()


def test_refusals_before_serving(served, tmp_path):
    server, root = served
    busy = run_cli("serve", root / "idx", "--port", server.port)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{server.port}" in busy.stderr
    exposed = run_cli("serve", root / "idx", "--host", "0.0.0.0", "--port", free_port())
    assert exposed.returncode == 2 and "give --token-file" in exposed.stderr
    short = tmp_path / "short"
    short.write_text("abc")
    weak = run_cli("serve", root / "idx", "--token-file", short, "--port", free_port())
    assert weak.returncode == 2 and "at least 16 characters" in weak.stderr
    missing = run_cli("serve", tmp_path / "nope", "--port", free_port())
    assert missing.returncode == 2 and "not a sapindex index" in missing.stderr


def test_without_the_serve_extra_the_error_says_what_to_install(served):
    _, root = served
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('fastapi', 'uvicorn'):\n"
            "            raise ImportError('blocked: ' + name, name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.argv = ['sapindex', 'serve', {str(root / 'idx')!r}, '--port', '{free_port()}']\n"
            "from sapindex.cli.main import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and 'pip install "sapindex[serve]"' in result.stderr, result.stderr
