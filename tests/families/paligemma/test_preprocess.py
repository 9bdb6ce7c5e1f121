"""PaliGemma / ColPali, torch-free preprocessing: params extracted and checked, pages, pixels and
queries against the live processors, and the exported tokenizer.json.

Both flavours (``colpali``, ``colpali_hf``); fixtures in this folder's conftest.py.
"""

import numpy as np
import pytest
from helpers import COLPALI_FLAVOURS as FLAVOURS
from helpers import QUERIES
from helpers import colpali_pages as _pages
from helpers import numpy_batch as _numpy

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.base import TORCHVISION_MAX_LEVELS
from sapindex.runtime.preprocess.paligemma import PaliGemmaParams


@pytest.mark.parametrize("name", FLAVOURS)
def test_params_extracted_from_the_live_processor(runtimes, name):
    params = runtimes[name].params
    assert PaliGemmaParams.from_dict({**params.to_dict(), "added_later": 1}) == params
    tokens = runtimes[name].tokenizer.id_to_token
    prompt = [tokens(i) for i in params.page_token_ids[64:]]
    bos = ["<bos>", "<bos>"] if name == "colpali" else ["<bos>"]  # the engine's prompt already holds one
    assert prompt[: len(bos)] == bos and prompt[len(bos)] != "<bos>" and prompt[-1] == "<0x0A>"  # ... "\n"
    assert params.image_size == 112 and params.grid_side == 8 and params.resample == "bicubic"
    assert params.padding_side == "left" and params.query_augmentation_token == "<pad>"
    assert params.query_prefix_lm is FLAVOURS[name]
    assert (params.query_prefix, params.query_suffix) == (("Question: ", "\n") if FLAVOURS[name] else ("", ""))


def test_params_are_checked(runtimes):
    d = runtimes["colpali"].params.to_dict()
    with pytest.raises(SapIndexError, match="missing keys page_token_ids"):
        PaliGemmaParams.from_dict({k: v for k, v in d.items() if k != "page_token_ids"})
    with pytest.raises(SapIndexError, match="hold 63 image tokens"):
        PaliGemmaParams.from_dict({**d, "page_token_ids": d["page_token_ids"][1:]})
    with pytest.raises(SapIndexError, match="not a square grid"):
        PaliGemmaParams.from_dict({**d, "image_seq_length": 60})


@pytest.mark.parametrize("name", FLAVOURS)
def test_pages_match_processor(colpali_adapters, runtimes, name):
    processor, runtime = colpali_adapters[name].processor, runtimes[name]
    pages = _pages()
    ref = _numpy(processor.process_images(images=[p.convert("RGB") for p in pages]))
    got = runtime.pages(pages)
    assert list(got) == [k for k in ref if k != "labels"] + ["prefix_mask"]
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert got["pixel_values"].dtype == ref["pixel_values"].dtype == np.float32
    assert got["pixel_values"].shape == ref["pixel_values"].shape == (len(pages), 3, 112, 112)
    # torchvision's antialiased bicubic vs PIL's (measured: 1 uint8 level downscaling, 2 upscaling,
    # under 1% of values off at all).
    std = min(runtime.params.image_std)
    diff = np.abs(got["pixel_values"] - ref["pixel_values"])
    assert diff.max() <= (TORCHVISION_MAX_LEVELS + 1e-3) / 255 / std, diff.max() * 255 * std
    assert (diff > 0.5 / 255 / std).mean() < 0.01
    assert diff[5].max() <= 1e-6  # already 112 px: no resampling, only float32 rounding differs
    for (positions, layout), ids in zip(runtime.layouts(got), ref["input_ids"], strict=True):
        assert layout.grid == runtime.visual_grid(300, 40) == (8, 8)
        assert layout == TokenLayout.raster(8, 8)  # sequence order is raster order, no global grid
        np.testing.assert_array_equal(positions, np.flatnonzero(ids == processor.image_token_id))
    assert colpali_adapters[name].page_grids(colpali_adapters[name].page_inputs(pages)) == [(8, 8)] * len(pages)


@pytest.mark.parametrize("name", FLAVOURS)
def test_pixels_identical_to_transformers_pil_backend(colpali_adapters, runtimes, name, pil_resize_horizontal_first):
    """``SiglipImageProcessorPil`` with the resize passes pinned horizontal-first (Pillow 13 may
    go vertical first; see runtime.preprocess.base.resize_hv): bit-identical."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    reference = SiglipImageProcessorPil(**colpali_adapters[name].processor.image_processor.to_dict())
    pages = _pages()
    ref = reference.preprocess([p.convert("RGB") for p in pages], return_tensors="np")["pixel_values"]
    got = runtimes[name].pages(pages)["pixel_values"]
    assert ref.dtype == got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("texts", [QUERIES, QUERIES[2:3]], ids=["mixed-lengths", "single"])
def test_queries_match_processor(colpali_adapters, runtimes, name, texts):
    ref = _numpy(colpali_adapters[name].processor.process_queries(texts))
    got = runtimes[name].queries(texts)
    assert list(got) == list(ref) + ["prefix_mask"]
    for key in ref:
        assert got[key].dtype == ref[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert (got["prefix_mask"] == int(FLAVOURS[name])).all()
    if len(texts) > 1:
        assert (got["attention_mask"][:, 0] == 0).any()  # left padding really happened


def test_exported_tokenizer_json_encodes_like_the_live_tokenizer(colpali_adapters, colpali_dirs, runtimes):
    """The bundle's tokenizer.json is the live one (BOS off); the checkpoint's own file would add a second BOS."""
    from tokenizers import Tokenizer

    for name, adapter in colpali_adapters.items():
        live, bundled = adapter.processor.tokenizer, runtimes[name].tokenizer
        texts = ["<bos>" + q + "<pad>" * 10 + "\n" for q in QUERIES] + ["Describe the image.\n"]
        for text in texts:
            assert bundled.encode(text).ids == live(text)["input_ids"], (name, text)
        raw = Tokenizer.from_file(str(colpali_dirs[name] / "tokenizer.json"))
        assert raw.encode("revenue").ids == [live.bos_token_id] + live("revenue")["input_ids"]
