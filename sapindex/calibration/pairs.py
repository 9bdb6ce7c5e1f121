"""Calibration pairs: the (query, relevant page) pairs ``sapindex calibrate`` averages over (torch-free).

Read from the same files as ``sapindex eval``'s datasets, with the same readers
(:mod:`sapindex.eval.readers`), but every usable row is kept as a pair, in file order: no
de-duplication (calibration averages over rows). See :func:`load_pairs` for the formats.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.eval.datasets import load_dataset
from sapindex.eval.readers import image_problem, image_source, iter_objects, open_image, parquet_rows

__all__ = ["Pair", "PairSet", "load_pairs"]


@dataclass(frozen=True)
class Pair:
    """One calibration (query, relevant page) pair; the image is decoded only by :meth:`load_image`."""

    query: str
    source: str  # "file:row", for messages
    image_path: Path | None = None
    image_bytes: bytes | None = None

    def load_image(self) -> Image.Image:
        """The page as RGB; raises SapIndexError naming the row if it cannot be decoded."""
        return open_image(self.source, self.image_path, self.image_bytes)


@dataclass
class PairSet:
    pairs: list[Pair] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:row: reason"


def load_pairs(source: str | Path) -> PairSet:
    """The (query, page image) pairs ``sapindex calibrate`` averages over, every usable row in order.

    Formats:
    - JSONL: one ``{"query": str, "image": path}`` object per line, image paths relative to the file;
    - a directory: every ``*.jsonl`` and ``*.parquet`` file below it, in sorted order;
    - parquet: ``query`` and ``image`` columns, image a struct with ``bytes`` (how the ColPali
      training set and the ViDoRe QA sets are stored);
    - a BEIR / ViDoRe v2 directory (``corpus/``, ``queries/``, ``qrels/``; what ``sapindex eval``
      and ``python -m sapindex.benchdata.synthetic`` use): each query with each of its relevant
      pages, as :func:`load_dataset` reads them.

    Bad rows (invalid JSON, missing fields, missing or unreadable images) are collected as
    ``"file:row: reason"`` strings and skipped; the caller decides whether enough good pairs remain.
    Images are checked when listed (header decode) and fully decoded only when their batch runs,
    so memory stays bounded.
    """
    path = Path(source)
    if not path.exists():
        raise SapIndexError(f"{path}: pairs file or directory does not exist")
    if path.is_dir() and (path / "corpus").is_dir() and (path / "qrels").is_dir():
        return _beir_pairs(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
        if not files:
            raise SapIndexError(f"{path}: directory holds no *.jsonl or *.parquet pairs file")
    else:
        files = [path]
    result = PairSet()
    for file in files:
        if file.suffix == ".parquet":
            _parquet_pairs(file, result)
        elif file.suffix in (".jsonl", ".json", ".ndjson"):
            _jsonl_pairs(file, result)
        else:
            raise SapIndexError(f"{file}: unknown pairs format (expected .jsonl or .parquet)")
    return result


def _beir_pairs(path: Path) -> PairSet:
    ds = load_dataset(path)
    pages = {p.id: p for p in ds.pages}
    out = PairSet(skipped=[f"{category}: {reason}" for category, reasons in ds.skipped.items() for reason in reasons])
    for q in ds.queries:
        for page_id in sorted(ds.qrels[q.id]):
            page = pages[page_id]
            out.pairs.append(Pair(query=q.text, source=f"{page.source} (query {q.id})", image_path=page.path,
                                  image_bytes=page.data))
    return out


def _jsonl_pairs(file: Path, out: PairSet) -> None:
    for where, row, problem in iter_objects(file):
        if problem:
            out.skipped.append(f"{where}: {problem}")
            continue
        query, image = row.get("query"), row.get("image")
        problem = _query_problem(query) or (None if isinstance(image, str) and image else "missing 'image' path")
        if problem:
            out.skipped.append(f"{where}: {problem}")
            continue
        image_path = (file.parent / image).resolve()
        problem = image_problem(image_path)
        if problem:
            out.skipped.append(f"{where}: {image}: {problem}")
            continue
        out.pairs.append(Pair(query=query.strip(), source=where, image_path=image_path))


def _parquet_pairs(file: Path, out: PairSet) -> None:
    """Rows of a ``query`` + ``image`` parquet file; the image must be stored in the file (bytes)."""
    for row, cells in parquet_rows(file, ("query", "image"), missing_label="parquet lacks column(s)"):
        where = f"{file}:row {row}"
        query = cells["query"]
        image, _ = image_source(cells["image"], file)
        problem = _query_problem(query)
        if problem is None and not image:
            problem = "image has no bytes"
        if problem is None:
            problem = image_problem(io.BytesIO(image))
        if problem:
            out.skipped.append(f"{where}: {problem}")
            continue
        out.pairs.append(Pair(query=query.strip(), source=where, image_bytes=image))


def _query_problem(query) -> str | None:
    """Why a row's query cannot be used, or None."""
    if not isinstance(query, str) or not query.strip():
        return "missing or empty 'query'"
    return None
