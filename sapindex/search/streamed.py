"""An index searched by reading it from disk at every search: exact, for an index whose kept
vectors do not fit in memory and that has no first stage.

Why: ``search --exact`` (and a searcher of an index larger than RAM before ``optimize``) must not
refuse an index it cannot hold. A :class:`Streamed` view pins one index version and streams its
pages in chunks through the same MaxSim kernel as the resident search, so memory stays bounded
by a chunk; each search costs one pass over the table (the progress bar says how far it is).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sapindex.index.store import Index
from sapindex.index.store._arrow import vectors_from_list
from sapindex.search import filters, kernel

CHUNK_PAGES = 4096


@dataclass(frozen=True)
class Streamed:
    """One index version, read a chunk at a time at each scan."""

    index: Index
    version: int
    n_pages: int
    n_vectors: int
    loaded_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))

    @staticmethod
    def open(index: Index) -> Streamed:
        version = index.version
        pages = vectors = 0
        for b in index.scan_pages(["n_kept"], version=version, chunk_pages=65536):
            pages += b.num_rows
            vectors += int(b.column("n_kept").to_numpy().sum())
        return Streamed(index, version, pages, vectors)

    def scan(self, queries: np.ndarray, query_starts: np.ndarray, progress=None) -> Iterator[tuple]:
        """Yield ``(first page, paths, page numbers, scores [Q, pages])`` chunk by chunk."""
        first = done = 0
        for batch in self.index.scan_pages(["path", "page", "vectors"], version=self.version,
                                           chunk_pages=CHUNK_PAGES):
            if batch.num_rows == 0:
                continue
            vecs, offsets = vectors_from_list(batch.column("vectors"), self.index.dim, dtype=None)
            yield first, batch.column("path"), batch.column("page"), kernel.maxsim(queries, query_starts, vecs,
                                                                                   offsets[:-1], threads=0)
            first += batch.num_rows
            done += len(vecs)
            if progress:
                progress(done, self.n_vectors)

    def allowed(self, keys: pa.Table | None, path_prefix: str | None) -> np.ndarray | None:
        """Which pages, in scan order, pass the filters (None: no filter)."""
        if keys is None and not path_prefix:
            return None
        table = pa.Table.from_batches(list(self.index.scan_pages(["content_hash", "page", "path"],
                                                                 version=self.version, chunk_pages=65536)))
        return filters.mask(table, keys, path_prefix) if table.num_rows else np.zeros(0, bool)
