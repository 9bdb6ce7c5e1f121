"""The kept vectors of an index held in memory, refreshed from new index versions without a reload.

Why resident: ``Index.search`` reads every stored vector from disk per query, which is right for
one query and wrong for a service answering all day (at 10^5 pages the read alone takes seconds).
A :class:`Snapshot` holds every page's kept vectors as float32 (4 bytes a value: ~3.8 GB for 10^5
pages of 74 vectors) in blocks of at most :data:`BLOCK_PAGES` pages. float32 and not the stored
float16, because numpy converts float16 at ~2 GB/s on a 2-core machine: converting at query time
cost more than the matmul itself (bench/two_stage.py profile, RESULTS.md "Two-stage search").

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
from typing import Callable

import numpy as np

from sapindex.errors import SapIndexError
from sapindex.index.store import Index
from sapindex.index.store._arrow import vectors_from_list
from sapindex.index.store.search import ONE_QUERY
from sapindex.sap import maxsim_segments

BLOCK_PAGES = 2048  # pages per resident block: ~150k vectors, a [query tokens, 150k] temporary when scored
_COLUMNS = ["path", "content_hash", "page", "vectors", "indexed_at"]


@dataclass(frozen=True)
class Block:
    """Pages stored one after another: page ``j`` owns ``vectors[starts[j]:starts[j + 1]]``."""

    paths: np.ndarray  # [P] object (str)
    hashes: np.ndarray  # [P] object (str)
    pages: np.ndarray  # [P] int32, 1-based
    vectors: np.ndarray  # [n, dim] float32
    starts: np.ndarray  # [P] int64, first vector of each page
    codes: np.ndarray | None = None  # [n] uint16 first-stage centroid of each vector (None: no first stage)
    reduced: np.ndarray | None = None  # [n, d] the vectors on the first stage's principal axes

    @property
    def n_pages(self) -> int:
        return len(self.pages)

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        if len(blocks) == 1:
            return blocks[0]
        offsets = np.cumsum([0] + [len(b.vectors) for b in blocks[:-1]])
        codes = None if any(b.codes is None for b in blocks) else np.concatenate([b.codes for b in blocks])
        reduced = None if any(b.reduced is None for b in blocks) else np.concatenate([b.reduced for b in blocks])
        return Block(np.concatenate([b.paths for b in blocks]), np.concatenate([b.hashes for b in blocks]),
                     np.concatenate([b.pages for b in blocks]), np.concatenate([b.vectors for b in blocks]),
                     np.concatenate([b.starts + o for b, o in zip(blocks, offsets)]), codes, reduced)

    def page_vectors(self, local: np.ndarray, reduced: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(the vectors of pages ``local`` one after another, each page's first row) for rescoring;
        ``reduced``: their projections instead."""
        ends = np.append(self.starts[1:], len(self.vectors))
        lengths = ends[local] - self.starts[local]
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rows = np.repeat(self.starts[local] - first, lengths) + np.arange(lengths.sum())
        return (self.reduced if reduced else self.vectors)[rows], first


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

    def score_pages(self, q: np.ndarray, pages: np.ndarray, reduced: bool = False) -> np.ndarray:
        """Exact MaxSim of one query ``[M, d]`` against the pages at snapshot indices ``pages``
        (ascending), over their vectors or (``reduced``) their projections; aligned with ``pages``."""
        base = self.page_base
        which = np.searchsorted(base, pages, side="right") - 1
        out = np.empty(len(pages), np.float32)
        for b in np.unique(which):
            sel = which == b
            vecs, first = self.blocks[b].page_vectors(pages[sel] - base[b], reduced)
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

    def scores(self, queries: np.ndarray, query_starts: np.ndarray):
        """Yield ``(block, scores [Q, P])`` for each block: exact MaxSim of the queries (stacked
        ``[rows, dim]`` float32, query ``i`` from row ``query_starts[i]``) against its pages."""
        for block in self.blocks:
            yield block, maxsim_segments(queries, query_starts, block.vectors, block.starts)


Coder = Callable[[Block], Block]  # a block with its first-stage codes and projections


def _read(index: Index, version: int, where: str | None,
          coder: Coder | None) -> tuple[list[Block], _dt.datetime | None]:
    blocks, newest = [], None
    for batch in index.scan_pages(_COLUMNS, where=where, version=version, chunk_pages=BLOCK_PAGES):
        if batch.num_rows == 0:
            continue
        vecs, offsets = vectors_from_list(batch.column("vectors"), index.dim)
        block = Block(np.asarray(batch.column("path").to_pylist(), dtype=object),
                      np.asarray(batch.column("content_hash").to_pylist(), dtype=object),
                      batch.column("page").to_numpy().astype(np.int32), np.ascontiguousarray(vecs), offsets[:-1].copy())
        blocks.append(coder(block) if coder else block)
        t = max(batch.column("indexed_at").to_pylist())
        newest = t if newest is None or t > newest else newest
    return blocks, newest


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


def check_fits(index: Index) -> None:
    """SapIndexError when the index's kept vectors (float32) would not fit in 90 % of free memory."""
    need = sum(int(b.column("n_kept").to_numpy().sum()) for b in index.scan_pages(["n_kept"], chunk_pages=65536))
    need *= 4 * index.dim
    free = available_bytes()
    if free is not None and need > 0.9 * free:
        raise SapIndexError(f"{index.path}: searching it keeps its kept vectors in memory ({need / 1e9:.1f} GB as "
                            f"float32), but only {free / 1e9:.1f} GB is free; use a machine with more memory or "
                            "a smaller index (sapindex prune)")


def load(index: Index, coder: Coder | None = None) -> Snapshot:
    """Every page of the index's current version (with first-stage codes when given a ``coder``)."""
    check_fits(index)
    version = index.version
    return _snapshot(version, *_read(index, version, None, coder))


def refresh(index: Index, snap: Snapshot, coder: Coder | None = None) -> Snapshot:
    """``snap`` if the index has not changed since, else a snapshot of its current version
    (appending the pages a writer added, or reloading after anything else)."""
    version = index.version
    if version == snap.version:
        return snap
    if snap.newest is None:
        return _snapshot(version, *_read(index, version, None, coder))
    stamp = snap.newest.isoformat().replace("+00:00", "")
    added, newest = _read(index, version, f"indexed_at > timestamp '{stamp}'", coder)
    n_added = sum(b.n_pages for b in added)
    total = sum(b.num_rows for b in index.scan_pages(["page"], version=version, chunk_pages=65536))
    if total != snap.n_pages + n_added:  # rows were deleted too: reload
        return _snapshot(version, *_read(index, version, None, coder))
    blocks = list(snap.blocks)
    if added and blocks and blocks[-1].n_pages + n_added <= BLOCK_PAGES:
        blocks[-1] = Block.concat([blocks[-1], *added])  # keep many one-page commits from making many blocks
    else:
        blocks.extend(added)
    return _snapshot(version, blocks, newest or snap.newest, snap.loaded_at)
