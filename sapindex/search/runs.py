"""Query files in, ranked runs out: what ``sapindex search --queries`` reads and writes.

A query file is either plain text (one query per line; ids ``q1``, ``q2``, ... by line number) or
JSONL (every non-blank line an object with ``query`` and an optional ``id``), told apart by the
first non-blank line. Blank lines are skipped. Runs are written as JSONL (one object per query:
``{"id", "query", "hits": [{"rank", "path", "page", "score"}]}``) or as a TREC run file
(``qid Q0 docno rank score run``), the format trec_eval, ranx and ir_measures read; a page's
docno is ``path#page`` with whitespace in the path percent-encoded, since TREC fields are
whitespace-separated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sapindex.errors import SapIndexError
from sapindex.index.store import Hit

FORMATS = ("jsonl", "trec", "text")
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    where: str  # "file:line", for error messages


def read_queries(path: str | Path) -> list[Query]:
    """The queries of a file; SapIndexError naming the file and line of anything malformed."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SapIndexError(f"{path}: cannot read the query file ({exc.__class__.__name__}: {exc})") from None
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise SapIndexError(f"{path}: no queries (the file is empty)")
    jsonl = numbered[0][1].lstrip().startswith("{")
    out: list[Query] = []
    seen: set[str] = set()
    for n, line in numbered:
        where = f"{path}:{n}"
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SapIndexError(f"{where}: not valid JSON ({exc.msg}); a JSONL query file has one "
                                    f"object per line") from None
            unknown = set(obj) - {"id", "query"} if isinstance(obj, dict) else set()
            if unknown:
                raise SapIndexError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                                    f'a query line holds "id" and "query"')
            if not isinstance(obj, dict) or not isinstance(obj.get("query"), str):
                raise SapIndexError(f'{where}: expected an object with a string "query"')
            qid = str(obj["id"]) if obj.get("id") is not None else f"q{len(out) + 1}"
            text = obj["query"]
        else:
            qid, text = f"q{len(out) + 1}", line.strip()
        if not text.strip():
            raise SapIndexError(f"{where}: empty query")
        if _SPACE.search(qid) or not qid:
            raise SapIndexError(f"{where}: query id {qid!r} must be non-empty without whitespace (TREC runs)")
        if qid in seen:
            raise SapIndexError(f"{where}: query id {qid!r} appears twice")
        seen.add(qid)
        out.append(Query(qid, text, where))
    return out


def docno(hit: Hit) -> str:
    """A page's TREC document id: ``path#page``, whitespace (and %) in the path percent-encoded."""
    path = hit.path.replace("%", "%25")
    path = _SPACE.sub(lambda m: f"%{ord(m.group()):02X}", path)
    return f"{path}#{hit.page}"


def write_run(out: IO[str], queries: Sequence[Query], results: Sequence[Sequence[Hit]], fmt: str,
              run_name: str = "sapindex") -> None:
    """Write one query's results after another in ``fmt`` (one of :data:`FORMATS`)."""
    for q, hits in zip(queries, results, strict=True):
        if fmt == "jsonl":
            out.write(json.dumps({"id": q.id, "query": q.text, "hits": [
                {"rank": r, "path": h.path, "page": h.page, "score": h.score}
                for r, h in enumerate(hits, start=1)]}) + "\n")
        elif fmt == "trec":
            for r, h in enumerate(hits, start=1):
                out.write(f"{q.id} Q0 {docno(h)} {r} {h.score:.6f} {run_name}\n")
        elif fmt == "text":
            out.write(f"{q.id}: {q.text}\n")
            for r, h in enumerate(hits, start=1):
                out.write(f"{r:>3}. {h.score:9.4f}  {h.path}  page {h.page}\n")
        else:
            raise ValueError(f"unknown run format {fmt!r}")
