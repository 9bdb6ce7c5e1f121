"""A picture of what SAP kept: the page with its kept visual tokens outlined and the rest dimmed.

Why: pruning is only trustworthy if a user can see where the surviving vectors sit (on titles,
table cells, chart labels, or on blank margins). The index stores each page's visual grid
(rows x cols of visual tokens) and the row-major positions of the kept tokens; that is all the
overlay needs besides the page image.

Idefics3 pages also encode a downscaled copy of the whole page (the global tile): its tokens
follow the page grid's in the stored positions (``k >= rows*cols``, cells of ``global_grid``).
They are not drawn on the page, since each covers a region that the page grid already tiles and
outlining both would hide which of the two kept a spot; :func:`global_cells` lists them, and
:func:`match_overlay` (a search hit explained) draws the global tile as a panel of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["kept_patches_overlay", "global_cells", "match_overlay", "write_overlay"]


def global_cells(grid: tuple[int, int], positions: Sequence[int],
                 global_grid: tuple[int, int] | None) -> list[tuple[int, int]]:
    """(row, col) in ``global_grid`` of every kept global-tile token (positions ``>= rows*cols``)."""
    rows, cols = grid
    extra = np.asarray(positions, dtype=np.int64)
    extra = extra[extra >= rows * cols] - rows * cols
    if extra.size == 0:
        return []
    g_rows, g_cols = global_grid or (0, 0)
    if g_rows < 1 or g_cols < 1 or extra.max() >= g_rows * g_cols:
        raise ValueError(f"positions up to {int(extra.max()) + rows * cols} exceed grid {grid} "
                         f"and global grid {global_grid}")
    return [(int(k) // g_cols, int(k) % g_cols) for k in extra]


def _scaled(page: Image.Image, max_side: int) -> Image.Image:
    image = page.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def _draw_grid(image: Image.Image, rows: int, cols: int, kept: np.ndarray,
               weight: np.ndarray | None = None) -> Image.Image:
    """``image`` with the cells ``kept`` (bool ``[rows*cols]``) outlined in red and the others
    dimmed; cells with a positive ``weight`` are filled in blue, more opaque the larger it is."""
    w, h = image.size
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    ys = np.linspace(0, h, rows + 1).round().astype(int)

    def box(p):
        r, c = divmod(int(p), cols)
        return [xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1]

    shade = Image.new("L", image.size, 150)  # 150/255 of the dimming layer shows through off-cells
    draw_shade = ImageDraw.Draw(shade)
    for p in np.flatnonzero(kept):
        draw_shade.rectangle(box(p), fill=0)
    out = Image.composite(Image.new("RGB", image.size, (255, 255, 255)), image, shade)
    if weight is not None and np.any(weight > 0):
        alpha = Image.new("L", image.size, 0)
        draw_alpha = ImageDraw.Draw(alpha)
        for p in np.flatnonzero(weight > 0):
            draw_alpha.rectangle(box(p), fill=int(40 + 160 * weight[p] / weight.max()))
        out = Image.composite(Image.new("RGB", image.size, (30, 90, 230)), out, alpha)
    draw = ImageDraw.Draw(out)
    for p in np.flatnonzero(kept):
        draw.rectangle(box(p), outline=(220, 30, 30), width=2)
    return out


def kept_patches_overlay(page: Image.Image, grid: tuple[int, int], positions: Sequence[int],
                         max_side: int = 1000, global_grid: tuple[int, int] | None = None) -> Image.Image:
    """``page`` (scaled to at most ``max_side``) with kept cells outlined in red, others dimmed.

    ``grid`` is (rows, cols) of visual tokens covering the whole page; ``positions`` are the kept
    tokens' row-major indices in that grid, then (``>= rows*cols``) global-tile tokens of
    ``global_grid``, which are checked but not drawn (module doc).
    """
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    positions = np.asarray(positions, dtype=np.int64)
    global_cells(grid, positions, global_grid)  # refuses positions beyond both grids
    kept = np.zeros(rows * cols, dtype=bool)
    kept[positions[positions < rows * cols]] = True
    return _draw_grid(_scaled(page, max_side), rows, cols, kept)


def match_overlay(page: Image.Image, grid: tuple[int, int], positions: Sequence[int], weights: Sequence[float],
                  global_grid: tuple[int, int] | None = None, max_side: int = 1000) -> Image.Image:
    """Why a page matched a query: kept cells outlined, the cells that query tokens matched filled
    by ``weights`` (one per kept position: the MaxSim contributions it received). An Idefics3
    global tile is drawn as a second panel to the right, the whole page on its own coarser grid."""
    rows, cols = grid
    positions = np.asarray(positions, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    global_cells(grid, positions, global_grid)
    local = positions < rows * cols
    kept = np.zeros(rows * cols, bool)
    kept[positions[local]] = True
    weight = np.zeros(rows * cols)
    weight[positions[local]] = np.maximum(weights[local], 0)
    top = max(weights.max(initial=0.0), 1e-12)
    panels = [_draw_grid(_scaled(page, max_side), rows, cols, kept, weight / top)]
    g_rows, g_cols = global_grid or (0, 0)
    if g_rows and g_cols:
        n = g_rows * g_cols
        g_kept = np.zeros(n, bool)
        g_kept[positions[~local] - rows * cols] = True
        g_weight = np.zeros(n)
        g_weight[positions[~local] - rows * cols] = np.maximum(weights[~local], 0)
        panels.append(_draw_grid(_scaled(page, max_side // 2), g_rows, g_cols, g_kept, g_weight / top))
    if len(panels) == 1:
        return panels[0]
    out = Image.new("RGB", (sum(p.width for p in panels) + 12, max(p.height for p in panels)), (255, 255, 255))
    out.paste(panels[0], (0, 0))
    out.paste(panels[1], (panels[0].width + 12, 0))
    return out


def write_overlay(path: str | Path, page: Image.Image, grid: tuple[int, int], positions: Sequence[int],
                  global_grid: tuple[int, int] | None = None) -> Path:
    """Write :func:`kept_patches_overlay` as PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept_patches_overlay(page, grid, positions, global_grid=global_grid).save(path)
    return path
