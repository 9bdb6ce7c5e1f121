"""A picture of what SAP kept: the page with its kept visual tokens outlined and the rest dimmed.

Why: pruning is only trustworthy if a user can see where the surviving vectors sit (on titles,
table cells, chart labels, or on blank margins). The index stores each page's visual grid
(rows x cols of visual tokens) and the row-major positions of the kept tokens; that is all the
overlay needs besides the page image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["kept_patches_overlay", "write_overlay"]


def kept_patches_overlay(page: Image.Image, grid: tuple[int, int], positions: Sequence[int],
                         max_side: int = 1000) -> Image.Image:
    """``page`` (scaled to at most ``max_side``) with kept cells outlined in red, others dimmed.

    ``grid`` is (rows, cols) of visual tokens covering the whole page; ``positions`` are the kept
    tokens' row-major indices in that grid.
    """
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    kept = np.zeros(rows * cols, dtype=bool)
    kept[np.asarray(positions, dtype=np.int64)] = True
    image = page.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    w, h = image.size
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    shade = Image.new("L", image.size, 150)  # 150/255 of the dimming layer shows through off-cells
    draw_shade = ImageDraw.Draw(shade)
    for p in np.flatnonzero(kept):
        r, c = divmod(int(p), cols)
        draw_shade.rectangle([xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1], fill=0)
    out = Image.composite(Image.new("RGB", image.size, (255, 255, 255)), image, shade)
    draw = ImageDraw.Draw(out)
    for p in np.flatnonzero(kept):
        r, c = divmod(int(p), cols)
        draw.rectangle([xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1], outline=(220, 30, 30), width=2)
    return out


def write_overlay(path: str | Path, page: Image.Image, grid: tuple[int, int], positions: Sequence[int]) -> Path:
    """Write :func:`kept_patches_overlay` as PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept_patches_overlay(page, grid, positions).save(path)
    return path
