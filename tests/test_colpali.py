"""ColPali (PaliGemma) in both flavours: the torch adapter against the checkpoint classes' own
forward and attention, and the torch-free preprocessing against the live processors.

``colpali``: colpali-engine ``ColPali`` + its ``ColPaliProcessor``; ``colpali_hf``: transformers
``ColPaliForRetrieval`` + transformers' ``ColPaliProcessor``. Both tiny checkpoints are random
(SigLIP 112 px -> 8x8 image tokens, Gemma 6 layers with one KV head).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.base import TORCHVISION_MAX_LEVELS
from sapindex.runtime.preprocess.paligemma import PaliGemmaParams, PaliGemmaPreprocessor

FLAVOURS = {"colpali": False, "colpali_hf": True}
SIZES = ((420, 300), (230, 520), (360, 360), (150, 210))  # (height, width), validate.VALIDATION_SIZES[:4]
QUERIES = ["revenue", "What was the total revenue in 2021 compared with the year before?",
           "ünïcödé — 数字 123", "  spaces\tand\nnewlines ", " ".join(["annual report growth"] * 40)]


def _page(height, width, seed=0):
    """Black strokes and text on white plus a noisy band: sharp edges and texture for the resampler."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(6, height - 10, 17):
        draw.text((5, y), f"Table {rng.integers(100)}: {rng.integers(10**6)}", fill=(0, 0, 0))
    draw.line((0, height - 1, width - 1, 0), fill=(20, 40, 220), width=2)
    band = np.asarray(image).copy()
    band[height // 2: height // 2 + 20] = rng.integers(0, 256, (min(20, height - height // 2), width, 3))
    return Image.fromarray(band)


def _pages():
    """The validation sizes (downscaled), an upscaled thumbnail, a page already at 112 px, L and RGBA modes."""
    pages = [_page(h, w, i) for i, (h, w) in enumerate(SIZES)]
    rng = np.random.default_rng(7)
    small, native = (
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 30), (112, 112))
    )
    return pages + [small, native, pages[0].convert("L"), pages[1].convert("RGBA")]


@pytest.fixture(scope="session")
def colpali_dirs(tiny_models):
    return {name: tiny_models[name] for name in FLAVOURS}


@pytest.fixture(scope="session")
def colpali_adapters(colpali_dirs):
    """Loaded through the registry and ``load_adapter``, as every command loads them."""
    from sapindex.models.adapters import load_adapter
    from sapindex.models.paligemma import PaliGemmaAdapter

    adapters = {name: load_adapter(path) for name, path in colpali_dirs.items()}
    assert all(type(a) is PaliGemmaAdapter and a.info.family.name == name for name, a in adapters.items())
    return adapters


@pytest.fixture(scope="session")
def runtimes(colpali_adapters, tmp_path_factory):
    """{flavour: runtime preprocessor} built the bundle's way: params and tokenizer.json from the live processor."""
    from sapindex.exporter.preprocessing_params import paligemma_params, write_tokenizer_json

    out = {}
    for name, adapter in colpali_adapters.items():
        params = PaliGemmaParams.from_dict(json.loads(json.dumps(paligemma_params(adapter.processor))))
        tokenizer = write_tokenizer_json(adapter.processor, tmp_path_factory.mktemp(name) / "tokenizer.json")
        out[name] = PaliGemmaPreprocessor(params, tokenizer)
    return out


def _reference(adapter, inputs):
    """The checkpoint class's own forward: ColPali returns the tensor, ColPaliForRetrieval an output object."""
    out = adapter.model(**inputs)
    return out.embeddings if adapter.is_hf else out


def _layer0_attention(adapter, inputs):
    with torch.no_grad():
        return adapter.backbone()(**inputs, output_attentions=True).attentions[0]  # [B, H, S, S]


# -- checkpoints and adapter ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FLAVOURS)
def test_checkpoint_reloads_without_missing_weights(colpali_dirs, name):
    import colpali_engine.models as cm
    import transformers

    cls = transformers.ColPaliForRetrieval if FLAVOURS[name] else cm.ColPali
    _model, loading = cls.from_pretrained(str(colpali_dirs[name]), attn_implementation="eager",
                                          output_loading_info=True, local_files_only=True)
    assert not any(loading.values()), loading
    config = json.loads((colpali_dirs[name] / "config.json").read_text())
    assert config["model_type"] == ("colpali" if FLAVOURS[name] else "paligemma")


