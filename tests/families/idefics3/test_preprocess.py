"""Idefics3 / ColIdefics3 (ColSmol), torch-free preprocessing against the live ``ColIdefics3Processor``:
params, validation sizes, tile grids, mixed batches, pixels, unsplit pages, queries and the exported
tokenizer.json.

Fixtures in this folder's conftest.py.
"""

import numpy as np
import pytest
from helpers import IDEFICS3_SIDE as SIDE
from helpers import IDEFICS3_TILES as TILES
from helpers import QUERIES
from helpers import idefics3_page as _page
from helpers import idefics3_pages as _pages
from helpers import idefics3_runtime as _runtime
from helpers import idefics3_variant as _variant
from helpers import numpy_batch as _numpy
from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.base import TORCHVISION_MAX_LEVELS
from sapindex.runtime.preprocess.idefics3 import Idefics3Params


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
