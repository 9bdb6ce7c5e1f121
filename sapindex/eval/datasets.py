"""Retrieval evaluation datasets from local files, for ``sapindex eval`` (torch-free).

Three layouts, detected from the path:

- ``vidore-v1-qa``: a parquet file, or a directory of parquet files none of which is named
  corpus/queries/qrels (e.g. a Hugging Face snapshot with ``data/test-*.parquet``), with a
  ``query`` column and an ``image`` column (struct ``{bytes, path}``); other columns are ignored.
  Queries are de-duplicated by text and pages by the sha256 of their image bytes, and every
  (query, page) pair seen in a row is relevant. Rows with a null query only add their page to the
  corpus (ViDoRe keeps distractor pages that way).
- ``beir`` (ViDoRe v2): a directory holding corpus, queries and qrels parquet, each as
  ``corpus.parquet``, ``corpus-*.parquet`` shards or a ``corpus/`` folder of shards (likewise for
  queries and qrels). corpus: ``corpus-id`` + ``image``; queries: ``query-id`` + ``query``; qrels:
  ``query-id``, ``corpus-id``, ``score`` (relevant when > 0). Ids are normalised to str.
- ``pairs-jsonl``: a ``.jsonl`` file (or a directory of them) in the ``sapindex calibrate`` pairs
  format, ``{"query": ..., "image": "path relative to the file"}`` per line; pages are
  de-duplicated by file content, queries by text.

Ids: BEIR ids are the dataset's own. ViDoRe v1 has none: a page's id is the global row number
(0-based, files in sorted order) of its first occurrence, as vidore-benchmark numbers passages; a
JSONL page's id is its image path relative to the dataset root. Queries of both are numbered in
order of first appearance ("0", "1", ...).

Bad rows never raise: they are skipped and listed in ``skipped[category]`` as ``"file:row N:
reason"`` (JSONL: ``"file:N: reason"``, N the line), so that one broken image cannot stop a
benchmark run but is never silent either. Structural problems (missing files or columns, no usable
query at all) raise :class:`SapIndexError`. Images are checked cheaply (``Image.open`` +
``verify``, no decode) when the dataset is loaded, and decoded only by ``DatasetPage.load()``:
the dataset holds encoded bytes (or a path), never decoded images.

The fingerprint is the sha256 of what was loaded: the format, every page's id and image sha256,
every query's id and text, and the qrels. It is exact (unlike file mtimes it does not change when
the files are copied, and it changes when anything evaluated changes) and costs nothing extra,
since every image is hashed for de-duplication anyway.

Calibration reads its (query, page) pairs from the same files with the same readers
(:mod:`sapindex.calibration.pairs`), but keeps every usable row as a pair.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.eval.readers import UNREADABLE, image_problem, image_source, iter_objects, open_image, parquet_rows

__all__ = ["DatasetPage", "DatasetQuery", "EvalDataset", "load_dataset", "FORMATS"]

FORMATS = ("vidore-v1-qa", "beir", "pairs-jsonl")
INVALID = "invalid row"
NO_RELEVANT = "query without relevant page"
UNKNOWN_PAGE = "qrel to unknown page"
UNKNOWN_QUERY = "qrel to unknown query"
DUPLICATE = "duplicate"
_ROLES = ("corpus", "queries", "qrels")


@dataclass(frozen=True)
class DatasetPage:
    """One corpus page: its encoded image (bytes or a file), decoded on demand."""

    id: str
    source: str  # "file:row N", for messages
    sha256: str  # of the encoded image
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def load(self) -> Image.Image:
        """The page as an RGB image; SapIndexError naming the source if it cannot be decoded."""
        return open_image(self.source, self.path, self.data)


@dataclass(frozen=True)
class DatasetQuery:
    id: str
    text: str


@dataclass
class EvalDataset:
    format: str
    source: str
    pages: list[DatasetPage]
    queries: list[DatasetQuery]  # only queries with at least one relevant page
    qrels: dict[str, dict[str, int]]  # query id -> {page id: 1}, relevant pages only
    skipped: dict[str, list[str]]  # category -> ["file:row N: reason", ...]
    fingerprint: str = ""


def load_dataset(path: str | Path) -> EvalDataset:
    """Load a ViDoRe v1 QA, BEIR (ViDoRe v2) or JSONL-pairs dataset; see the module docstring."""
    root = Path(path)
    if not root.exists():
        raise SapIndexError(f"{root}: dataset file or directory does not exist")
    if root.is_file():
        if root.suffix == ".parquet":
            builder = _read_v1([root])
        elif root.suffix in (".jsonl", ".ndjson"):
            builder = _read_jsonl([root], root.parent)
        else:
            raise SapIndexError(f"{root}: unknown dataset format (expected .parquet or .jsonl, or a directory)")
    else:
        parquets = sorted(p for p in root.rglob("*.parquet") if p.is_file())
        by_role = {role: [p for p in parquets if _role(p.relative_to(root)) == role] for role in _ROLES}
        if any(by_role.values()):
            missing = [role for role, files in by_role.items() if not files]
            if missing:
                raise SapIndexError(f"{root}: BEIR layout without {', '.join(missing)} parquet "
                                    f"(found {', '.join(r for r in _ROLES if r not in missing)})")
            builder = _read_beir(by_role)
        elif parquets:
            builder = _read_v1(parquets)
        else:
            jsonls = sorted(p for p in root.rglob("*") if p.suffix in (".jsonl", ".ndjson") and p.is_file())
            if not jsonls:
                raise SapIndexError(f"{root}: directory holds no *.parquet or *.jsonl dataset file")
            builder = _read_jsonl(jsonls, root)
    return builder.finish(root)


# --------------------------------------------------------------------------- shared bookkeeping


class _Builder:
    """Collects pages, queries and relevance, then drops what cannot be evaluated."""

    def __init__(self, fmt: str):
        self.format = fmt
        self.pages: dict[str, DatasetPage] = {}
        self.queries: dict[str, DatasetQuery] = {}
        self.query_source: dict[str, str] = {}
        self.qrels: dict[str, dict[str, int]] = defaultdict(dict)
        self.skipped: dict[str, list[str]] = defaultdict(list)

    def skip(self, category: str, where: str, reason: str | None = None) -> None:
        self.skipped[category].append(f"{where}: {reason or category}")

    def finish(self, root: Path) -> EvalDataset:
        queries = []
        for q in self.queries.values():
            if self.qrels.get(q.id):
                queries.append(q)
            else:
                self.skip(NO_RELEVANT, self.query_source[q.id], f"query {q.id!r} has no relevant page")
        if not queries:
            counts = ", ".join(f"{len(v)} {k}" for k, v in self.skipped.items()) or "no rows"
            raise SapIndexError(f"{root}: no usable query (skipped: {counts})")
        qrels = {q.id: dict(self.qrels[q.id]) for q in queries}
        digest = hashlib.sha256(f"{self.format}\n".encode())
        for p in self.pages.values():
            digest.update(f"p\0{p.id}\0{p.sha256}\n".encode())
        for q in queries:
            digest.update(f"q\0{q.id}\0{q.text}\n".encode())
            for page_id in sorted(qrels[q.id]):
                digest.update(f"r\0{q.id}\0{page_id}\n".encode())
        return EvalDataset(format=self.format, source=str(root), pages=list(self.pages.values()), queries=queries,
                           qrels=qrels, skipped=dict(self.skipped), fingerprint=digest.hexdigest())


def _role(relative: Path) -> str | None:
    """corpus/queries/qrels from a folder name or a file name (``corpus.parquet``, ``corpus-0.parquet``)."""
    for part in relative.parts[:-1]:
        if part in _ROLES:
            return part
    stem = relative.stem
    for role in _ROLES:
        if stem == role or stem.startswith((role + "-", role + "_")):
            return role
    return None


def _norm_id(value) -> str | None:
    """Ids may be stored as int, float or str: 7, 7.0 and "7" are the same id."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _page_from_cell(b: _Builder, value, file: Path, where: str, page_id: str,
                    sha: str | None = None) -> DatasetPage | None:
    """A checked page from an image cell, or None (the row is recorded as skipped).

    ``sha`` is the cell's bytes' sha256 when the caller already has it (large images hash once).
    """
    data, path = image_source(value, file)
    if data is None and path is None:
        b.skip(UNREADABLE, where, "image has no bytes")
        return None
    content = data
    if content is None:
        try:
            content = path.read_bytes()
        except OSError:
            b.skip(UNREADABLE, where, f"{path}: image file not found")
            return None
    sha = sha or hashlib.sha256(content).hexdigest()
    problem = image_problem(io.BytesIO(content))
    if problem:
        b.skip(UNREADABLE, where, problem)
        return None
    return DatasetPage(id=page_id, source=where, sha256=sha, path=path, data=data)


