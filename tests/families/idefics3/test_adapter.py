"""Idefics3 / ColIdefics3 (ColSmol), torch adapter: checkpoint reload, ``forward_embeddings`` and hook
centrality against colpali-engine's own forward and attention.

Fixtures in this folder's conftest.py.
"""

import json

import numpy as np
import torch
from helpers import IDEFICS3_SIDE as SIDE
from helpers import QUERIES
from helpers import idefics3_pages as _pages


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
    for b, (page, layout) in enumerate(zip(encoded, layouts, strict=True)):
        assert page.centrality.shape == (3, layout.n_tokens) and page.grid == layout.grid
        np.testing.assert_allclose(page.embeddings, emb[b][visual[b]].numpy(), atol=1e-6)
    assert [layout.n_tokens for layout in layouts] == [160, 112, 160]


# -- torch-free preprocessing ----------------------------------------------------------------------
