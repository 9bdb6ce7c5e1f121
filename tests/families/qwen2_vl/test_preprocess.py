"""The torch-free Qwen2-VL preprocessor against colpali-engine's processors (and transformers' PIL backend).

Token ids, masks, mm_token_type_ids and grids must be identical. Pixel values cannot be: colpali
uses torchvision's bicubic, the runtime PIL's; the bound is ``TORCHVISION_MAX_LEVELS`` uint8
levels (measured: 1 downscaling, 2 upscaling), expressed in normalised units.
"""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.base import TORCHVISION_MAX_LEVELS
from sapindex.runtime.preprocess.qwen2_vl import Qwen2VLParams, Qwen2VLPreprocessor, smart_resize

FAMILIES = ["colqwen2", "colqwen2_5"]


def _document(height, width, seed):
    """Black text and boxes on white: sharp edges, the worst realistic case for resampling."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(4, height - 8, 13):
        draw.text((4, y), " ".join(str(rng.integers(10**5)) for _ in range(12)), fill=(0, 0, 0))
    draw.rectangle((width // 4, height // 3, width // 2, height // 2), outline=(200, 30, 30), width=3)
    return image


def _pages():
    """Mixed sizes and modes: portrait/landscape downscales, an upscale, extreme aspect, L and RGBA."""
    rng = np.random.default_rng(0)
    return [
        _document(420, 300, 1),  # portrait page, downscaled
        Image.fromarray(rng.integers(0, 256, (150, 640), dtype=np.uint8), "L"),  # grayscale landscape
        Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA"),  # RGBA, upscaled
        Image.fromarray(rng.integers(0, 256, (2000, 30, 3), dtype=np.uint8)),  # 67:1 strip
        _document(112, 224, 2),  # already a multiple of 28 within budget: no resampling
    ]


@pytest.fixture(scope="module")
def processors(tiny_models):
    """{family: (colpali processor, runtime preprocessor)} with params taken from the colpali one."""
    from sapindex.models._compat import prepare_torch_side

    prepare_torch_side()
    import colpali_engine.models as cm

    from sapindex.exporter.preprocessing_params import qwen2_vl_params

    out = {}
    for family in FAMILIES:
        cls = cm.ColQwen2Processor if family == "colqwen2" else cm.ColQwen2_5_Processor
        colpali = cls.from_pretrained(str(tiny_models[family]), local_files_only=True)
        params = Qwen2VLParams.from_dict(json.loads(json.dumps(qwen2_vl_params(colpali))))
        out[family] = (colpali, Qwen2VLPreprocessor(params, tiny_models[family] / "tokenizer.json"))
    return out


def _numpy(batch):
    return {k: v.numpy() for k, v in batch.items()}


# -- smart_resize and params ---------------------------------------------------------------------


def test_smart_resize_matches_transformers():
    from sapindex.models._compat import prepare_torch_side

    prepare_torch_side()
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 200), (200, 1), (3, 599), (28, 28), (27, 29), (14, 14), (2480, 3508), (3508, 2480),
             (10000, 50), (50, 10000), (700, 140000), (42, 42), (56, 56), (41, 43)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    sizes += [(h, max(1, h // int(r)))
              for h, r in zip(rng.integers(200, 20000, 100), rng.integers(2, 200, 100), strict=True)]
    budgets = [(56 * 56, 28 * 28 * 1280), (4 * 784, 64 * 784), (784, 768 * 784), (100352, 602112)]
    for h, w in sizes:
        for lo, hi in budgets:
            if max(h, w) / min(h, w) > 200:
                continue
            assert smart_resize(h, w, 28, lo, hi) == reference(h, w, 28, lo, hi), (h, w, lo, hi)


@pytest.mark.parametrize("size", [(1, 201), (30000, 100), (0, 10)])
def test_smart_resize_refuses_like_transformers(size):
    with pytest.raises(SapIndexError):
        smart_resize(*size, 28, 3136, 50176)


def test_params_round_trip_and_missing_keys(processors):
    params = processors["colqwen2"][1].params
    d = json.loads(json.dumps(params.to_dict()))
    assert Qwen2VLParams.from_dict(d) == params
    assert Qwen2VLParams.from_dict({**d, "added_later": 1}) == params
    del d["max_pixels"], d["pad_token_id"]
    with pytest.raises(SapIndexError, match="missing keys max_pixels, pad_token_id"):
        Qwen2VLParams.from_dict(d)
    with pytest.raises(SapIndexError, match="padding_side"):
        Qwen2VLParams.from_dict({**params.to_dict(), "padding_side": "middle"})


def test_params_extracted_from_colpali(processors):
    d = processors["colqwen2_5"][1].params.to_dict()
    assert d["min_pixels"] == 4 * 784 and d["max_pixels"] == 64 * 784  # the tiny spec's budget
    assert d["resample"] == "bicubic" and d["padding_side"] == "left" and d["n_augmentation"] == 10
    assert d["visual_prompt"].count("<|image_pad|>") == 1 and d["query_augmentation_token"] == "<|endoftext|>"


# -- pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_pages_match_colpali(processors, family):
    colpali, runtime = processors[family]
    pages = _pages()
    ref, got = _numpy(colpali.process_images(pages)), runtime.pages(pages)
    assert list(got) == list(ref) == ["input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                      "image_grid_thw"]
    for key in ref:
        assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape, key
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert len({tuple(g) for g in got["image_grid_thw"]}) == len(pages)  # really mixed sizes
    assert (got["attention_mask"] == 0).any() and (got["attention_mask"][:, -1] == 1).all()  # left padding

    bound = (TORCHVISION_MAX_LEVELS + 1e-3) / 255 / min(runtime.params.image_std)
    diff = np.abs(got["pixel_values"] - ref["pixel_values"])
    assert diff.max() <= bound, f"max |runtime - torchvision| = {diff.max():.5f} > {bound:.5f}"
    assert (diff > 0.5 / 255 / max(runtime.params.image_std)).mean() < 0.02  # a few values, not the page
    # The image at its native size is not resampled by either backend: only float32 rounding differs
    # (torchvision fuses the rescale into mean/std).
    n = int(np.prod(got["image_grid_thw"][4]))
    np.testing.assert_allclose(got["pixel_values"][4, :n], ref["pixel_values"][4, :n], rtol=0, atol=1e-6)
    # Zero padding per image, as colpali's pad_sequence.
    for i, (_t, gh, gw) in enumerate(got["image_grid_thw"]):
        assert not got["pixel_values"][i, gh * gw:].any()


@pytest.mark.parametrize("family", FAMILIES)
def test_pixels_identical_to_transformers_pil_backend(processors, family, pil_resize_horizontal_first):
    """Same arithmetic bit for bit, given the same resize pass order (horizontal first)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    colpali, runtime = processors[family]
    reference = Qwen2VLImageProcessorPil(**colpali.image_processor.to_dict())
    pages = _pages()
    got = runtime.pages(pages)
    ref = reference.preprocess([p.convert("RGB") for p in pages], return_tensors="np")
    np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
    counts = got["image_grid_thw"].prod(axis=1)
    unpadded = np.concatenate([got["pixel_values"][i, :n] for i, n in enumerate(counts)])
    assert unpadded.dtype == ref["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(unpadded, ref["pixel_values"])


@pytest.mark.parametrize("family", FAMILIES)
def test_layouts(processors, family):
    colpali, runtime = processors[family]
    pages = _pages()
    batch = runtime.pages(pages)
    ref_mask = colpali.get_image_mask(colpali.process_images(pages)).numpy()
    for i, (page, (positions, layout)) in enumerate(zip(pages, runtime.layouts(batch), strict=True)):
        rows, cols = layout.grid
        assert layout == TokenLayout.raster(rows, cols)  # sequence order is raster order, no global grid
        assert (rows, cols) == runtime.visual_grid(page.height, page.width)
        assert (rows * 2, cols * 2) == tuple(batch["image_grid_thw"][i, 1:])
        np.testing.assert_array_equal(positions, np.flatnonzero(ref_mask[i]))
        assert (np.diff(positions) == 1).all()  # one contiguous run
        if family == "colqwen2":
            n_x, n_y = colpali.get_n_patches((page.width, page.height), spatial_merge_size=2)
            assert (rows, cols) == (n_y, n_x)


def test_layouts_refuse_a_wrong_image_token_count(processors):
    runtime = processors["colqwen2"][1]
    batch = runtime.pages(_pages()[:1])
    batch["image_grid_thw"] = batch["image_grid_thw"] * np.array([1, 2, 1])  # twice the rows the ids hold
    with pytest.raises(SapIndexError, match="image tokens, expected"):
        runtime.layouts(batch)


def test_preprocessors_cover_every_backbone_and_refuse_unknown_families(tmp_path):
    from sapindex.families import BACKBONES
    from sapindex.runtime.preprocess import PREPROCESSORS, preprocessor_for

    assert set(PREPROCESSORS) == set(BACKBONES)
    bundle = SimpleNamespace(path=tmp_path, family="nope", manifest={}, tokenizer_path=tmp_path / "tokenizer.json")
    with pytest.raises(SapIndexError, match="family 'nope' has no runtime preprocessing"):
        preprocessor_for(bundle)


def test_empty_batches_are_refused(processors):
    runtime = processors["colqwen2"][1]
    with pytest.raises(SapIndexError):
        runtime.pages([])
    with pytest.raises(SapIndexError):
        runtime.queries([])


# -- queries ----------------------------------------------------------------------------------

QUERIES = ["revenue", "What was the total revenue in 2021 compared with the year before?",
           "  spaces  and\ttabs\nnewline ", "ünïcödé — 数字 123", ""]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("texts", [QUERIES, QUERIES[1:2]], ids=["mixed-lengths", "single"])
def test_queries_match_colpali(processors, family, texts):
    colpali, runtime = processors[family]
    ref, got = _numpy(colpali.process_queries(texts)), runtime.queries(texts)
    assert list(got) == list(ref) == ["input_ids", "attention_mask", "mm_token_type_ids"]
    for key in ref:
        assert got[key].dtype == ref[key].dtype == np.int64, key
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_exported_tokenizer_json_is_equivalent(processors, tmp_path):
    """The bundle ships the tokenizer transformers really uses; it encodes as the checkpoint's file."""
    from sapindex.exporter.preprocessing_params import write_tokenizer_json

    colpali, runtime = processors["colqwen2"]
    bundled = Qwen2VLPreprocessor(runtime.params, write_tokenizer_json(colpali, tmp_path / "tokenizer.json"))
    for key, value in runtime.queries(QUERIES).items():
        np.testing.assert_array_equal(bundled.queries(QUERIES)[key], value)
    pages = _pages()[:2]
    np.testing.assert_array_equal(bundled.pages(pages)["input_ids"], runtime.pages(pages)["input_ids"])
    assert math.isclose(runtime.params.rescale_factor, 1 / 255)