# --------------------------------------------------------------------------- ViDoRe v1 QA


def _read_v1(files: list[Path]) -> _Builder:
    b = _Builder("vidore-v1-qa")
    page_by_hash: dict[str, str | None] = {}  # sha256 -> page id, None if unreadable
    query_by_text: dict[str, str] = {}
    global_row = -1
    for file in files:
        for row, cells in parquet_rows(file, ("query", "image")):
            global_row += 1
            where = f"{file}:row {row}"
            page_id = _v1_page(b, cells["image"], file, where, str(global_row), page_by_hash)
            query = cells["query"]
            if isinstance(query, str) and query.strip():  # else a page-only row
                _add_pair(b, query_by_text, query.strip(), page_id, where)
    return b


def _add_pair(b: _Builder, query_by_text: dict[str, str], text: str, page_id: str | None, where: str) -> None:
    """Record a (query text, page) row; the query is registered even when its page is unusable,
    so that a query whose every page was skipped is reported as a query without relevant page."""
    query_id = query_by_text.get(text)
    if query_id is None:
        query_id = query_by_text[text] = str(len(query_by_text))
        b.queries[query_id] = DatasetQuery(query_id, text)
        b.query_source[query_id] = where
    if page_id is None:
        return
    if page_id in b.qrels[query_id]:
        b.skip(DUPLICATE, where, f"same query and page as query {query_id!r}, page {page_id!r}")
    b.qrels[query_id][page_id] = 1


