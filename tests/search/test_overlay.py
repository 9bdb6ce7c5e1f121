"""The kept-patches picture: kept cells outlined, the rest dimmed, at the grid's page coordinates."""

import numpy as np
import pytest
from PIL import Image

from sapindex.search.overlay import cell_values, kept_patches_overlay, match_overlay


def test_kept_cells_are_outlined_and_the_rest_dimmed():
    page = Image.new("RGB", (400, 200), (0, 0, 0))  # grid 2 rows x 4 cols of 100 px cells
    out = np.asarray(kept_patches_overlay(page, (2, 4), [1, 6]))
    assert out.shape == (200, 400, 3)
    # kept cell (row 0, col 1): untouched black inside, red border
    assert out[50, 150].tolist() == [0, 0, 0]
    assert out[50, 100].tolist() == [220, 30, 30]
    # kept cell (row 1, col 2)
    assert out[150, 250].tolist() == [0, 0, 0]
    # a cell that was not kept is washed towards white
    assert out[50, 50].min() > 90 and out[150, 350].min() > 90


def test_large_pages_are_scaled_and_bad_grids_refused():
    out = kept_patches_overlay(Image.new("RGB", (3000, 1500), "white"), (3, 6), [0])
    assert max(out.size) == 1000
    with pytest.raises(ValueError, match="grid"):
        kept_patches_overlay(Image.new("RGB", (10, 10)), (0, 3), [])


def test_global_tile_tokens_are_listed_not_drawn():
    """Idefics3: positions >= rows*cols are global-tile tokens: checked and listed, never drawn."""
    from sapindex.search.overlay import global_cells

    page = Image.new("RGB", (400, 200), (0, 0, 0))
    plain = np.asarray(kept_patches_overlay(page, (2, 4), [1]))
    with_global = np.asarray(kept_patches_overlay(page, (2, 4), [1, 8, 11], global_grid=(2, 2)))
    assert np.array_equal(plain, with_global)  # the global tokens change nothing on the picture
    assert global_cells((2, 4), [1, 8, 11], (2, 2)) == [(0, 0), (1, 1)]
    assert global_cells((2, 4), [1, 6], None) == []
    with pytest.raises(ValueError, match="exceed grid"):
        kept_patches_overlay(page, (2, 4), [1, 8], global_grid=None)
    with pytest.raises(ValueError, match="exceed grid"):
        global_cells((2, 4), [12], (2, 2))


def test_merged_vectors_show_every_cell_they_cover():
    """Merging methods: a stored vector stands for its anchor and the cells merged into it (``cover``):
    those cells are not dimmed, only anchors are outlined, and a matched vector fills all its cells."""
    page = Image.new("RGB", (400, 200), (0, 0, 0))  # 2 x 4 cells of 100 px
    positions, cover = [1, 6], [0, 0, -1, 1, -1, 1, 1, -1]  # vector 0: cells 0, 1; vector 1: cells 3, 5, 6
    np.testing.assert_array_equal(cell_values([2.0, 3.0], positions, cover), [2, 2, 0, 3, 0, 3, 3, 0])
    np.testing.assert_array_equal(cell_values([2.0, 3.0], positions, None, 8), [0, 2, 0, 0, 0, 0, 3, 0])
    with pytest.raises(ValueError, match="outside"):
        cell_values([2.0, 3.0], positions, [0, 2, -1, 1, -1, 1, 1, -1])
    out = np.asarray(kept_patches_overlay(page, (2, 4), positions, cover=cover))
    assert out[50, 50].tolist() == [0, 0, 0]  # cell 0, merged into vector 0: shown as is
    assert out[50, 0].tolist() == [0, 0, 0]  # and not outlined: not an anchor
    assert out[50, 100].tolist() == [220, 30, 30]  # the anchor, cell 1, outlined
    assert out[50, 250].min() > 90  # cell 2, covered by none: dimmed
    picture = match_overlay(page, (2, 4), positions, [0.0, 1.0], cover=cover)
    for x, y in ((350, 50), (150, 150), (250, 150)):  # cells 3, 5 and 6: vector 1's, filled blue
        r, g, b = picture.getpixel((x, y))
        assert b > r + 40
    r, g, b = picture.getpixel((50, 50))  # vector 0 matched nothing
    assert b <= r + 40
