"""Export-ready forward passes for ColPali (PaliGemma: SigLIP + Gemma), both checkpoint flavours.

What PaliGemma's forward does that cannot be exported as is, and what replaces it here:

- image features are ``masked_scatter``ed into the token embeddings (data-dependent): they are
  gathered by a running count of image tokens instead (:class:`~.decoder.DecoderGraph`);
- the prefix-LM mask comes from ``create_causal_mask`` with a ``block_sequence_ids`` overlay
  (Python mask functions): it is written out as ``allowed(i, j) = valid[j] & (j <= i |
  (prefix[i] & prefix[j]))`` from an explicit ``prefix_mask`` input (1 = the bidirectional
  block: ``token_type_ids == 0`` in the torch model, padding included). That input is what
  lets one graph serve pages (all 1), transformers' queries (all 1) and colpali-engine's
  queries (all 0: plain causal);
- the decoder runs in eager form, unrolled, so the window layers' attention is reduced in-graph
  to SAP in-degree exactly as for Qwen2-VL. Gemma specifics come with the reused submodules:
  RMSNorm ``x * (1 + w)`` in fp32 and the ``sqrt(hidden)`` embedding scale (in the weight dtype)
  of ``embed_tokens``; image features are not scaled. Positions are ``arange(S) + 1`` whatever
  the padding (PaliGemma's 1-based positions); one KV head (MQA) is repeated over the heads.

The vision graph is the SigLIP tower (fixed ``image_size``: only the batch axis varies) and the
projector; no mask, every patch attends every patch.
"""

from __future__ import annotations

import torch
from torch import nn

from sapindex.exporter.graphs import TEXT_AXES, TOLERANCES, GraphSpec
from sapindex.exporter.graphs.decoder import DecoderGraph, additive_mask
from sapindex.exporter.preprocessing_params import paligemma_params


class VisionGraph(nn.Module):
    """``pixel_values [B, 3, S, S]`` -> ``image_embeds [B, (S/patch)^2, hidden]`` (fp32 between graphs)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.tower = backbone.vision_tower
        self.projector = backbone.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # the tower's pieces, not its decorated forward (output capturing and config defaults
        # are Python-level machinery dynamo need not trace)
        x = self.tower.embeddings(pixel_values)  # [B, T, E]: patch conv + learned positions
        x = self.tower.encoder(inputs_embeds=x).last_hidden_state  # [B, T, E], no mask
        x = self.tower.post_layernorm(x)
        return self.projector(x).float()  # [B, T, hidden]


class TextGraph(DecoderGraph):
    """Gemma decoder + multi-vector head with in-graph SAP centrality under the prefix-LM mask.

    Inputs: ``input_ids [B, S]``, ``attention_mask [B, S]``, ``image_embeds [B, T, hidden]``
    (a zero ``[B, 1, hidden]`` for queries), ``prefix_mask [B, S]`` int64. Outputs as the
    Qwen2-VL text graph: ``embeddings [B, S, dim]``, ``centrality [B, S]``, ``eos_attention [B, S]``.
    """

    def __init__(self, backbone: nn.Module, proj: nn.Module, window: tuple[int, int], centrality: bool = True):
        cfg = backbone.config
        super().__init__(backbone.language_model, proj, cfg.text_config, cfg.image_token_id, window, centrality)

    def forward(self, input_ids, attention_mask, image_embeds, prefix_mask):
        seq = input_ids.shape[1]
        x, is_image, _rank = self._merge_image_features(input_ids, image_embeds)
        i = torch.arange(seq, device=input_ids.device)
        causal = i.view(1, seq, 1) >= i.view(1, 1, seq)  # [1, S, S]
        prefix = prefix_mask.bool()
        block = prefix.unsqueeze(2) & prefix.unsqueeze(1)  # [B, S, S] both ends in the bidirectional block
        allowed = (causal | block) & attention_mask.bool().unsqueeze(1)  # [B, S, S]
        cos, sin = self._rope_1d(i + 1, x.dtype)  # 1-based positions, padding ignored (as PaliGemma)
        return self._decode(x, attention_mask, is_image, additive_mask(allowed), cos, sin)


def build(adapter, window: tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    """The adapter's ``PaliGemmaModel`` and head (either checkpoint flavour) as (vision, text) graphs."""
    backbone = adapter.backbone()
    return VisionGraph(backbone), TextGraph(backbone, adapter.projection(), window)


SPEC = GraphSpec(
    build=build,
    params=paligemma_params,
    # fixed image size: only the batch axis of the pixels varies
    dynamic_axes={"vision": {"pixel_values": {0: "batch"}},
                  "text": {**TEXT_AXES, "prefix_mask": {0: "batch", 1: "seq"}}},
    tolerances=TOLERANCES,
)
