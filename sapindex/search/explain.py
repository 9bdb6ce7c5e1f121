"""Why a page matched a query: which kept patch each query token matched, and how much it gave.

MaxSim scores a page as ``sum_i max_j q_i . d_j``: each query token ``i`` picks its best kept
vector ``j``. :func:`explain` records those picks (the argmax per token) and their dot products,
so that the contributions add up to the hit's exact score; :func:`picture` draws them over the
page (``sapindex.search.overlay.match_overlay``): kept patches outlined, matched ones filled by the
sum of what they contributed (a merged vector over every cell it stands for), an Idefics3 global
tile as a panel of its own.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sapindex.errors import SapIndexError
from sapindex.index.documents import render_page
from sapindex.search.overlay import match_overlay


@dataclass(frozen=True)
class Explanation:
    query: str
    path: str
    page: int
    score: float  # the exact MaxSim, = contributions.sum()
    positions: np.ndarray  # [k] kept positions of the page
    matched: np.ndarray  # [M] index into positions of each query token's best kept vector
    contributions: np.ndarray  # [M] that vector's dot product with the token
    grid: tuple[int, int]
    global_grid: tuple[int, int] | None
    content_hash: str
    cover: np.ndarray | None = None  # [n_visual] the vector each token was merged into (merging methods)

    def weights(self) -> np.ndarray:
        """Per kept position, the sum of the contributions of the query tokens that matched it."""
        return np.bincount(self.matched, weights=self.contributions, minlength=len(self.positions))

    def to_dict(self) -> dict:
        w = self.weights()
        return {"query": self.query, "path": self.path, "page": self.page, "score": self.score,
                "grid": list(self.grid), "global_grid": list(self.global_grid) if self.global_grid else None,
                "matches": [{"position": int(self.positions[j]), "tokens": int(np.sum(self.matched == j)),
                             "contribution": float(w[j]), **self._cells(j)}
                            for j in np.argsort(-w) if np.any(self.matched == j)]}

    def _cells(self, j: int) -> dict:
        """For a merged vector, the positions of the tokens it stands for (its anchor among them)."""
        return {} if self.cover is None else {"cells": np.flatnonzero(self.cover == j).tolist()}


def explain(searcher, query: str, path: str, page: int) -> Explanation:
    """The MaxSim picks of ``query``'s tokens on the stored page ``(path, page)`` of the searcher's index.

    Args:
        searcher (Searcher): The searcher whose encoder encodes ``query`` and whose index holds the page.
        query: The query text.
        path: The page's file path as the index holds it (a hit's ``path``).
        page: The 1-based page number (a hit's ``page``).

    Returns:
        For each query token, the kept vector it matched and its dot product with it (they sum to
        the page's exact MaxSim), with the page's positions and grid; ``picture()`` draws it.

    Raises:
        SapIndexError: The query is refused (blank, too long).
        LookupError: The index does not hold that page.
    """
    q = searcher.encode([query], ["query"])[0]  # a refused query is named before the page is looked up
    return explain_encoded(searcher.index, query, q, path, page)


def explain_encoded(index, query: str, q: np.ndarray, path: str, page: int) -> Explanation:
    """:func:`explain` for a query already encoded (``q [M, dim]``), so several hits of one query
    share one text-graph run."""
    row = index.get(path, page)
    if row is None:
        raise LookupError(f"{path} page {page} is not in the index")
    sims = q @ row["vectors"].T  # [M, k]
    matched = sims.argmax(axis=1)
    contributions = sims[np.arange(len(q)), matched].astype(np.float64)
    g = (row["global_rows"], row["global_cols"])
    return Explanation(query, path, int(page), float(contributions.sum()), row["positions"], matched, contributions,
                       (row["grid_rows"], row["grid_cols"]), g if all(g) else None, row["content_hash"],
                       row.get("cover"))


def picture(ex: Explanation, dpi: float = 72.0) -> Image.Image:
    """The page with kept patches outlined and matched ones filled, over a caption of the score;
    SapIndexError when the file is gone or has changed since it was indexed."""
    image, info = render_page(ex.path, ex.page, dpi=dpi)
    if info.content_hash != ex.content_hash:
        raise SapIndexError(f"{ex.path}: changed since it was indexed (content hash differs); re-index it to explain")
    body = match_overlay(image, ex.grid, ex.positions, ex.weights(), ex.global_grid, cover=ex.cover)
    caption = f"{ex.path} page {ex.page}   MaxSim {ex.score:.3f}   query: {ex.query}"
    out = Image.new("RGB", (body.width, body.height + 24), (255, 255, 255))
    out.paste(body, (0, 24))
    ImageDraw.Draw(out).text((6, 6), caption[:160], fill=(0, 0, 0))
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
