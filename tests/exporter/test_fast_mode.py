"""Fast mode against a direct PyTorch computation: the trained micro model's own decoder layers, run
on the prompt and kept tokens only, at their original M-RoPE positions, with a causal mask among them."""

import numpy as np
import torch
from PIL import Image

from sapindex.models.adapters import load_adapter
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, default_weights_path, example_pages
from sapindex.runtime.encoder import Encoder


def _torch_fast(adapter, image, positions, window_end):
    """The tail of ``adapter``'s model on one page's non-visual tokens plus the visual tokens at
    ``positions`` (sequence order among the visual tokens): the states entering layer ``window_end``
    and the rotary tables as the model's own forward computes them on the whole page, then the model's
    later layers, final norm and projection on the kept tokens alone -> ``[k, dim]``."""
    inputs = adapter.page_inputs([image])
    layers = adapter.decoder_layers()
    seen = {}

    def grab(_module, args, kwargs):
        seen["states"] = args[0] if args else kwargs["hidden_states"]
        seen["rope"] = kwargs["position_embeddings"]

    hook = layers[window_end].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**inputs)
    finally:
        hook.remove()
    visual = adapter.visual_mask(inputs)[0]
    visual_seq = torch.nonzero(visual).squeeze(1)
    keep = ~visual
    keep[visual_seq[torch.as_tensor(positions)]] = True
    tokens = torch.nonzero(keep).squeeze(1)  # ascending: the original order
    seq = seen["states"].shape[1]
    x = seen["states"][:, tokens]
    cos, sin = (t.index_select(t.shape.index(seq, 1), tokens) for t in seen["rope"])
    n = len(tokens)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = torch.where(causal, 0.0, torch.finfo(torch.float32).min).view(1, 1, n, n)
    with torch.no_grad():
        for layer in layers[window_end:]:
            out = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        emb = adapter.projection()(adapter.model.language_model.norm(x))[0]
        emb = emb / emb.norm(dim=-1, keepdim=True)
    kept = torch.isin(tokens, visual_seq[torch.as_tensor(positions)])
    return emb[kept].numpy()


def test_fast_mode_equals_pytorch_on_the_kept_tokens():
    """Two pages of different sizes in one ONNX batch (so the tail's padding is exercised), at three keep
    ratios: each kept vector within 1e-4 of PyTorch's direct computation on the kept tokens alone. The
    pages are cut to multiples of 28 px, which neither preprocessing resamples: both get the same pixels."""
    encoder = Encoder(Bundle.open(default_bundle_path()))
    adapter = load_adapter(default_weights_path())
    end = encoder.bundle.window[1]
    assert end < adapter.n_layers  # the micro window [0, 2) of 6 layers: the tail has 4 layers
    images = [Image.open(p).convert("RGB").crop(box) for p, box in zip(example_pages(), [(0, 0, 616, 868),
                                                                                         (20, 40, 692, 628)])]
    for ratio in (0.2, 0.1, 0.05):
        for image, page in zip(images, encoder.encode_pages_pruned(images, ratio, mode="fast")):
            expected = _torch_fast(adapter, image, page.positions, end)  # grid family: spatial = sequence order
            assert expected.shape == page.vectors.shape
            assert np.abs(page.vectors - expected).max() <= 1e-4