def _v1_page(b: _Builder, cell, file: Path, where: str, new_id: str, page_by_hash: dict) -> str | None:
    """The id of the row's page (added on first sight), or None if its image is unusable."""
    data, _ = image_source(cell, file)
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    if sha is not None and sha in page_by_hash:  # identical bytes were seen (and checked) before
        if page_by_hash[sha] is None:
            b.skip(UNREADABLE, where, "unreadable image (same bytes as an earlier row)")
        return page_by_hash[sha]
    page = _page_from_cell(b, cell, file, where, new_id, sha)
    if page is None:
        if sha is not None:
            page_by_hash[sha] = None
        return None
    if page.sha256 in page_by_hash:  # a path-only cell whose file content was seen
        return page_by_hash[page.sha256]
    page_by_hash[page.sha256] = page.id
    b.pages[page.id] = page
    return page.id


# --------------------------------------------------------------------------- BEIR / ViDoRe v2


def _read_beir(by_role: dict[str, list[Path]]) -> _Builder:
    b = _Builder("beir")
    page_source: dict[str, str] = {}
    bad_pages: set[str] = set()
    for file in by_role["corpus"]:
        for row, cells in parquet_rows(file, ("corpus-id", "image")):
            where = f"{file}:row {row}"
            page_id = _norm_id(cells["corpus-id"])
            if page_id is None:
                b.skip(INVALID, where, "missing corpus-id")
            elif page_id in b.pages or page_id in bad_pages:
                b.skip(DUPLICATE, where, f"corpus-id {page_id!r} already at {page_source[page_id]}")
            else:
                page_source[page_id] = where
                page = _page_from_cell(b, cells["image"], file, where, page_id)
                if page is None:
                    bad_pages.add(page_id)
                else:
                    b.pages[page_id] = page
    for file in by_role["queries"]:
        for row, cells in parquet_rows(file, ("query-id", "query")):
            where = f"{file}:row {row}"
            query_id, text = _norm_id(cells["query-id"]), cells["query"]
            text = text.strip() if isinstance(text, str) else ""
            if query_id is None or not text:
                b.skip(INVALID, where, "missing query-id or query text")
            elif query_id in b.queries:
                b.skip(DUPLICATE, where, f"query-id {query_id!r} already at {b.query_source[query_id]}")
            else:
                b.queries[query_id] = DatasetQuery(query_id, text)
                b.query_source[query_id] = where
    for file in by_role["qrels"]:
        for row, cells in parquet_rows(file, ("query-id", "corpus-id", "score")):
            where = f"{file}:row {row}"
            query_id, page_id, score = _norm_id(cells["query-id"]), _norm_id(cells["corpus-id"]), cells["score"]
            if not isinstance(score, (int, float)) or score <= 0:
                continue  # judged not relevant (or unjudged): nothing to record
            if query_id not in b.queries:
                b.skip(UNKNOWN_QUERY, where, f"query-id {query_id!r} is not in the queries")
            elif page_id not in b.pages:
                why = "its image was skipped" if page_id in bad_pages else "it is not in the corpus"
                b.skip(UNKNOWN_PAGE, where, f"corpus-id {page_id!r}: {why}")
            elif page_id in b.qrels[query_id]:
                b.skip(DUPLICATE, where, f"qrel ({query_id!r}, {page_id!r}) repeated")
            else:
                b.qrels[query_id][page_id] = 1
    return b


# --------------------------------------------------------------------------- JSONL pairs


def _read_jsonl(files: list[Path], root: Path) -> _Builder:
    b = _Builder("pairs-jsonl")
    page_by_hash: dict[str, str] = {}
    checked: dict[Path, tuple[str | None, str | None]] = {}  # resolved path -> (sha256, problem)
    query_by_text: dict[str, str] = {}
    for file in files:
        for where, row, problem in iter_objects(file):
            if problem:
                b.skip(INVALID, where, problem)
                continue
            query, image = row.get("query"), row.get("image")
            if not isinstance(query, str) or not query.strip() or not isinstance(image, str) or not image:
                b.skip(INVALID, where, "expected an object with non-empty 'query' and 'image'")
                continue
            path = (file.parent / image).resolve()
            if path not in checked:
                try:
                    data = path.read_bytes()
                    checked[path] = (hashlib.sha256(data).hexdigest(), image_problem(io.BytesIO(data)))
                except OSError:
                    checked[path] = (None, "image file not found")
            sha, problem = checked[path]
            page_id = None
            if problem:
                b.skip(UNREADABLE, where, f"{image}: {problem}")
            else:
                page_id = page_by_hash.get(sha)
                if page_id is None:
                    page_id = page_by_hash[sha] = _relative_id(path, root)
                    b.pages[page_id] = DatasetPage(id=page_id, source=where, sha256=sha, path=path)
            _add_pair(b, query_by_text, query.strip(), page_id, where)
    return b


def _relative_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:  # an image outside the dataset root
        return path.as_posix()
