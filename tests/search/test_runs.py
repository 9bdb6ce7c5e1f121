"""sapindex.search.runs: query files (plain and JSONL) in, JSONL and TREC runs out."""

import io
import json

import pytest

from sapindex.errors import SapIndexError
from sapindex.index.store import Hit
from sapindex.search.runs import Query, docno, read_queries, write_run


def test_plain_and_jsonl_query_files(tmp_path):
    plain = tmp_path / "q.txt"
    plain.write_text("annual report\n\n  travel policy  \n")
    assert read_queries(plain) == [Query("q1", "annual report", f"{plain}:1"),
                                   Query("q2", "travel policy", f"{plain}:3")]
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"id": "A-1", "query": "annual report"}\n\n{"query": "no id"}\n{"id": 7, "query": "int id"}\n')
    assert [(q.id, q.text, q.where) for q in read_queries(jl)] == [
        ("A-1", "annual report", f"{jl}:1"), ("q2", "no id", f"{jl}:3"), ("7", "int id", f"{jl}:4")]


@pytest.mark.parametrize("content, message", [
    ("", "no queries"),
    ('{"id": "a", "query": "x"}\nnot json\n', r":2: not valid JSON"),
    ('{"id": "a", "qury": "x"}\n', r":1: unknown field\(s\) qury"),
    ('{"id": "a"}\n', r':1: expected an object with a string "query"'),
    ('{"id": "a", "query": "   "}\n', ":1: empty query"),
    ('{"id": "a b", "query": "x"}\n', ":1: query id 'a b' must be non-empty without whitespace"),
    ('{"id": "a", "query": "x"}\n{"id": "a", "query": "y"}\n', ":2: query id 'a' appears twice"),
])
def test_malformed_query_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(SapIndexError, match=message):
        read_queries(path)
    with pytest.raises(SapIndexError, match="cannot read the query file"):
        read_queries(tmp_path / "missing.txt")


def test_runs_in_jsonl_and_trec():
    qs = [Query("q1", "annual", "-"), Query("q2", "travel", "-")]
    results = [[Hit("/a b/x.pdf", 3, 2.5), Hit("/a/100%.png", 1, 1.25)], []]
    out = io.StringIO()
    write_run(out, qs, results, "trec", run_name="sap10")
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines == [["q1", "Q0", "/a%20b/x.pdf#3", "1", "2.500000", "sap10"],
                     ["q1", "Q0", "/a/100%25.png#1", "2", "1.250000", "sap10"]]
    out = io.StringIO()
    write_run(out, qs, results, "jsonl")
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0] == {"id": "q1", "query": "annual", "hits": [
        {"rank": 1, "path": "/a b/x.pdf", "page": 3, "score": 2.5},
        {"rank": 2, "path": "/a/100%.png", "page": 1, "score": 1.25}]}
    assert rows[1]["hits"] == [] and docno(Hit("p\tq", 2, 0.0)) == "p%09q#2"
