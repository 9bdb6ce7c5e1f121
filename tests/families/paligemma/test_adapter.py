"""PaliGemma / ColPali, torch adapter: checkpoint reload, ``forward_embeddings`` and hook centrality
against the checkpoint classes' own forward and attention, attention masks, LoRA over a local base.

Both flavours (``colpali``, ``colpali_hf``); fixtures in this folder's conftest.py.
"""

import json

import numpy as np
import pytest
import torch
from helpers import COLPALI_FLAVOURS as FLAVOURS
from helpers import QUERIES
from helpers import colpali_page as _page
from helpers import colpali_pages as _pages


def _reference(adapter, inputs):
    """The checkpoint class's own forward: ColPali returns the tensor, ColPaliForRetrieval an output object."""
    out = adapter.model(**inputs)
    return out.embeddings if adapter.is_hf else out


def _layer0_attention(adapter, inputs):
    with torch.no_grad():
        return adapter.backbone()(**inputs, output_attentions=True).attentions[0]  # [B, H, S, S]


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
    targets = (r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
               r"|.*(custom_text_proj).*$)")
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
