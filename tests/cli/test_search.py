"""``sapindex search``: one query, a query file as JSONL or a TREC run (one bundle load), filters,
and the one-line refusals."""

import json
import shutil

import pytest
from helpers import run_cli

from sapindex.index.indexer import run_index
from sapindex.runtime.defaults import default_bundle_path, example_pages, example_queries
from sapindex.search import Searcher


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-search")
    pages = root / "pages"
    pages.mkdir()
    for p in example_pages():
        shutil.copy(p, pages / p.name)
    run_index(default_bundle_path(), [str(pages)], root / "idx")
    return root / "idx"


def test_query_file_to_trec_and_jsonl(index_dir, tmp_path):
    examples = example_queries()
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"ex{i}", "query": e["query"]}) + "\n" for i, e in enumerate(examples)))
    run = tmp_path / "run.trec"
    result = run_cli("search", index_dir, "--queries", qfile, "-k", 3, "--format", "trec", "--out", run,
                     "--run-name", "sap10")
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in run.read_text().splitlines()]
    assert len(lines) == 3 * len(examples) and all(len(x) == 6 and x[1] == "Q0" and x[5] == "sap10" for x in lines)
    with Searcher.open(index_dir) as searcher:
        want = searcher.search_many([e["query"] for e in examples], k=3)
    for i, hits in enumerate(want):
        mine = [x for x in lines if x[0] == f"ex{i}"]
        assert [x[2] for x in mine] == [f"{h.path}#{h.page}" for h in hits]
        assert [x[3] for x in mine] == ["1", "2", "3"]
    jsonl = run_cli("search", index_dir, "--queries", qfile, "-k", 2)  # JSONL on stdout by default
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["id"] for r in rows] == [f"ex{i}" for i in range(len(examples))]
    assert [[h["path"] for h in r["hits"]] for r in rows] == [[h.path for h in hits[:2]] for hits in want]


def test_filters_and_single_query_output(index_dir):
    one = json.loads(run_cli("search", index_dir, "annual", "report", "-k", 20, "--json").stdout)
    assert len(one) == 8 and {"path", "page", "score"} == set(one[0])
    name = "page-03.png"
    only = json.loads(run_cli("search", index_dir, "annual report", "--json", "--path-prefix",
                              str(index_dir.parent / "pages" / name)).stdout)
    assert [h["path"].rsplit("/", 1)[1] for h in only] == [name]
    text = run_cli("search", index_dir, "annual report", "-k", 2, "--where", "page = 1")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 2 and "page 1" in text.stdout


def test_refusals(index_dir, tmp_path):
    qfile = tmp_path / "q.txt"
    qfile.write_text("fine\n" + "word " * 600 + "\n")
    cases = [
        (("search", index_dir), "give one QUERY or --queries FILE"),
        (("search", index_dir, "x", "--queries", qfile), "give one QUERY or --queries FILE"),
        (("search", index_dir, "--queries", qfile), f"{qfile}:2: 6"),
        (("search", index_dir, "x", "--where", "nope (("), "filter 'nope (('"),
        (("search", index_dir, "--queries", tmp_path / "none.txt"), "cannot read the query file"),
        (("search", index_dir, "--queries", qfile, "--json"), "with --queries use --format jsonl"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, args


def test_two_stage_options_default_to_the_searchers():
    """`search` and `serve` spell the two-stage defaults out for --help; they must be the Searcher's."""
    from sapindex.cli.search import search as search_command
    from sapindex.cli.serve import serve as serve_command
    from sapindex.search import searcher

    for command in (search_command, serve_command):
        defaults = {p.name: p.default for p in command.params}
        assert (defaults["nprobe"], defaults["kprime"], defaults["depth"]) == \
            (searcher.NPROBE, searcher.KPRIME, searcher.DEPTH)


def test_two_stage_options_are_checked(index_dir):
    """Accepted on any index (they apply once it is optimized and large enough), refused when not positive."""
    result = run_cli("search", index_dir, "annual report", "--depth", 7, "--nprobe", 3, "--kprime", 11, "--json")
    assert result.returncode == 0, result.stderr
    assert run_cli("search", index_dir, "annual report", "--depth", 0).returncode == 2
