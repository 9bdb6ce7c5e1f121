"""Idefics3 / ColIdefics3 (ColSmol), token geometry: ``TokenLayout`` against the written convention and
the model's own vision path (tokens map to page cells), and pruning corrected by sequence rank.

Fixtures in this folder's conftest.py.
"""

import copy

import numpy as np
import pytest
import torch
from helpers import IDEFICS3_SIDE as SIDE
from helpers import idefics3_page as _page
from helpers import idefics3_variant as _variant
from PIL import Image, ImageDraw

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.idefics3 import tile_grid_from_ids


def _local_token_features(model, inputs):
    """Per-page ``[V, hidden]`` image features in sequence order through transformers' own vision
    path (patch conv, position embedding, post-layernorm, pixel shuffle, projection, zero-tile drop,
    per-page split) with the encoder layers removed: every token then depends on its own pixels only."""
    local = copy.deepcopy(model.model)
    local.vision_model.encoder.layers = torch.nn.ModuleList()
    with torch.no_grad():
        out = local.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"], return_dict=True)
    return out.pooler_output


@pytest.mark.parametrize(("size", "cell", "variant"), [
    ((256, 192), (7, 4), None),  # 3x3 tiles: cell in the middle row of tiles, left-middle tile
    ((256, 192), (1, 10), None),  # top-right tile
    ((230, 520), (5, 9), None),  # 2x3 tiles (wider than tall)
    ((600, 150), (10, 1), None),  # 3x1 strip
    ((40, 30), (6, 2), None),  # upscaled thumbnail
    ((256, 192), (1, 2), {"size": {"longest_edge": 64}}),  # unsplit: one tile, no global grid
])
def test_layout_maps_tokens_to_page_cells(adapter, size, cell, variant):
    """A white page with one black local-grid cell (its middle half): the only tokens whose local
    features change are that cell's local token and the global token of the cell containing it,
    once the model's sequence-order features are put in spatial order by ``page_layouts``."""
    if variant is not None:
        adapter = copy.copy(adapter)
        adapter.processor = _variant(adapter.processor, **variant)
    height, width = size
    white = Image.new("RGB", (width, height), "white")
    layout = adapter.page_layouts(adapter.page_inputs([white]))[0]
    rows, cols = layout.grid
    r, c = cell
    y0, y1, x0, x1 = r * height / rows, (r + 1) * height / rows, c * width / cols, (c + 1) * width / cols
    black = white.copy()
    ImageDraw.Draw(black).rectangle((round(x0 + (x1 - x0) / 4), round(y0 + (y1 - y0) / 4),
                                     round(x1 - (x1 - x0) / 4) - 1, round(y1 - (y1 - y0) / 4) - 1), fill="black")
    inputs = adapter.page_inputs([white, black])
    assert adapter.page_layouts(inputs) == [layout, layout]
    feats = _local_token_features(adapter.model, inputs)
    change = (feats[1] - feats[0]).norm(dim=-1).numpy()  # [V] in sequence order
    assert change.shape == (layout.n_tokens,)
    spatial = layout.to_spatial(change)
    grids = [(spatial[: layout.n_local].reshape(layout.grid), (r, c))]
    if layout.global_grid is not None:  # global cell = page / s: it holds R x C local cells
        gr, gc = layout.global_grid
        grids.append((spatial[layout.n_local:].reshape(gr, gc), (r * gr // rows, c * gc // cols)))
    for grid_change, expected in grids:
        assert np.unravel_index(grid_change.argmax(), grid_change.shape) == expected
        second = np.sort(grid_change.ravel())[-2]
        assert second < 0.1 * grid_change.max()  # resampling ringing only


@pytest.mark.parametrize("tiles", [(3, 3), (2, 3), (3, 1), (1, 2), (0, 0)])
def test_token_layout_convention(tiles):
    """``TokenLayout.tiled`` against the written convention, token by token; order / seq_rank /
    spatial_index are mutually inverse permutations."""
    rows, cols = tiles
    layout = TokenLayout.tiled(rows, cols, SIDE)
    n = SIDE * SIDE
    n_local = n * rows * cols
    v = n_local + n if rows else n
    assert layout.n_tokens == v and layout.seq_rank is layout.order
    assert np.array_equal(np.sort(layout.order), np.arange(v))
    assert np.array_equal(layout.order[layout.spatial_index], np.arange(v))
    assert np.array_equal(layout.to_spatial(np.arange(v)), layout.order)
    is_global, cell_rows, cell_cols = layout.cells()
    for k in range(v):  # sequence token k
        if rows and k < n_local:
            t, i = divmod(k, n)
            expected = (False, SIDE * (t // cols) + i // SIDE, SIDE * (t % cols) + i % SIDE)
        else:
            g = k - n_local if rows else k
            expected = (bool(rows), g // SIDE, g % SIDE)
        j = layout.spatial_index[k]
        assert (bool(is_global[j]), cell_rows[j], cell_cols[j]) == expected, k
        if not expected[0]:  # local: spatial index is the raster index of its cell
            assert j == expected[1] * layout.grid[1] + expected[2]
    assert layout.grid == ((SIDE * rows, SIDE * cols) if rows else (SIDE, SIDE))
    assert layout.global_grid == ((SIDE, SIDE) if rows else None)


def test_token_layout_refuses_inconsistent_input(runtime):
    with pytest.raises(SapIndexError, match="not a permutation"):
        TokenLayout((2, 2), None, np.array([0, 1, 1, 3]))
    with pytest.raises(SapIndexError, match="4 tokens"):
        TokenLayout((2, 2), None, np.arange(5))
    with pytest.raises(SapIndexError, match="invalid tiling"):
        TokenLayout.tiled(2, 0, SIDE)
    ids = runtime.pages([_page(230, 520)])["input_ids"][0]
    image_id = runtime.image_token_id
    assert tile_grid_from_ids(ids, image_id, runtime.row_col_ids, 16) == (2, 3)
    dropped = np.delete(ids, np.flatnonzero(ids == image_id)[0])
    with pytest.raises(SapIndexError, match="111 image tokens"):
        tile_grid_from_ids(dropped, image_id, runtime.row_col_ids, 16)


def test_prune_corrects_by_sequence_rank_not_spatial_index():
    """A tiled page is stored in spatial order (local grid raster, then the global tile), which is
    not its sequence order: the position correction must divide by ``V - seq_rank``."""
    from sapindex import sap
    from sapindex.runtime.encoder import PageTokens, prune

    layout = TokenLayout.tiled(1, 2, 2)  # 2 tiles of 2x2 tokens -> 2x4 local grid, + 2x2 global: 12 tokens
    assert not np.array_equal(layout.order, np.arange(12))
    weight = np.ones(12)
    weight[4] = 1.3  # sequence token 4 (spatial 2: tile 0, second token row) is the most central per row
    seq_cent = weight * np.arange(12, 0, -1)  # raw in-degree: causal bias, in sequence order
    emb = np.random.default_rng(3).standard_normal((12, 8)).astype(np.float32)
    page = PageTokens(layout.to_spatial(emb, axis=0), layout.to_spatial(seq_cent), layout, layout.to_spatial(seq_cent))
    assert prune(page, 0.05, position_correction=True).positions.tolist() == [2]
    for ratio in (0.05, 0.25, 0.5):
        corrected = prune(page, ratio, position_correction=True)
        expected = np.sort(layout.spatial_index[sap.top_k(sap.causal_correction(seq_cent), ratio)])
        assert corrected.positions.tolist() == expected.tolist()
        np.testing.assert_array_equal(corrected.vectors, emb[layout.order[corrected.positions]])
    naive = sap.top_k(page.centrality / np.arange(12, 0, -1), 0.05)  # dividing by V - spatial index
    assert naive.tolist() == [5]  # sequence token 3, favoured only by its earlier spatial index
    full = prune(page, 1.0)
    assert full.global_grid == (2, 2) and full.grid == (2, 4) and full.positions.tolist() == list(range(12))
