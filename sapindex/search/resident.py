"""The kept vectors of an index held in memory, refreshed from new index versions without a reload.

Why resident: ``Index.search`` reads every stored vector from disk per query, which is right for
one query and wrong for a service answering all day (at 10^5 pages the read alone takes seconds).
A :class:`Snapshot` holds every page's kept vectors as float32 (4 bytes a value: ~3.8 GB for 10^5
pages of 74 vectors) in blocks of at most :data:`BLOCK_PAGES` pages. float32 and not the stored
float16, because numpy converts float16 at ~2 GB/s on a 2-core machine: converting at query time
cost more than the matmul itself (RESULTS.md "Two-stage search", profiled with the first stage before).

Refresh: a snapshot records the pages table version it was read at. When the table has moved on,
:func:`refresh` reads the newer version pinned (one consistent state however fast a writer
commits): if it only added pages (the row count grew by exactly the rows indexed after the
snapshot's newest one), the new rows are appended as a block; anything else (a changed file
replaced, a path removed, an index pruned or compacted into place) reloads the whole snapshot.
Snapshots are immutable, so a search running while another thread refreshes keeps its own.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sapindex.index.store import Index
from sapindex.index.store._arrow import vectors_from_list
from sapindex.sap import maxsim_segments
from sapindex.search import filters
from sapindex.search.scan import ONE_QUERY

BLOCK_PAGES = 2048  # pages per resident block: ~150k vectors, a [query tokens, 150k] temporary when scored
_COLUMNS = ["path", "content_hash", "page", "vectors", "indexed_at"]


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the rows ``starts[j]:ends[j]`` of every range ``j`` one after another, each range's first
    position in them): how a page's vectors are gathered by its row range."""
    lengths = ends - starts
    first = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum())), first


