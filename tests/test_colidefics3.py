"""ColIdefics3 / ColSmol: the torch adapter against colpali-engine's own forward and attention,
the torch-free preprocessing against the live ``ColIdefics3Processor``, and the token -> page
geometry (``TokenLayout``) against the model's own vision path.

The tiny checkpoint is random (64 px tiles, 4 px patches, pixel shuffle x4 -> 4x4 tokens per tile,
pages to 192 px -> up to 3x3 tiles + global; Llama 6 layers, GQA 4/2 heads).
"""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.base import TORCHVISION_MAX_LEVELS
from sapindex.runtime.preprocess.idefics3 import Idefics3Params, Idefics3Preprocessor, tile_grid_from_ids
from sapindex.testing.toy_pages import WORDS, render_page

# (height, width) -> (R, C) local tiles: validate.VALIDATION_SIZES plus the tall strip
TILES = {(420, 300): (3, 3), (230, 520): (2, 3), (360, 360): (3, 3), (150, 210): (3, 3), (600, 150): (3, 1)}
SIDE = 4  # tokens per tile side (image_seq_len 16)
QUERIES = ["revenue", "What was the total revenue in 2021 compared with the year before?",
           "ünïcödé — 数字 123", "  spaces\tand\nnewlines ", " ".join(["annual report growth"] * 40)]


