"""Fast mode against a direct PyTorch computation: the model's own decoder layers after the SAP window,
run on the prompt and kept tokens only, with the states, rotary tables and attention mask that the
model's own forward gives those tokens on the whole page (their rows and columns of it)."""

import numpy as np
import pytest
import torch
from PIL import Image

from sapindex.models.adapters import load_adapter
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, default_weights_path, example_pages
from sapindex.runtime.encoder import Encoder
from sapindex.runtime.options import IndexOptions

FAMILIES = ["colqwen2", "colqwen2_5", "jina_v4", "colpali", "colpali_hf", "colidefics3"]
NEG = torch.finfo(torch.float32).min


def _text_model(adapter, layers):
    """The module that holds the decoder layers (and the final norm)."""
    return next(m for m in adapter.model.modules() if getattr(m, "layers", None) is not None
                and len(m.layers) == len(layers) and m.layers[0] is layers[0])


def _torch_fast(adapter, image, kept_seq, window_end, causal: bool):
    """One page through the model's own forward; the output of decoder layer ``window_end - 1`` and the
    mask and rotary tables it was given are captured, the non-visual tokens and the visual tokens of sequence ranks
    ``kept_seq`` are taken from them (states, rotary tables, the mask's rows and columns; a causal
    mask among them when the model passes none), and the later layers, final norm and projection run
    on those tokens alone -> ``[k, dim]`` in ``kept_seq`` order."""
    inputs = adapter.page_inputs([image])
    layers = adapter.decoder_layers()
    seen = {}

    def grab(_module, _args, kwargs, output):  # the window's last layer: its output, and the kwargs every layer gets
        seen["states"] = output[0] if isinstance(output, tuple) else output
        seen["kwargs"] = kwargs

    hook = layers[window_end - 1].register_forward_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.forward_embeddings(inputs)
    finally:
        hook.remove()
    visual_seq = torch.nonzero(adapter.visual_mask(inputs)[0]).squeeze(1)
    kept = visual_seq[torch.as_tensor(np.sort(kept_seq))]
    keep = torch.ones(seen["states"].shape[1], dtype=torch.bool)
    keep[visual_seq] = False
    keep[kept] = True
    if "attention_mask" in inputs:
        keep &= inputs["attention_mask"][0].bool()
    tokens = torch.nonzero(keep).squeeze(1)  # ascending: the original order
    seq, n = seen["states"].shape[1], len(tokens)
    x = seen["states"][:, tokens]
    cos, sin = (t.index_select(list(t.shape).index(seq, 1), tokens) for t in seen["kwargs"]["position_embeddings"])
    mask = seen["kwargs"].get("attention_mask")
    if isinstance(mask, torch.Tensor):
        mask = mask[..., tokens, :][..., tokens]
        mask = torch.where(mask, 0.0, NEG) if mask.dtype == torch.bool else mask
    else:
        assert causal, "the model passed no mask to a prefix-LM layer"
        mask = torch.where(torch.ones(n, n, dtype=torch.bool).tril(), 0.0, NEG).view(1, 1, n, n)
    with torch.no_grad():
        for layer in layers[window_end:]:
            out = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        emb = adapter.projection()(_text_model(adapter, layers).norm(x))[0].float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
    rank = {int(t): i for i, t in enumerate(tokens)}
    return emb[[rank[int(t)] for t in visual_seq[torch.as_tensor(kept_seq)]]].numpy()


def _check(encoder, adapter, images, ratios, tolerance):
    """ORT fast mode on the processor's own tensors for ``images`` (one batch) against :func:`_torch_fast`."""
    feed = {k: v.numpy() for k, v in adapter.graph_inputs(adapter.page_inputs(images)).items()}
    encoder.preprocessor.pages = lambda _images: feed  # identical inputs: no resampler difference
    end = encoder.bundle.window[1]  # at the last layer the tail is the final norm and projection alone
    causal = encoder.bundle.attention == "causal"
    layouts = [layout for _pos, layout in encoder.preprocessor.layouts(feed)]
    for ratio in ratios:
        fast = encoder.encode_pages_pruned(images, IndexOptions(keep_ratio=ratio, mode="fast"))
        for image, layout, page in zip(images, layouts, fast, strict=True):
            expected = _torch_fast(adapter, image, layout.order[page.positions], end, causal)
            assert expected.shape == page.vectors.shape
            assert np.abs(page.vectors - expected).max() <= tolerance, ratio


def test_fast_mode_equals_pytorch_on_the_trained_micro_model():
    """Two example pages of different sizes in one ONNX batch (the tail's padding), at three ratios."""
    encoder = Encoder(Bundle.open(default_bundle_path()))
    images = [Image.open(p).convert("RGB") for p in example_pages()[:2]]
    _check(encoder, load_adapter(default_weights_path()), images, (0.2, 0.1, 0.05), 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_mode_equals_pytorch_for_every_family(bundles, adapters, family):
    """Every family's own positions and masks: M-RoPE (Qwen2-VL, Qwen2.5-VL), 1-based RoPE with the
    bidirectional prefix block (ColPali), tiles and the global tile out of spatial order (Idefics3)."""
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for h, w in ((200, 150),
                                                                                              (330, 300))]
    _check(Encoder(Bundle.open(bundles[family][1])), adapters[family], images, (0.5, 0.2), 1e-4)
