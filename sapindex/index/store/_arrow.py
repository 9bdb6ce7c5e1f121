"""PageRows to Arrow tables and Arrow list columns back to flat numpy arrays.

Why flat: a chunk of pages is read as one ``list<fixed_size_list<float16, dim>>`` column, and
both the search and :meth:`Index.iter_rows` want every vector of the chunk as one ``[n, dim]``
matrix plus per-page offsets, not one Python object per page or per vector.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pyarrow as pa

from sapindex.index.store.schema import PageRow, failure_schema, page_schema


def vectors_from_list(col: pa.Array, dim: int, dtype: type | None = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(all vectors [n, dim], offsets [rows + 1] from 0) of a list<fixed_size_list> column, as
    ``dtype`` (None: the stored one, e.g. float16 where a large read should take half the memory)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    inner = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets -= offsets[0]
    flat = inner.flatten().to_numpy(zero_copy_only=False)
    flat = flat.reshape(-1, dim)
    return (flat if dtype is None else flat.astype(dtype, copy=False)), offsets


def ints_from_list(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(all values, offsets [rows + 1] from 0) of a list<int32> column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    flat = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
    return flat, offsets - offsets[0]


def _checked(row: PageRow, dim: int, np_dtype: type, vector_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A row's (vectors in the stored dtype, positions int32); ValueError naming the page if invalid."""
    v = np.asarray(row.vectors)
    p = np.asarray(row.positions)
    where = f"{row.path} page {row.page}"
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"{where}: vectors must be [k, {dim}], got shape {v.shape}")
    if v.shape[0] < 1:
        raise ValueError(f"{where}: a page must keep at least one vector")
    if p.shape != (v.shape[0],):
        raise ValueError(f"{where}: positions must be [{v.shape[0]}], got shape {p.shape}")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"{where}: positions must be integers, got {p.dtype}")
    if np.any(p < 0) or np.any(np.diff(p) <= 0):
        raise ValueError(f"{where}: positions must be non-negative and strictly ascending")
    if row.n_visual and p[-1] >= row.n_visual:
        raise ValueError(f"{where}: position {p[-1]} >= n_visual {row.n_visual}")
    if int(row.page) < 1:
        raise ValueError(f"{where}: page numbers are 1-based")
    if not row.path or not row.content_hash:
        raise ValueError(f"{where}: path and content_hash must be non-empty")
    if row.scores is not None and (np.shape(row.scores) != p.shape or not np.all(np.isfinite(row.scores))):
        raise ValueError(f"{where}: scores must be [{p.shape[0]}] finite values, got shape {np.shape(row.scores)}")
    if row.cover is not None:
        cover = np.asarray(row.cover)
        if (cover.shape != (row.n_visual,) or not np.issubdtype(cover.dtype, np.integer) or cover.min() < -1
                or cover.max() >= v.shape[0] or not np.array_equal(cover[p], np.arange(p.shape[0]))):
            raise ValueError(f"{where}: cover must be [{row.n_visual}] rows of positions in [-1, {v.shape[0]}), "
                             "each position covered by its own row")
    v = v.astype(np_dtype)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{where}: vectors are not finite in {vector_dtype}")
    return v, p.astype(np.int32)


def page_table(rows: list[PageRow], dim: int, vector_dtype: str, bundle_fingerprint: str,
               now: _dt.datetime) -> pa.Table:
    """The rows as a table of :func:`page_schema` (every row checked first; ValueError names the page)."""
    np_dtype = np.float16 if vector_dtype == "float16" else np.float32
    vecs, poss = zip(*(_checked(row, dim, np_dtype, vector_dtype) for row in rows), strict=True)
    counts_np = np.asarray([v.shape[0] for v in vecs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts_np)])
    if offsets[-1] * dim >= 2**31:
        raise ValueError("batch too large: split it (over 2**31 vector values)")
    offsets = pa.array(offsets.astype(np.int32))
    flat = np.concatenate(vecs).reshape(-1)
    value_type = pa.float16() if vector_dtype == "float16" else pa.float32()
    vectors = pa.ListArray.from_arrays(
        offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat, value_type), dim))
    positions = pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(poss), pa.int32()))
    if all(r.scores is not None for r in rows):
        scores = pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([np.asarray(r.scores, np.float64)
                                                                            for r in rows]), pa.float64()))
    else:
        scores = pa.array([None if r.scores is None else np.asarray(r.scores, np.float64) for r in rows],
                          pa.list_(pa.float64()))
    cover = pa.array([None if r.cover is None else np.asarray(r.cover, np.int32) for r in rows], pa.list_(pa.int32()))
    n = len(rows)
    columns = {
        "path": pa.array([str(r.path) for r in rows], pa.string()),
        "content_hash": pa.array([str(r.content_hash) for r in rows], pa.string()),
        "page": pa.array([int(r.page) for r in rows], pa.int32()),
        "width": pa.array([int(r.width) for r in rows], pa.int32()),
        "height": pa.array([int(r.height) for r in rows], pa.int32()),
        "grid_rows": pa.array([int(r.grid[0]) for r in rows], pa.int32()),
        "grid_cols": pa.array([int(r.grid[1]) for r in rows], pa.int32()),
        "global_rows": pa.array([int(r.global_grid[0]) for r in rows], pa.int32()),
        "global_cols": pa.array([int(r.global_grid[1]) for r in rows], pa.int32()),
        "n_visual": pa.array([int(r.n_visual) for r in rows], pa.int32()),
        "n_kept": pa.array(counts_np.astype(np.int32), pa.int32()),
        "keep_ratio": pa.array([float(r.keep_ratio) for r in rows], pa.float64()),
        "method": pa.array([str(r.method) for r in rows], pa.string()),
        "mode": pa.array([str(r.mode) for r in rows], pa.string()),
        "bundle_fingerprint": pa.array([bundle_fingerprint] * n, pa.string()),
        "positions": positions,
        "scores": scores,
        "cover": cover,
        "vectors": vectors,
        "indexed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.Table.from_pydict(columns, schema=page_schema(dim, vector_dtype))


def failure_table(latest: dict[tuple[str, int], str], now: _dt.datetime) -> pa.Table:
    """``{(path, page): reason}`` as a table of :func:`failure_schema`, sorted by (path, page)."""
    keys = sorted(latest)
    return pa.Table.from_pydict({
        "path": pa.array([k[0] for k in keys], pa.string()),
        "page": pa.array([k[1] for k in keys], pa.int32()),
        "reason": pa.array([latest[k] for k in keys], pa.string()),
        "failed_at": pa.array([now] * len(keys), pa.timestamp("us", tz="UTC")),
    }, schema=failure_schema())
