"""The index: an embedded LanceDB database directory holding one row per page (torch-free).

The on-disk layout and the rules for identity, resume, changed files and failures are documented
in :mod:`sapindex.index.store.schema`, with the schemas they describe. One job per module:
``schema`` (file names, table schemas, the records in and out), ``index`` (the :class:`Index`:
opening and reads), ``writer`` (the :class:`IndexWriter`: the lock, the caches, writes),
``_sql`` (filter strings) and ``_arrow`` (rows to Arrow tables and back). Searching is
:mod:`sapindex.search`'s (the exact scan: :func:`sapindex.search.scan.search_index`).
"""

from __future__ import annotations

from sapindex.index.store.index import Index
from sapindex.index.store.schema import (
                                         FORMAT,
                                         FORMAT_VERSION,
                                         META_FILE,
                                         Hit,
                                         IndexStats,
                                         PageRow,
                                         failure_schema,
                                         page_schema,
)
from sapindex.index.store.writer import IndexWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "Hit",
    "Index",
    "IndexStats",
    "IndexWriter",
    "PageRow",
    "failure_schema",
    "page_schema",
]
