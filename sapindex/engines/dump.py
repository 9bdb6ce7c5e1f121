"""``sapindex dump``: an open copy of an index for any engine, and the feed files of Vespa and Elasticsearch.

Why: the index is a LanceDB table that only sapindex reads as a whole. An engine that sapindex has
no client for (Vespa, Elasticsearch, OpenSearch, a warehouse) takes one of three files, written
from one version of the index in bounded memory (a chunk of pages at a time), atomically (a
temporary sibling renamed at the end, so a killed dump leaves no half file under the final name):

- ``parquet``: ``pages.parquet``, one row per page: path, page, content_hash, width, height,
  n_visual, n_kept, keep_ratio, method, mode, bundle_fingerprint, indexed_at, positions
  (``list<int32>``) and the kept vectors as ``list<fixed_size_list<float16, dim>>``; beside it
  ``dump.json`` (format ``sapindex-dump``, the dimension, the bundle fingerprint, the index version,
  the counts). Any Arrow reader takes it (pyarrow, DuckDB, Spark, polars).
- ``vespa-feed``: ``vespa-feed.jsonl``, one ``put`` per page for ``vespa feed``, the vectors as a
  mixed tensor ``tensor<bfloat16>(patch{}, v[dim])`` in Vespa's short form (one block per kept token,
  labelled by its visual position), and ``vespa-schema.sd``: the document type with that field
  and a MaxSim rank profile.
- ``es-bulk``: ``es-bulk.ndjson``, Elasticsearch's bulk lines (an ``index`` action, then the page
  with its vectors as a ``rank_vectors`` value), and ``es-mapping.json``, the index mapping.

Vector values in the two feeds are rounded to 5 decimals, below the resolution of the engines'
bfloat16 cells; the Parquet copy keeps the stored float16 values exactly. Ids are
:func:`~sapindex.engines.qdrant.point_id` (from ``(content_hash, page)``), the same as a push to Qdrant.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sapindex import __version__
from sapindex.engines.qdrant import point_id
from sapindex.errors import SapIndexError
from sapindex.formats import write_json_atomic
from sapindex.index.store import Index
from sapindex.index.store._arrow import ints_from_list, vectors_from_list

__all__ = ["DUMP_FORMAT", "FORMATS", "DumpReport", "dump"]

DUMP_FORMAT = "sapindex-dump"
FORMATS = ("parquet", "vespa-feed", "es-bulk")
COLUMNS = ("path", "page", "content_hash", "width", "height", "n_visual", "n_kept", "keep_ratio", "method", "mode",
           "bundle_fingerprint", "indexed_at", "positions", "vectors")
FEED_FIELDS = ("path", "page", "content_hash", "keep_ratio", "method", "mode", "bundle_fingerprint")
DECIMALS = 5
CHUNK_PAGES = 512


@dataclass(frozen=True)
class DumpReport:
    """What a dump wrote.

    Attributes:
        files: The files written, the data file first.
        pages: Pages written.
        vectors: Kept vectors written.
        bytes: Size of the data file.
    """

    files: list[Path]
    pages: int
    vectors: int
    bytes: int


def dump(index: Index, out_dir: str | Path, fmt: str = "parquet", *, vespa_doctype: str = "page",
         vespa_namespace: str = "sapindex", es_index: str = "sapindex-pages",
         progress: Callable[[int, int], None] | None = None) -> DumpReport:
    """Write ``index`` (as of its current version) to ``out_dir`` in ``fmt`` (see the module).

    Args:
        index: The index to copy (a reader).
        out_dir: The directory to write into (created if missing); files of the same name are replaced.
        fmt: ``parquet``, ``vespa-feed`` or ``es-bulk``.
        vespa_doctype: The Vespa document type (``vespa-feed``).
        vespa_namespace: The namespace of the Vespa document ids (``vespa-feed``).
        es_index: The Elasticsearch index the bulk lines write to (``es-bulk``).
        progress: Called as ``progress(pages_done, pages_total)``.

    Returns:
        The files written and the counts.

    Raises:
        SapIndexError: ``fmt`` is unknown or ``out_dir`` cannot be written.
    """
    if fmt not in FORMATS:
        raise SapIndexError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SapIndexError(f"{out}: cannot create the directory ({exc.strerror})") from None
    version = index.version
    total = index.count_pages()
    batches = _batches(index, version, total, progress)
    if fmt == "parquet":
        report = _parquet(index, out / "pages.parquet", batches)
        write_json_atomic(out / "dump.json", {
            "format": DUMP_FORMAT, "format_version": 1, "dim": index.dim, "vector_dtype": "float16",
            "bundle_fingerprint": index.bundle_fingerprint, "index": str(index.path), "index_version": version,
            "pages": report.pages, "vectors": report.vectors, "sapindex_version": __version__})
        return DumpReport([*report.files, out / "dump.json"], report.pages, report.vectors, report.bytes)
    if fmt == "vespa-feed":
        report = _lines(out / "vespa-feed.jsonl", batches, index.dim,
                        lambda fields, labels, vecs: [vespa_put(fields, labels, vecs, vespa_namespace, vespa_doctype)])
        schema = out / "vespa-schema.sd"
        schema.write_text(vespa_schema(vespa_doctype, index.dim), encoding="utf-8")
        return DumpReport([*report.files, schema], report.pages, report.vectors, report.bytes)
    report = _lines(out / "es-bulk.ndjson", batches, index.dim,
                    lambda fields, labels, vecs: list(es_bulk_lines(fields, vecs, es_index)))
    write_json_atomic(out / "es-mapping.json", es_mapping(index.dim))
    return DumpReport([*report.files, out / "es-mapping.json"], report.pages, report.vectors, report.bytes)


def _batches(index: Index, version: int, total: int,
             progress: Callable[[int, int], None] | None) -> Iterator[pa.RecordBatch]:
    stored = index.page_columns()
    columns = [c for c in COLUMNS if c in stored]
    done = 0
    for batch in index.scan_pages(columns, version=version, chunk_pages=CHUNK_PAGES):
        if "mode" not in columns:  # an index from before fast mode: every row is exact
            batch = batch.append_column("mode", pa.array(["exact"] * batch.num_rows))
        yield batch
        done += batch.num_rows
        if progress:
            progress(done, max(total, done))


def _vectors16(batch: pa.RecordBatch, dim: int) -> pa.Array:
    """The batch's vectors column as ``list<fixed_size_list<float16, dim>>`` (a float32 index is converted)."""
    col = batch.column("vectors")
    if col.type.value_type.value_type == pa.float16():
        return col
    flat, offsets = vectors_from_list(col, dim, np.float16)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), inner)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write, renamed to ``path`` when the block ends well, removed otherwise."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _parquet(index: Index, path: Path, batches: Iterator[pa.RecordBatch]) -> DumpReport:
    schema = pa.schema(_schema_fields(index.dim))
    pages = vectors = 0
    with _replacing(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in batches:
            arrays = [_vectors16(batch, index.dim) if f.name == "vectors" else batch.column(f.name).cast(f.type)
                      for f in schema]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            pages += batch.num_rows
            vectors += int(np.sum(batch.column("n_kept").to_numpy()))
    return DumpReport([path], pages, vectors, path.stat().st_size)


def _schema_fields(dim: int) -> list[tuple[str, pa.DataType]]:
    types = {"path": pa.string(), "page": pa.int32(), "content_hash": pa.string(), "width": pa.int32(),
             "height": pa.int32(), "n_visual": pa.int32(), "n_kept": pa.int32(), "keep_ratio": pa.float64(),
             "method": pa.string(), "mode": pa.string(), "bundle_fingerprint": pa.string(),
             "indexed_at": pa.timestamp("us", tz="UTC"), "positions": pa.list_(pa.int32()),
             "vectors": pa.list_(pa.list_(pa.float16(), dim))}
    return [(c, types[c]) for c in COLUMNS]


def _lines(path: Path, batches: Iterator[pa.RecordBatch], dim: int,
           render: Callable[[dict, list[str], np.ndarray], list[dict]]) -> DumpReport:
    """A JSON-lines feed: ``render(fields, labels, vectors)`` gives each page's objects."""
    pages = vectors = 0
    with _replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for batch in batches:
            vecs, voff = vectors_from_list(batch.column("vectors"), dim, np.float32)
            pos, poff = ints_from_list(batch.column("positions"))
            vecs = np.round(vecs.astype(np.float64), DECIMALS)  # short decimals, not float32 reprs
            scalars = {c: batch.column(c).to_pylist() for c in FEED_FIELDS}
            for i in range(batch.num_rows):
                fields = {c: scalars[c][i] for c in FEED_FIELDS}
                labels = [str(p) for p in pos[poff[i]:poff[i + 1]]]
                for obj in render(fields, labels, vecs[voff[i]:voff[i + 1]]):
                    f.write(json.dumps(obj, separators=(",", ":")) + "\n")
            pages += batch.num_rows
            vectors += len(vecs)
    return DumpReport([path], pages, vectors, path.stat().st_size)


# ---------------------------------------------------------------------------------------- Vespa


def vespa_put(fields: dict, labels: list[str], vectors: np.ndarray, namespace: str, doctype: str) -> dict:
    """One page as a Vespa ``put``: ``id:<namespace>:<doctype>::<point id>``, the page's fields and
    ``embedding`` in the mixed-tensor short form (``{label: [dim values]}``, one block per kept token)."""
    doc_id = f"id:{namespace}:{doctype}::{point_id(fields['content_hash'], fields['page'])}"
    embedding = {label: row for label, row in zip(labels, vectors.tolist(), strict=True)}
    return {"put": doc_id, "fields": {**fields, "embedding": embedding}}


def vespa_schema(doctype: str, dim: int) -> str:
    """The Vespa schema the feed fits: the page's fields, the embedding tensor and a MaxSim rank profile
    (the sum over query tokens of the best dot product with the page's kept vectors)."""
    return f"""schema {doctype} {{
    document {doctype} {{
        field path type string {{ indexing: summary | attribute }}
        field page type int {{ indexing: summary | attribute }}
        field content_hash type string {{ indexing: summary | attribute }}
        field keep_ratio type double {{ indexing: summary | attribute }}
        field method type string {{ indexing: summary | attribute }}
        field mode type string {{ indexing: summary | attribute }}
        field bundle_fingerprint type string {{ indexing: summary | attribute }}
        field embedding type tensor<bfloat16>(patch{{}}, v[{dim}]) {{ indexing: attribute }}
    }}
    rank-profile maxsim {{
        inputs {{
            query(qt) tensor<float>(querytoken{{}}, v[{dim}])
        }}
        first-phase {{
            expression: sum(reduce(sum(query(qt) * attribute(embedding), v), max, patch), querytoken)
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------------------- Elasticsearch


def es_bulk_lines(fields: dict, vectors: np.ndarray, es_index: str) -> Iterator[dict]:
    """One page as Elasticsearch bulk lines: the ``index`` action, then the document with its
    vectors as a ``rank_vectors`` value (a list of ``dim``-long lists)."""
    yield {"index": {"_index": es_index, "_id": point_id(fields["content_hash"], fields["page"])}}
    yield {**fields, "vectors": vectors.tolist()}


def es_mapping(dim: int) -> dict:
    """The mapping for :func:`es_bulk_lines`' documents (Elasticsearch 9, ``rank_vectors`` with bfloat16
    elements; query with ``script_score`` and ``maxSimDotProduct(params.query_vector, 'vectors')``)."""
    keyword = {"type": "keyword"}
    return {"mappings": {"properties": {
        "path": keyword, "page": {"type": "integer"}, "content_hash": keyword, "keep_ratio": {"type": "float"},
        "method": keyword, "mode": keyword, "bundle_fingerprint": keyword,
        "vectors": {"type": "rank_vectors", "dims": dim, "element_type": "bfloat16"}}}}
