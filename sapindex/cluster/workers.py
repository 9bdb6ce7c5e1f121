"""What runs on the cluster's workers: rendering tasks and the encoder actors (torch-free).

Rows cross the object store as plain columns: a page image as raw RGB bytes with its size, the
kept vectors, positions and scores as raw little-endian bytes. Ray Data stores such rows in Arrow
without guessing tensor types, and the driver rebuilds exactly the arrays a local run stores.
A page that cannot be used travels as a row with ``error`` set (``page`` 0: the whole file), so
failures reach the driver's failure table through the same stream as pages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sapindex.errors import SapIndexError
from sapindex.index.documents import render_listed
from sapindex.index.records import Failure, FileInfo, Page
from sapindex.runtime.encoder import PrunedPage
from sapindex.runtime.options import DEFAULT_DPI, IndexOptions

# what a rendered page row carries besides its image
_PAGE_FIELDS = ("path", "content_hash", "page", "n_pages", "width", "height")


def _failure_row(failure: Failure, content_hash: str) -> dict:
    return {"path": failure.path, "content_hash": content_hash, "page": failure.page or 0, "n_pages": 0,
            "width": 0, "height": 0, "image": b"", "error": failure.reason}


def render_chunk(chunk: dict, dpi: float = DEFAULT_DPI) -> list[dict]:
    """Ray Data ``flat_map``: a chunk (the file as listed, and ``pages``) as one row per page."""
    listed = FileInfo(**{name: chunk[name] for name in FileInfo.__dataclass_fields__})
    rows = []
    for item in render_listed(listed, [int(p) for p in chunk["pages"]], dpi=dpi):
        if isinstance(item, Failure):
            rows.append(_failure_row(item, chunk["content_hash"]))
        else:
            assert item.image is not None  # render_listed renders every page it yields
            rows.append({"path": item.path, "content_hash": item.content_hash, "page": item.page,
                         "n_pages": item.n_pages, "width": item.size[0], "height": item.size[1],
                         "image": item.image.tobytes(), "error": ""})
    return rows


class PageEncoder:
    """Ray Data actor: one ONNX Runtime session set (the bundle) per actor, fed batches of rendered
    pages; returns each page's SAP-kept vectors, or its failure.

    The bundle is opened by path on the worker's node and must be the bundle the driver opened
    (same fingerprint): a node with another copy at that path would otherwise write an index that
    mixes two models.
    """

    def __init__(self, bundle_path: str, fingerprint: str, options: IndexOptions):
        from sapindex.runtime.bundle import Bundle
        from sapindex.runtime.encoder import Encoder

        bundle = Bundle.open(bundle_path)
        if bundle.fingerprint != fingerprint:
            raise SapIndexError(f"{bundle_path}: this node's bundle is not the one the driver opened "
                                f"(fingerprint {bundle.fingerprint[:12]}, driver {fingerprint[:12]}); "
                                "copy the same bundle to every node")
        self.encoder = Encoder(bundle, device=options.device, threads=options.threads)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        out: list[dict[str, Any]] = []
        images, slots = [], []
        for i in range(len(batch["path"])):
            row = {key: batch[key][i] for key in (*_PAGE_FIELDS, "error")}
            if not row["error"]:
                try:  # e.g. a 1x500 strip, refused as a local run refuses it
                    self.encoder.preprocessor.visual_grid(int(row["height"]), int(row["width"]))
                except SapIndexError as exc:
                    row["error"] = str(exc)
            if not row["error"]:
                size = (int(row["width"]), int(row["height"]))
                images.append(Image.frombytes("RGB", size, batch["image"][i]))
                slots.append(len(out))
            out.append(row)
        kept = self.encoder.encode_pages_pruned(images, self.options) if images else []
        for slot, page in zip(slots, kept, strict=True):
            out[slot].update(_pruned_columns(page))
        return {key: np.array([row.get(key, _EMPTY.get(key)) for row in out], dtype=object if key in _OBJECTS else None)
                for key in (*_PAGE_FIELDS, "error", *_EMPTY)}


_EMPTY = {"n_visual": 0, "grid_rows": 0, "grid_cols": 0, "global_rows": 0, "global_cols": 0,
          "positions": b"", "vectors": b"", "scores": b"", "cover": b""}
_OBJECTS = {"path", "content_hash", "error", "positions", "vectors", "scores", "cover"}


def _pruned_columns(kept: PrunedPage) -> dict:
    global_rows, global_cols = kept.global_grid or (0, 0)
    return {"n_visual": kept.n_visual, "grid_rows": kept.grid[0], "grid_cols": kept.grid[1],
            "global_rows": global_rows, "global_cols": global_cols,
            "positions": np.ascontiguousarray(kept.positions, "<i4").tobytes(),
            "vectors": np.ascontiguousarray(kept.vectors, "<f4").tobytes(),
            "scores": np.ascontiguousarray(kept.scores, "<f8").tobytes(),
            "cover": b"" if kept.cover is None else np.ascontiguousarray(kept.cover, "<i4").tobytes()}


def decode(batch: dict[str, np.ndarray]) -> tuple[list[tuple[Page, PrunedPage]], list[Failure]]:
    """An encoder output batch on the driver: the pages to store with what SAP kept, and failures."""
    pages, failures = [], []
    for i in range(len(batch["path"])):
        path, page = str(batch["path"][i]), int(batch["page"][i])
        if batch["error"][i]:
            failures.append(Failure(path, str(batch["error"][i]), page or None))
            continue
        positions = np.frombuffer(batch["positions"][i], "<i4").astype(np.int32)
        global_grid = (int(batch["global_rows"][i]), int(batch["global_cols"][i]))
        kept = PrunedPage(np.frombuffer(batch["vectors"][i], "<f4").reshape(len(positions), -1), positions,
                          (int(batch["grid_rows"][i]), int(batch["grid_cols"][i])), int(batch["n_visual"][i]),
                          global_grid if global_grid != (0, 0) else None,
                          np.frombuffer(batch["scores"][i], "<f8").astype(np.float64),
                          np.frombuffer(batch["cover"][i], "<i4").astype(np.int32) if batch["cover"][i] else None)
        meta = Page(path, page, str(batch["content_hash"][i]), None,
                    (int(batch["width"][i]), int(batch["height"][i])), int(batch["n_pages"][i]))
        pages.append((meta, kept))
    return pages, failures
