"""The eval's page encodings on disk, so an interrupted ``sapindex eval`` resumes where it stopped.

Encoding is the slow part of an eval, and every method and ratio is computed from one encoding
per page. So each encoded batch is saved as soon as it exists: ``OUT/cache/chunk-NNNNNN.npz``,
written to a temporary name and renamed (a killed run leaves whole chunks only). ``meta.json``
holds the key the chunks belong to, the bundle and dataset fingerprints; when either changes,
the old chunks are deleted.

A chunk holds, for its pages in order: ``ids``, ``offsets`` (page ``i``'s tokens are rows
``offsets[i]:offsets[i + 1]``), ``embeddings``, ``centrality``, ``eos`` and the token layout
(``grids``, ``global_grids`` with ``(0, 0)`` for none, ``orders``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sapindex.formats import read_json, write_json_atomic
from sapindex.runtime.encoder import PageTokens
from sapindex.runtime.layout import TokenLayout

if TYPE_CHECKING:
    from sapindex.eval.datasets import EvalDataset
    from sapindex.runtime.bundle import Bundle

__all__ = ["EncodingCache"]


class EncodingCache:
    """Page encodings on disk, one ``.npz`` per encoded batch, keyed by page id (only the
    ``fingerprint`` of ``bundle`` and ``dataset`` is read)."""

    def __init__(self, directory: Path, bundle: Bundle, dataset: EvalDataset):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        key = {"bundle": bundle.fingerprint, "dataset": dataset.fingerprint}
        meta = self.dir / "meta.json"
        if meta.exists() and read_json(meta, "eval encoding cache key") != key:
            for stale in self.dir.glob("chunk-*.npz"):
                stale.unlink()
        write_json_atomic(meta, key)

    def load(self) -> dict[str, PageTokens]:
        pages: dict[str, PageTokens] = {}
        for chunk in sorted(self.dir.glob("chunk-*.npz")):
            with np.load(chunk, allow_pickle=False) as data:
                offsets = data["offsets"]
                for i, page_id in enumerate(data["ids"]):
                    a, b = offsets[i], offsets[i + 1]
                    pages[str(page_id)] = PageTokens(data["embeddings"][a:b], data["centrality"][a:b],
                                                     _cached_layout(data, i, a, b), data["eos"][a:b])
        return pages

    def save(self, ids: list[str], pages: list[PageTokens]) -> None:
        offsets = np.concatenate([[0], np.cumsum([p.n_visual for p in pages])])
        n = len(list(self.dir.glob("chunk-*.npz")))
        tmp = self.dir / f".chunk-{n:06d}.tmp.npz"
        np.savez(tmp, ids=np.array(ids), offsets=offsets,
                 embeddings=np.concatenate([p.embeddings for p in pages]).astype(np.float32),
                 centrality=np.concatenate([p.centrality for p in pages]).astype(np.float32),
                 eos=np.concatenate([p.eos for p in pages]).astype(np.float32),
                 grids=np.array([p.grid for p in pages], dtype=np.int64),
                 global_grids=np.array([p.layout.global_grid or (0, 0) for p in pages], dtype=np.int64),
                 orders=np.concatenate([p.layout.order for p in pages]))
        os.replace(tmp, self.dir / f"chunk-{n:06d}.npz")


def _cached_layout(data, i: int, a: int, b: int) -> TokenLayout:
    """Page ``i``'s token layout from a cache chunk; chunks written before layouts were cached
    (grid families only then) have no ``orders``: raster order."""
    rows, cols = (int(x) for x in data["grids"][i])
    if "orders" not in data.files:
        return TokenLayout.raster(rows, cols)
    global_grid = tuple(int(x) for x in data["global_grids"][i])
    return TokenLayout((rows, cols), global_grid if global_grid != (0, 0) else None, data["orders"][a:b])
