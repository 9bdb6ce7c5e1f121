"""Where a page's visual tokens sit on the page, for every family (torch-free, numpy only).

Two orders of the same V visual tokens matter:

- **sequence order**: the order the ``<image>`` tokens appear in the model's input (what the
  graphs and the torch forward return, what causal attention sees);
- **spatial order**: the order sapindex stores and draws them in. It is the local page grid
  (``grid = (rows, cols)`` cells covering the whole page) in row-major raster order, then, when
  the family also encodes a downscaled copy of the page (Idefics3's "global tile"), that copy's
  ``global_grid`` in raster order. Spatial token ``k < rows*cols`` is cell ``(k // cols, k % cols)``
  of ``grid``; token ``k >= rows*cols`` is cell ``((k - rows*cols) // gc, (k - rows*cols) % gc)``
  of ``global_grid = (gr, gc)``, which also covers the whole page.

For the grid families (Qwen2-VL, PaliGemma) the two orders coincide. Idefics3 differs: the page
is cut into ``R x C`` tiles and each tile's ``s x s`` tokens are contiguous in the sequence, so a
page row of tokens is spread over ``C`` runs; and the global tile comes last in the sequence,
where causal attention lets only the last ``s*s`` rows see it (its raw in-degree is low for
reasons that have nothing to do with content). Hence ``seq_rank``: the causal correction divides
by ``V - seq_rank`` (rows that can see a token), not by ``V - spatial index``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sapindex.errors import SapIndexError

__all__ = ["TokenLayout"]


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """The page geometry of one page's visual tokens.

    ``order[k]`` is the sequence index (0-based among the page's visual tokens) of the token at
    spatial position ``k``, so ``values_seq[..., order]`` puts sequence-ordered per-token values
    into spatial order. Read as a rank, the same array is :attr:`seq_rank`.
    """

    grid: tuple[int, int]  # (rows, cols) of the local token grid over the whole page
    global_grid: tuple[int, int] | None  # (rows, cols) of the global-tile grid over the whole page, or None
    order: np.ndarray  # [V] int64: sequence index of each spatial-order token

    def __post_init__(self):
        grid = tuple(int(v) for v in self.grid)
        global_grid = None if self.global_grid is None else tuple(int(v) for v in self.global_grid)
        order = np.asarray(self.order, np.int64)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "global_grid", global_grid)
        object.__setattr__(self, "order", order)
        expected = grid[0] * grid[1] + (global_grid[0] * global_grid[1] if global_grid else 0)
        if order.shape != (expected,):
            raise SapIndexError(f"token layout: {order.shape} order entries for grid {grid} and global grid "
                                f"{global_grid} ({expected} tokens)")
        if not np.array_equal(np.sort(order), np.arange(expected)):
            raise SapIndexError("token layout: order is not a permutation of the visual tokens")

    @classmethod
    def raster(cls, rows: int, cols: int) -> TokenLayout:
        """A grid family's layout: one ``rows x cols`` grid, sequence order == spatial order."""
        return cls((rows, cols), None, np.arange(rows * cols, dtype=np.int64))

    @classmethod
    def tiled(cls, tile_rows: int, tile_cols: int, side: int) -> TokenLayout:
        """Idefics3's layout: ``tile_rows x tile_cols`` tiles of ``side x side`` tokens, then one global tile.

        Sequence token ``t*side**2 + i`` (tile ``t = r*tile_cols + c``, row-major; ``i`` row-major
        within the tile) sits at local cell ``(side*r + i // side, side*c + i % side)`` of the
        ``side*tile_rows x side*tile_cols`` grid; the last ``side**2`` tokens are the global tile,
        in raster order over a ``side x side`` grid. ``tile_rows == tile_cols == 0`` (the page
        was not split: one tile that is the whole page) gives one ``side x side`` grid and no
        global tile.
        """
        if tile_rows < 0 or tile_cols < 0 or side <= 0 or (tile_rows == 0) != (tile_cols == 0):
            raise SapIndexError(f"token layout: invalid tiling {tile_rows}x{tile_cols} tiles of {side}x{side} tokens")
        if tile_rows == 0:
            return cls.raster(side, side)
        n_local = tile_rows * tile_cols * side * side
        seq = np.arange(n_local, dtype=np.int64).reshape(tile_rows, tile_cols, side, side)  # [R, C, y, x]
        local = seq.transpose(0, 2, 1, 3).reshape(-1)  # [R, y, C, x] -> page raster (side*r + y, side*c + x)
        glob = np.arange(n_local, n_local + side * side, dtype=np.int64)  # global tile, already raster
        return cls((side * tile_rows, side * tile_cols), (side, side), np.concatenate([local, glob]))

    # -- derived ---------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_local(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_rank(self) -> np.ndarray:
        """``[V]`` rank in sequence order of each spatial-order token (what the causal
        correction needs: ``V - seq_rank[k]`` visual rows can attend token ``k``). Numerically
        ``order``: the sequence index among visual tokens *is* the rank."""
        return self.order

    @property
    def spatial_index(self) -> np.ndarray:
        """``[V]`` the inverse permutation: spatial position of each sequence-order token."""
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(self.n_tokens, dtype=np.int64)
        return inverse

    def to_spatial(self, values: np.ndarray, axis: int = -1) -> np.ndarray:
        """Sequence-ordered per-token values into spatial order along ``axis`` (the token axis:
        ``-1`` for centrality ``[L, V]``, ``0`` for embeddings ``[V, dim]``)."""
        return np.take(np.asarray(values), self.order, axis=axis)

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(is_global [V] bool, row [V], col [V])`` of every spatial-order token in its own grid."""
        k = np.arange(self.n_tokens, dtype=np.int64)
        is_global = k >= self.n_local
        rows = np.where(is_global, 0, k // self.grid[1])
        cols = np.where(is_global, 0, k % self.grid[1])
        if self.global_grid is not None:
            g = k - self.n_local
            rows = np.where(is_global, g // self.global_grid[1], rows)
            cols = np.where(is_global, g % self.global_grid[1], cols)
        return is_global, rows, cols

    def __eq__(self, other) -> bool:
        if not isinstance(other, TokenLayout):
            return NotImplemented
        return (self.grid == other.grid and self.global_grid == other.global_grid
                and np.array_equal(self.order, other.order))

    __hash__ = None  # type: ignore[assignment]  # unhashable (mutable array); typeshed allows only a method

    def __repr__(self) -> str:
        return f"TokenLayout(grid={self.grid}, global_grid={self.global_grid}, n_tokens={self.n_tokens})"