@dataclass(frozen=True)
class Block:
    """Pages stored one after another: page ``j`` owns ``vectors[starts[j]:starts[j + 1]]``."""

    paths: np.ndarray  # [P] object (str)
    hashes: np.ndarray  # [P] object (str)
    pages: np.ndarray  # [P] int32, 1-based
    vectors: np.ndarray  # [n, dim] float32
    starts: np.ndarray  # [P] int64, first vector of each page

    @property
    def n_pages(self) -> int:
        return len(self.pages)

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        if len(blocks) == 1:
            return blocks[0]
        offsets = np.cumsum([0] + [len(b.vectors) for b in blocks[:-1]])
        return Block(np.concatenate([b.paths for b in blocks]), np.concatenate([b.hashes for b in blocks]),
                     np.concatenate([b.pages for b in blocks]), np.concatenate([b.vectors for b in blocks]),
                     np.concatenate([b.starts + o for b, o in zip(blocks, offsets, strict=True)]))

    def page_vectors(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the vectors of pages ``local`` one after another, each page's first row) for rescoring."""
        ends = np.append(self.starts[1:], len(self.vectors))
        rows, first = concat_ranges(self.starts[local], ends[local])
        return self.vectors[rows], first


@dataclass(frozen=True)
class Snapshot:
    """Every page of one index version, in blocks; immutable."""

    version: int
    blocks: tuple[Block, ...] = ()
    newest: _dt.datetime | None = None  # the latest indexed_at held
    n_pages: int = 0
    n_vectors: int = 0
    loaded_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))  # last full read

    @property
    def page_base(self) -> np.ndarray:
        """``[blocks + 1]`` index of each block's first page in snapshot order (then the total)."""
        return np.cumsum([0] + [b.n_pages for b in self.blocks]).astype(np.int64)

    def score_pages(self, q: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query ``[M, dim]`` against the pages at snapshot indices ``pages``
        (ascending); aligned with ``pages``."""
        base = self.page_base
        which = np.searchsorted(base, pages, side="right") - 1
        out = np.empty(len(pages), np.float32)
        for b in np.unique(which):
            sel = which == b
            vecs, first = self.blocks[b].page_vectors(pages[sel] - base[b])
            out[sel] = maxsim_segments(q, ONE_QUERY, vecs, first)[0]
        return out

    def names(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(paths, page numbers) of the pages at snapshot indices ``pages``."""
        base = self.page_base
        which = np.searchsorted(base, pages, side="right") - 1
        paths = np.empty(len(pages), object)
        numbers = np.empty(len(pages), np.int32)
        for b in np.unique(which):
            sel = which == b
            local = pages[sel] - base[b]
            paths[sel], numbers[sel] = self.blocks[b].paths[local], self.blocks[b].pages[local]
        return paths, numbers

    def scan(self, queries: np.ndarray, query_starts: np.ndarray, progress=None):
        """Yield ``(first page, paths, page numbers, scores [Q, pages])`` for each block: exact
        MaxSim of the queries (stacked ``[rows, dim]`` float32, query ``i`` from row
        ``query_starts[i]``) against its pages."""
        done = 0
        for first, block in zip(self.page_base.tolist(), self.blocks, strict=False):  # page_base ends with the total
            yield first, block.paths, block.pages, maxsim_segments(queries, query_starts, block.vectors, block.starts)
            done += len(block.vectors)
            if progress:
                progress(done, self.n_vectors)

    def allowed(self, keys: pa.Table | None, path_prefix: str | None) -> np.ndarray | None:
        """Which pages pass a filter: (content_hash, page) in ``keys``, path starting with
        ``path_prefix`` (None: no filter)."""
        if keys is None and not path_prefix:
            return None
        if not self.blocks:
            return np.zeros(0, bool)
        table = pa.table({"content_hash": np.concatenate([b.hashes for b in self.blocks]).tolist(),
                          "page": np.concatenate([b.pages for b in self.blocks]),
                          "path": np.concatenate([b.paths for b in self.blocks]).tolist()})
        return filters.mask(table, keys, path_prefix)


def _after(t: _dt.datetime | None) -> str | None:
    """SQL: rows indexed after ``t`` (None: every row)."""
    return None if t is None else f"indexed_at > timestamp '{t.isoformat().replace('+00:00', '')}'"


def _read(index: Index, version: int, where: str | None) -> tuple[list[Block], _dt.datetime | None]:
    blocks, newest = [], None
    for batch in index.scan_pages(_COLUMNS, where=where, version=version, chunk_pages=BLOCK_PAGES):
        if batch.num_rows == 0:
            continue
        vecs, offsets = vectors_from_list(batch.column("vectors"), index.dim)
        block = Block(np.asarray(batch.column("path").to_pylist(), dtype=object),
                      np.asarray(batch.column("content_hash").to_pylist(), dtype=object),
                      batch.column("page").to_numpy().astype(np.int32), np.ascontiguousarray(vecs), offsets[:-1].copy())
        blocks.append(block)
        t = max(batch.column("indexed_at").to_pylist())
        newest = t if newest is None or t > newest else newest
    return blocks, newest


def count_rows(index: Index, version: int, where: str | None = None) -> int:
    """Pages of ``version`` (matching ``where``)."""
    return sum(b.num_rows for b in index.scan_pages(["page"], where=where, version=version, chunk_pages=65536))


def _snapshot(version: int, blocks: list[Block], newest, loaded_at: _dt.datetime | None = None) -> Snapshot:
    extra = {"loaded_at": loaded_at} if loaded_at else {}
    return Snapshot(version, tuple(blocks), newest, sum(b.n_pages for b in blocks),
                    sum(len(b.vectors) for b in blocks), **extra)


def available_bytes() -> int | None:
    """Memory the kernel says a new allocation can use (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def kept_bytes(index: Index, since: _dt.datetime | None = None) -> int:
    """Bytes the kept vectors (indexed after ``since``) take resident as float32."""
    need = sum(int(b.column("n_kept").to_numpy().sum())
               for b in index.scan_pages(["n_kept"], where=_after(since), chunk_pages=65536))
    return need * 4 * index.dim


def fits(index: Index, since: _dt.datetime | None = None) -> bool:
    """Whether the kept vectors (indexed after ``since``) fit in 90 % of free memory as float32."""
    free = available_bytes()
    return free is None or kept_bytes(index, since) <= 0.9 * free


def load(index: Index, since: _dt.datetime | None = None) -> Snapshot:
    """Every page of the index's current version (indexed after ``since``, when given)."""
    version = index.version
    return _snapshot(version, *_read(index, version, _after(since)))


def refresh(index: Index, snap: Snapshot, since: _dt.datetime | None = None) -> Snapshot:
    """``snap`` if the index has not changed since, else a snapshot of its current version
    (appending the pages a writer added, or reloading after anything else); ``since`` as in :func:`load`."""
    version = index.version
    if version == snap.version:
        return snap
    if snap.newest is None:
        return _snapshot(version, *_read(index, version, _after(since)))
    added, newest = _read(index, version, _after(snap.newest))
    n_added = sum(b.n_pages for b in added)
    if count_rows(index, version, _after(since)) != snap.n_pages + n_added:  # rows were deleted too: reload
        return _snapshot(version, *_read(index, version, _after(since)))
    blocks = list(snap.blocks)
    if added and blocks and blocks[-1].n_pages + n_added <= BLOCK_PAGES:
        blocks[-1] = Block.concat([blocks[-1], *added])  # keep many one-page commits from making many blocks
    else:
        blocks.extend(added)
    return _snapshot(version, blocks, newest or snap.newest, snap.loaded_at)