@pytest.mark.parametrize("name", FLAVOURS)
def test_forward_embeddings_equals_model_forward(colpali_adapters, name):
    adapter = colpali_adapters[name]
    pages = adapter.page_inputs(_pages()[:2])
    assert "labels" not in pages and not pages["token_type_ids"].any()
    for inputs in (pages, adapter.query_inputs(QUERIES)):
        with torch.no_grad():
            ref, got = _reference(adapter, inputs), adapter.forward_embeddings(inputs)
        assert got.shape == ref.shape and got.shape[-1] == 128
        assert (got - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", FLAVOURS)
def test_hook_centrality_equals_output_attentions(colpali_adapters, name):
    adapter = colpali_adapters[name]
    images = _pages()[:3]
    encoded = adapter.encode_pages(images, layers=(0, 3, 5))
    inputs = adapter.page_inputs(images)
    visual = adapter.visual_mask(inputs)  # [B, S]
    with torch.no_grad():
        out = adapter.backbone()(**inputs, output_attentions=True)
        emb = adapter.forward_embeddings(inputs)
    for row, layer in enumerate((0, 3, 5)):
        attn = out.attentions[layer].double()  # [B, H, S, S]
        for b, page in enumerate(encoded):
            vis = visual[b]
            in_degree = attn[b][:, vis][:, :, vis].sum(dim=1).mean(dim=0)  # [V]: visual rows -> visual columns
            np.testing.assert_allclose(page.centrality[row], in_degree.numpy(), rtol=1e-5, atol=1e-6)
    for b, page in enumerate(encoded):
        assert page.grid == (8, 8) and page.centrality.shape == (3, 64)
        np.testing.assert_allclose(page.embeddings, emb[b][visual[b]].numpy(), atol=1e-6)
    assert visual[:, :64].all() and not visual[:, 64:].any()  # the image block comes first


@pytest.mark.parametrize("name", FLAVOURS)
def test_attention_masks(colpali_adapters, runtimes, name):
    """Pages: one bidirectional block; engine queries causal, hf queries bidirectional; and the
    runtime's ``prefix_mask`` rule ``valid[j] & (j <= i | prefix[i] & prefix[j])`` is exactly
    where the model's layer-0 attention is non-zero (rows with at least one allowed key)."""
    adapter, runtime = colpali_adapters[name], runtimes[name]
    for inputs, batch in ((adapter.page_inputs(_pages()[:2]), runtime.pages(_pages()[:2])),
                          (adapter.query_inputs(QUERIES), runtime.queries(QUERIES))):
        attn = _layer0_attention(adapter, inputs)  # [B, H, S, S]
        valid = inputs["attention_mask"].bool()  # [B, S]
        upper = torch.triu(attn, diagonal=1) * (valid[:, None, :, None] & valid[:, None, None, :])
        prefix = torch.from_numpy(batch["prefix_mask"]).bool()
        n = valid.shape[1]
        causal = torch.ones(n, n).tril().bool()
        allowed = valid[:, None, :] & (causal | (prefix[:, :, None] & prefix[:, None, :]))  # [B, S, S]
        rows = allowed.any(dim=-1)  # engine left-padding rows see nothing: the model spreads them uniformly
        seen = (attn > 0).all(dim=1)  # [B, S, S], same for every head
        np.testing.assert_array_equal(seen[rows].numpy(), allowed[rows].numpy())
        if "pixel_values" in inputs:
            assert upper[:, :, :64, :64].sum() > 0  # image rows attend later image columns
        elif FLAVOURS[name]:
            assert upper.sum() > 0  # hf queries: one bidirectional block
        else:
            assert upper.sum() == 0  # colpali-engine queries: plain causal


# -- torch-free preprocessing ----------------------------------------------------------------------


def _numpy(batch):
    return {k: v.numpy() for k, v in batch.items()}


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
    for (positions, layout), ids in zip(runtime.layouts(got), ref["input_ids"]):
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


@pytest.mark.parametrize("name", FLAVOURS)
def test_graph_inputs_match_the_runtime(colpali_adapters, runtimes, name):
    """What export validation feeds the graphs from the processor's tensors (``graph_inputs``:
    ``prefix_mask`` from ``token_type_ids == 0``, or all 0 without them) is what the torch-free
    preprocessor builds from the text alone."""
    adapter, runtime = colpali_adapters[name], runtimes[name]
    for inputs, batch in ((adapter.page_inputs(_pages()[:2]), runtime.pages(_pages()[:2])),
                          (adapter.query_inputs(QUERIES), runtime.queries(QUERIES))):
        feed = adapter.graph_inputs(inputs)
        assert feed["prefix_mask"].dtype == torch.int64
        for key in ("input_ids", "attention_mask", "prefix_mask"):
            np.testing.assert_array_equal(feed[key].numpy(), batch[key], err_msg=key)
    extras = runtime.query_extras(runtime.queries(QUERIES), hidden=64)
    assert list(extras) == ["image_embeds"] and extras["image_embeds"].shape == (len(QUERIES), 1, 64)


def test_colpali_lora_over_a_local_base_merges(colpali_dirs, tmp_path):
    """ColPali v1.x ships as a LoRA on ``colpaligemma-3b-pt-448-base``: the adapter (real ColPali's
    target-module pattern, the projection included) merges into the local base given with
    ``base_model`` and gives peft's own merged model's vectors."""
    import shutil

    import colpali_engine.models as cm
    from peft import LoraConfig, get_peft_model

    from sapindex.families import inspect_model_dir
    from sapindex.models.adapters import load_adapter
    from sapindex.models.loading import load_colpali
    from sapindex.models.paligemma import _tie_lm_head

    base = colpali_dirs["colpali"]
    model = load_colpali(inspect_model_dir(base), cm.ColPali, torch.device("cpu"), torch.float32,
                         fix=_tie_lm_head)
    torch.manual_seed(3)
    targets = r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    adapter_dir = tmp_path / "colpali-v1.3"
    peft_model.save_pretrained(adapter_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (base / name).exists():
            shutil.copy(base / name, adapter_dir / name)
    merged = peft_model.merge_and_unload()
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "vidore/colpaligemma-3b-pt-448-base"  # as published: a hub id
    (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg))

    adapter = load_adapter(adapter_dir, base_model=base)
    assert adapter.info.is_lora and adapter.info.family.name == "colpali"
    page = _page(300, 240)
    inputs = adapter.page_inputs([page])
    with torch.no_grad():
        ref = merged(**inputs)[0][adapter.visual_mask(inputs)[0]].numpy()
    np.testing.assert_allclose(adapter.encode_pages([page])[0].embeddings, ref, atol=1e-5)
    plain = load_adapter(base).encode_pages([page])[0].embeddings
    assert np.abs(plain - ref).max() > 1e-3, "the adapter must change the model"