def _page(height, width, seed=0):
    """A synthetic document page (text, a filled box: sharp edges) with a band of noise (texture)."""
    rng = np.random.default_rng(seed)
    page = np.asarray(render_page(list(rng.choice(WORDS, 12)), (width, height), rng)).copy()
    band = slice(height // 3, height // 3 + max(2, height // 10))
    page[band] = rng.integers(0, 256, page[band].shape)
    return Image.fromarray(page)


def _pages():
    """Every validation size, an upscaled thumbnail, a page far larger than 192 px, noise, L and RGBA modes."""
    pages = [_page(h, w, i) for i, (h, w) in enumerate(TILES)]
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    return pages + [_page(40, 30, 8), _page(1000, 700, 9), noise, pages[0].convert("L"), pages[1].convert("RGBA")]


def _model_info(path):
    """The checkpoint as the registry sees it."""
    from sapindex.families import inspect_model_dir

    info = inspect_model_dir(path)
    assert info.family.name == "colidefics3"
    return info


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from sapindex.testing.tiny_idefics3 import build_tiny_colidefics3

    return build_tiny_colidefics3(tmp_path_factory.mktemp("tiny") / "colidefics3")


@pytest.fixture(scope="module")
def adapter(checkpoint):
    from sapindex.models.base import resolve_device, resolve_dtype
    from sapindex.models.idefics3 import Idefics3Adapter

    return Idefics3Adapter.load(_model_info(checkpoint), device=resolve_device("cpu"), dtype=resolve_dtype("float32"))


def _runtime(processor, tmp_path):
    """A runtime preprocessor built the bundle's way: params (through JSON) and tokenizer.json from the processor."""
    from sapindex.exporter.preprocessing_params import idefics3_params, write_tokenizer_json

    params = Idefics3Params.from_dict(json.loads(json.dumps(idefics3_params(processor))))
    return Idefics3Preprocessor(params, write_tokenizer_json(processor, tmp_path / "tokenizer.json"))


@pytest.fixture(scope="module")
def runtime(adapter, tmp_path_factory):
    return _runtime(adapter.processor, tmp_path_factory.mktemp("runtime"))


def _variant(processor, **image_processor_overrides):
    """The same processor with other image-processor settings (unsplit pages)."""
    from colpali_engine.models import ColIdefics3Processor
    from transformers.models.idefics3 import Idefics3ImageProcessor

    config = {**processor.image_processor.to_dict(), **image_processor_overrides}
    config.pop("image_processor_type", None)
    return ColIdefics3Processor(Idefics3ImageProcessor(**config), copy.deepcopy(processor.tokenizer),
                                image_seq_len=processor.image_seq_len)


def _numpy(batch):
    return {k: v.numpy() for k, v in batch.items()}


# -- checkpoint and adapter ----------------------------------------------------------------------


def test_checkpoint_reloads_without_missing_weights(checkpoint, adapter):
    """No missing keys and nothing left on the meta device (ColIdefics3 has no tied LM head, unlike ColPali)."""
    from colpali_engine.models import ColIdefics3

    model, loading = ColIdefics3.from_pretrained(str(checkpoint), attn_implementation="eager",
                                                 output_loading_info=True, local_files_only=True)
    assert not any(loading.values()), loading
    assert not [name for name, p in model.named_parameters() if p.is_meta]
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "idefics3"
    assert adapter.tokens_per_side() == SIDE and adapter.n_layers == 6 and adapter.projection().out_features == 128
    config = adapter.decoder_layers()[0].self_attn.config
    assert config._attn_implementation == "eager" and config.num_key_value_heads == 2


def test_forward_embeddings_equals_model_forward(adapter):
    """The cache-free pass equals ``ColIdefics3.forward``, pages (mixed tile counts) and queries."""
    for inputs in (adapter.page_inputs(_pages()[:3]), adapter.query_inputs(QUERIES)):
        with torch.no_grad():
            ref, got = adapter.model(**inputs), adapter.forward_embeddings(inputs)
        assert got.shape == ref.shape and got.shape[-1] == 128
        assert (got - ref).abs().max().item() <= 1e-6


def test_hook_centrality_equals_output_attentions(adapter):
    images = _pages()[:3]  # 3x3, 2x3, 3x3 tiles: 160, 112, 160 visual tokens, left-padded
    layers = (0, 3, 5)
    encoded = adapter.encode_pages(images, layers=layers)
    inputs = adapter.page_inputs(images)
    visual = adapter.visual_mask(inputs)  # [B, S]
    with torch.no_grad():
        out = adapter.model.model(**inputs, output_attentions=True)
        emb = adapter.forward_embeddings(inputs)
    for row, layer in enumerate(layers):
        attn = out.attentions[layer].double()  # [B, H, S, S]
        for b, page in enumerate(encoded):
            vis = visual[b]
            in_degree = attn[b][:, vis][:, :, vis].sum(dim=1).mean(dim=0)  # [V]: visual rows -> visual columns
            np.testing.assert_allclose(page.centrality[row], in_degree.numpy(), rtol=1e-5, atol=1e-6)
    layouts = adapter.page_layouts(inputs)
    for b, (page, layout) in enumerate(zip(encoded, layouts)):
        assert page.centrality.shape == (3, layout.n_tokens) and page.grid == layout.grid
        np.testing.assert_allclose(page.embeddings, emb[b][visual[b]].numpy(), atol=1e-6)
    assert [layout.n_tokens for layout in layouts] == [160, 112, 160]


# -- torch-free preprocessing ----------------------------------------------------------------------


def test_params_extracted_from_the_live_processor(runtime):
    p = runtime.params
    assert Idefics3Params.from_dict({**p.to_dict(), "added_later": 1}) == p
    assert (p.longest_edge, p.tile_size, p.image_seq_len, p.tokens_per_side) == (192, 64, 16, SIDE)
    assert p.resample == "lanczos" and p.do_image_splitting and p.padding_side == "left"
    assert (p.query_prefix, p.query_augmentation_token, p.n_augmentation) == ("", "<end_of_utterance>", 10)
    assert p.visual_prompt == "<|im_start|>User:<image>Describe the image.<end_of_utterance>\nAssistant:"


def test_params_are_checked(runtime):
    d = runtime.params.to_dict()
    with pytest.raises(SapIndexError, match="missing keys row_col_token"):
        Idefics3Params.from_dict({k: v for k, v in d.items() if k != "row_col_token"})
    with pytest.raises(SapIndexError, match="not a square grid"):
        Idefics3Params.from_dict({**d, "image_seq_len": 12})
    with pytest.raises(SapIndexError, match="more than 6 tiles"):
        Idefics3Params.from_dict({**d, "longest_edge": 7 * 64})
    with pytest.raises(SapIndexError, match="exactly once"):
        Idefics3Params.from_dict({**d, "visual_prompt": "Describe the image."})


@pytest.mark.parametrize("size", TILES)
def test_each_validation_size_matches_processor(adapter, runtime, size):
    """Per page size: tile grid, every key, shape, dtype and ``input_ids`` identical; layouts equal the adapter's."""
    page = _page(*size)
    ref = _numpy(adapter.processor.process_images([page]))
    got = runtime.pages([page])
    rows, cols = TILES[size]
    assert runtime.tile_grid(*size) == (rows, cols)
    assert runtime.visual_grid(*size) == (SIDE * rows, SIDE * cols)
    assert list(got) == list(ref) == ["input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"]
    assert got["pixel_values"].shape == ref["pixel_values"].shape == (1, rows * cols + 1, 3, 64, 64)
    for key in ref:
        assert got[key].dtype == ref[key].dtype, key
        if key != "pixel_values":
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    [(positions, layout)] = runtime.layouts(got)
    assert layout == adapter.page_layouts(adapter.page_inputs([page]))[0]
    np.testing.assert_array_equal(positions, np.flatnonzero(ref["input_ids"][0] == adapter.processor.image_token_id))
    assert layout.grid == (SIDE * rows, SIDE * cols) and layout.global_grid == (SIDE, SIDE)


def test_tile_grids_match_processor_over_many_sizes(adapter, runtime):
    """The size arithmetic of all three passes, on 40 random sizes and extreme strips: same
    ``input_ids`` (hence the same R x C) and the same tile count as the processor."""
    rng = np.random.default_rng(3)
    sizes = [tuple(int(v) for v in rng.integers(8, 1200, 2)) for _ in range(40)] + [(1, 900), (900, 1), (1, 1), (5, 4)]
    pages = [Image.new("RGB", (w, h), "white") for h, w in sizes]
    ref = _numpy(adapter.processor.process_images(pages))
    got = runtime.pages(pages)
    np.testing.assert_array_equal(got["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(got["pixel_attention_mask"], ref["pixel_attention_mask"])
    grids = {runtime.tile_grid(h, w) for h, w in sizes}
    assert {(3, 1), (1, 3), (3, 3), (2, 3), (3, 2)} <= grids


def test_mixed_batch_matches_processor(adapter, runtime):
    """Pages of 10, 7, 4 and more tiles in one batch (zero-tile padding, left-padded text), other
    modes, upscaled and downscaled pages: all non-pixel outputs identical; pixels within the
    measured torchvision bound."""
    pages = _pages()
    ref = _numpy(adapter.processor.process_images(pages))
    got = runtime.pages(pages)
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert got["pixel_values"].shape == ref["pixel_values"].shape == (len(pages), 10, 3, 64, 64)
    assert (got["attention_mask"][:, 0] == 0).any()  # left padding really happened
    assert not got["pixel_values"][4, 4:].any() and not got["pixel_attention_mask"][4, 4:].any()  # 3x1 strip
    # torchvision's antialiased Lanczos vs PIL's, three chained passes (measured: 2 levels, ~0.6% of values off)
    std = min(runtime.params.image_std)
    diff = np.abs(got["pixel_values"] - ref["pixel_values"])
    assert diff.max() <= (TORCHVISION_MAX_LEVELS + 1e-3) / 255 / std, diff.max() * 255 * std
    assert (diff > 0.5 / 255 / std).mean() < 0.01
    assert [layout for _positions, layout in runtime.layouts(got)] == adapter.page_layouts(adapter.page_inputs(pages))


def test_pixels_identical_to_transformers_pil_backend(adapter, runtime, pil_resize_horizontal_first):
    """``Idefics3ImageProcessorPil`` with Pillow's passes pinned horizontal-first: bit-identical."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    reference = Idefics3ImageProcessorPil(**adapter.processor.image_processor.to_dict())
    pages = _pages()
    ref = reference.preprocess([[p.convert("RGB")] for p in pages], return_tensors="np")  # one image per sample
    got = runtime.pages(pages)
    assert ref["pixel_values"].dtype == got["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"])
    np.testing.assert_array_equal(got["pixel_attention_mask"], ref["pixel_attention_mask"])


@pytest.mark.parametrize("overrides", [{"size": {"longest_edge": 64}}, {"do_image_splitting": False}],
                         ids=["fits-one-tile", "no-splitting"])
def test_unsplit_pages_match_processor(adapter, tmp_path, overrides):
    """Pages that stay one tile: ``<global-img>`` + n tokens only, one ``s x s`` grid, no global grid."""
    processor = _variant(adapter.processor, **overrides)
    runtime = _runtime(processor, tmp_path)
    pages = _pages()[:5]
    ref = _numpy(processor.process_images(pages))
    got = runtime.pages(pages)
    assert got["pixel_values"].shape == ref["pixel_values"].shape == (5, 1, 3, 64, 64)
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    diff = np.abs(got["pixel_values"] - ref["pixel_values"])
    assert diff.max() <= (TORCHVISION_MAX_LEVELS + 1e-3) / 255 / 0.5
    assert [layout for _positions, layout in runtime.layouts(got)] == [TokenLayout.raster(SIDE, SIDE)] * 5
    assert runtime.visual_grid(420, 300) == (SIDE, SIDE) and runtime.tile_grid(420, 300) == (0, 0)
    assert (ref["input_ids"] == processor.image_token_id).sum(axis=1).tolist() == [16] * 5


@pytest.mark.parametrize("texts", [QUERIES, QUERIES[2:3]], ids=["mixed-lengths", "single"])
def test_queries_match_processor(adapter, runtime, texts):
    ref = _numpy(adapter.processor.process_queries(texts))
    got = runtime.queries(texts)
    assert list(got) == list(ref) == ["input_ids", "attention_mask"]
    for key in ref:
        assert got[key].dtype == ref[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    eou = runtime.tokenizer.token_to_id("<end_of_utterance>")
    assert (got["input_ids"][:, -10:] == eou).all()  # 10 augmentation tokens, left padding before the text
    extras = runtime.query_extras(got, hidden=64)
    assert list(extras) == ["image_embeds"] and extras["image_embeds"].shape == (len(texts), 1, 64)


def test_exported_tokenizer_json_encodes_like_the_live_tokenizer(adapter, runtime):
    live, bundled = adapter.processor.tokenizer, runtime.tokenizer
    page_text = runtime.params.visual_prompt.replace("<image>", runtime._image_text(2, 3))
    assert "ĊĊ" in bundled.encode(page_text).tokens  # the row "\n" and the global tile's "\n" merge
    for text in [q + "<end_of_utterance>" * 10 for q in QUERIES] + [page_text]:
        assert bundled.encode(text).ids == live(text)["input_ids"], text


# -- token geometry --------------------------------------------------------------------------------


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
