"""Calibration (query, page image) pairs from local files.

Formats:
- JSONL: one ``{"query": str, "image": path}`` object per line, image paths relative to the file;
- a directory: every ``*.jsonl`` and ``*.parquet`` file below it, in sorted order;
- parquet: ``query`` and ``image`` columns, image a struct with ``bytes`` (how the ColPali
  training set and the ViDoRe QA sets are stored);
- a BEIR / ViDoRe v2 directory (``corpus/``, ``queries/``, ``qrels/``; what ``sapindex eval``
  and ``python -m sapindex.benchdata.synthetic`` use): each query with each of its relevant pages.

Bad rows (invalid JSON, missing fields, missing or unreadable images) are collected as
``"file:row: reason"`` strings and skipped; the caller decides whether enough good pairs remain.
Images are checked when listed (header decode) and fully decoded only when their batch runs,
so memory stays bounded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sapindex.errors import SapIndexError
from sapindex.eval.datasets import image_problem
from sapindex.eval.jsonl import iter_objects


@dataclass(frozen=True)
class Pair:
    query: str
    source: str  # "file:row", for messages
    image_path: Path | None = None
    image_bytes: bytes | None = None

    def load_image(self) -> Image.Image:
        """The page as RGB; raises SapIndexError naming the row if it cannot be decoded."""
        try:
            handle = self.image_path if self.image_path is not None else io.BytesIO(self.image_bytes)
            with Image.open(handle) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise SapIndexError(f"{self.source}: cannot decode image: {exc}") from None


@dataclass
class PairSet:
    pairs: list[Pair] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:row: reason"


def load_pairs(source: str | Path) -> PairSet:
    path = Path(source)
    if not path.exists():
        raise SapIndexError(f"{path}: pairs file or directory does not exist")
    if path.is_dir() and (path / "corpus").is_dir() and (path / "qrels").is_dir():
        return _read_beir(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
        if not files:
            raise SapIndexError(f"{path}: directory holds no *.jsonl or *.parquet pairs file")
    else:
        files = [path]
    result = PairSet()
    for file in files:
        if file.suffix == ".parquet":
            _read_parquet(file, result)
        elif file.suffix in (".jsonl", ".json", ".ndjson"):
            _read_jsonl(file, result)
        else:
            raise SapIndexError(f"{file}: unknown pairs format (expected .jsonl or .parquet)")
    return result


def _read_beir(path: Path) -> PairSet:
    from sapindex.eval.datasets import load_dataset

    ds = load_dataset(path)
    pages = {p.id: p for p in ds.pages}
    out = PairSet(skipped=[f"{category}: {reason}" for category, reasons in ds.skipped.items() for reason in reasons])
    for q in ds.queries:
        for page_id in sorted(ds.qrels[q.id]):
            page = pages[page_id]
            out.pairs.append(Pair(query=q.text, source=f"{page.source} (query {q.id})", image_path=page.path,
                                  image_bytes=page.data))
    return out


def _read_jsonl(file: Path, out: PairSet) -> None:
    for where, row, problem in iter_objects(file):
        if problem:
            out.skipped.append(f"{where}: {problem}")
            continue
        query, image = row.get("query"), row.get("image")
        problem = _check_query(query) or (None if isinstance(image, str) and image else "missing 'image' path")
        if problem:
            out.skipped.append(f"{where}: {problem}")
            continue
        image_path = (file.parent / image).resolve()
        problem = image_problem(image_path)
        if problem:
            out.skipped.append(f"{where}: {image}: {problem}")
            continue
        out.pairs.append(Pair(query=query.strip(), source=where, image_path=image_path))


def _read_parquet(file: Path, out: PairSet) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on garbage
        raise SapIndexError(f"{file}: not a readable parquet file: {exc}") from None
    missing = [c for c in ("query", "image") if c not in table.column_names]
    if missing:
        raise SapIndexError(f"{file}: parquet lacks column(s) {', '.join(missing)} (has {', '.join(table.column_names)})")
    queries = table.column("query").to_pylist()
    for row, (query, image) in enumerate(zip(queries, _image_bytes(table.column("image"))), start=1):
        where = f"{file}:row {row}"
        problem = _check_query(query)
        if problem is None and not image:
            problem = "image has no bytes"
        if problem is None:
            problem = image_problem(io.BytesIO(image))
        if problem:
            out.skipped.append(f"{where}: {problem}")
            continue
        out.pairs.append(Pair(query=query.strip(), source=where, image_bytes=image))


def _image_bytes(column):
    """Yield each row's image bytes from a struct column (``{bytes, path}``) or a binary column."""
    for value in column.to_pylist():
        if isinstance(value, dict):
            yield value.get("bytes")
        elif isinstance(value, (bytes, bytearray)):
            yield bytes(value)
        else:
            yield None


def _check_query(query) -> str | None:
    if not isinstance(query, str) or not query.strip():
        return "missing or empty 'query'"
    return None
