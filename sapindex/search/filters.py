"""Which pages pass a search's filters (``--where``, ``--path-prefix``), computed by Arrow.

Why Arrow: at 10^6 pages a Python loop over page keys takes a second per filtered query; a hash
join of the page table with the keys that ``--where`` selected, and ``starts_with`` over the
paths, take milliseconds. The keys come from the index (LanceDB evaluates the SQL); the page
tables are whatever a search view holds (the first stage's mapped ``pages.arrow``, a resident
snapshot's columns, a streamed batch).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEY_SCHEMA = pa.schema([("content_hash", pa.string()), ("page", pa.int32())])


def rows_in(table: pa.Table, keys: pa.Table) -> np.ndarray:
    """Row numbers of ``table`` whose (content_hash, page) is in ``keys``."""
    if keys.num_rows == 0 or table.num_rows == 0:
        return np.zeros(0, np.int64)
    numbered = table.select(["content_hash", "page"]).cast(KEY_SCHEMA).append_column(
        "_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return numbered.join(keys.select(["content_hash", "page"]).cast(KEY_SCHEMA), ["content_hash", "page"],
                         join_type="inner").column("_row").to_numpy()


def mask(table: pa.Table, keys: pa.Table | None, path_prefix: str | None) -> np.ndarray:
    """bool ``[rows]``: the rows of ``table`` (content_hash, page, path) that pass both filters."""
    ok = np.ones(table.num_rows, bool)
    if path_prefix:
        ok &= pc.starts_with(table.column("path"), path_prefix).to_numpy(zero_copy_only=False)
    if keys is not None:
        inside = np.zeros(table.num_rows, bool)
        inside[rows_in(table, keys)] = True
        ok &= inside
    return ok
