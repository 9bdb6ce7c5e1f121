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

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["kept_patches_overlay", "cell_values", "global_cells", "match_overlay", "write_overlay"]


def global_cells(grid: tuple[int, int], positions: np.ndarray | Sequence[int],
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
               weight: np.ndarray | None = None, shown: np.ndarray | None = None) -> Image.Image:
    """``image`` with the cells ``kept`` (bool ``[rows*cols]``) outlined in red and the cells not
    ``shown`` (default: not kept) dimmed; cells with a positive ``weight`` are filled in blue, more
    opaque the larger it is."""
    w, h = image.size
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    ys = np.linspace(0, h, rows + 1).round().astype(int)

    def box(p):
        r, c = divmod(int(p), cols)
        return [xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1]

    shade = Image.new("L", image.size, 150)  # 150/255 of the dimming layer shows through off-cells
    draw_shade = ImageDraw.Draw(shade)
    for p in np.flatnonzero(kept if shown is None else shown):
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


def kept_patches_overlay(page: Image.Image, grid: tuple[int, int], positions: np.ndarray | Sequence[int],
                         max_side: int = 1000, global_grid: tuple[int, int] | None = None,
                         cover: np.ndarray | Sequence[int] | None = None) -> Image.Image:
    """``page`` (scaled to at most ``max_side``) with kept cells outlined in red, others dimmed.

    ``grid`` is (rows, cols) of visual tokens covering the whole page; ``positions`` are the kept
    tokens' row-major indices in that grid, then (``>= rows*cols``) global-tile tokens of
    ``global_grid``, which are checked but not drawn (module doc). ``cover`` (merging methods: the
    stored vector each token was merged into, -1 for none) leaves every covered cell undimmed, so
    the picture shows what the merged vectors stand for, with their anchors outlined.
    """
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    positions = np.asarray(positions, dtype=np.int64)
    global_cells(grid, positions, global_grid)  # refuses positions beyond both grids
    kept = np.zeros(rows * cols, dtype=bool)
    kept[positions[positions < rows * cols]] = True
    shown = None if cover is None else cell_values(np.ones(len(positions)), positions, cover)[: rows * cols] > 0
    return _draw_grid(_scaled(page, max_side), rows, cols, kept, shown=shown)


def cell_values(values: np.ndarray | Sequence[float], positions: np.ndarray | Sequence[int],
                cover: np.ndarray | Sequence[int] | None, n: int | None = None) -> np.ndarray:
    """Per visual token, the value of the stored vector that stands for it: ``values[i]`` (one per
    stored vector) at ``positions[i]``, or, with ``cover`` (merging methods), at every token merged
    into vector ``i``; 0 for the tokens no vector stands for. ``n``: the page's token count (the
    length of ``cover`` when given, else ``max(positions) + 1``)."""
    values = np.asarray(values, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    if values.shape != positions.shape:
        raise ValueError(f"one value per stored vector: {values.shape} values for {positions.shape} positions")
    if cover is None:
        out = np.zeros(int(n if n is not None else positions.max(initial=-1) + 1))
        out[positions] = values
        return out
    cover = np.asarray(cover, dtype=np.int64)
    if cover.min(initial=0) < -1 or cover.max(initial=-1) >= len(positions):
        raise ValueError(f"cover names vectors outside 0..{len(positions) - 1}")
    return np.where(cover >= 0, values[np.clip(cover, 0, None)], 0.0)


def match_overlay(page: Image.Image, grid: tuple[int, int], positions: np.ndarray | Sequence[int],
                  weights: np.ndarray | Sequence[float], global_grid: tuple[int, int] | None = None,
                  max_side: int = 1000, cover: np.ndarray | Sequence[int] | None = None) -> Image.Image:
    """Why a page matched a query: kept cells outlined, the cells that query tokens matched filled
    by ``weights`` (one per kept position: the MaxSim contributions it received). With ``cover``
    (merging methods) a matched vector fills every cell merged into it and covered cells are not
    dimmed. An Idefics3 global tile is drawn as a second panel to the right, the whole page on its
    own coarser grid."""
    rows, cols = grid
    positions = np.asarray(positions, dtype=np.int64)
    weights = np.maximum(np.asarray(weights, dtype=np.float64), 0)
    global_cells(grid, positions, global_grid)
    g_rows, g_cols = global_grid or (0, 0)
    n = rows * cols + g_rows * g_cols if cover is None else len(cover)
    weight = cell_values(weights, positions, cover, n)
    shown = None if cover is None else cell_values(np.ones(len(positions)), positions, cover, n) > 0
    kept = np.zeros(n, bool)
    kept[positions] = True
    top = max(weights.max(initial=0.0), 1e-12)
    local = slice(0, rows * cols)
    panels = [_draw_grid(_scaled(page, max_side), rows, cols, kept[local], weight[local] / top,
                         None if shown is None else shown[local])]
    if g_rows and g_cols:
        tile = slice(rows * cols, rows * cols + g_rows * g_cols)
        panels.append(_draw_grid(_scaled(page, max_side // 2), g_rows, g_cols, kept[tile], weight[tile] / top,
                                 None if shown is None else shown[tile]))
    if len(panels) == 1:
        return panels[0]
    out = Image.new("RGB", (sum(p.width for p in panels) + 12, max(p.height for p in panels)), (255, 255, 255))
    out.paste(panels[0], (0, 0))
    out.paste(panels[1], (panels[0].width + 12, 0))
    return out


def write_overlay(path: str | Path, page: Image.Image, grid: tuple[int, int], positions: np.ndarray | Sequence[int],
                  global_grid: tuple[int, int] | None = None, cover: np.ndarray | Sequence[int] | None = None) -> Path:
    """Write :func:`kept_patches_overlay` as PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept_patches_overlay(page, grid, positions, global_grid=global_grid, cover=cover).save(path)
    return path
