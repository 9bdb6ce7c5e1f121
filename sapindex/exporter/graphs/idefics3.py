"""Export-ready forward passes for ColIdefics3 / ColSmol (Idefics3: SigLIP + pixel shuffle + Llama).

What ``Idefics3Model.forward`` does that cannot be exported as is, and what replaces it here:

- all-zero padding tiles are dropped by a data-dependent boolean mask and the features are
  re-split with ``.tolist()``: here every tile of ``pixel_values [B, N, 3, M, M]`` goes through
  the tower (padding tiles too) and the text graph never gathers a padding tile's features,
  because each page's real tiles come first in its row and a row gathers exactly as many
  feature rows as it has ``<image>`` tokens;
- patch position ids come from ``bucketize`` over the patch attention mask: for a full ``M x M``
  tile they are exactly ``0..P-1``, so the graph adds ``position_embedding.weight[:P]``
  (``Idefics3Adapter.tokens_per_side`` refuses checkpoints whose tiles are not the tower's full
  ``image_size``, the one case where that would differ);
- image features are ``masked_scatter``ed batch-wide: here they are gathered per row by a running
  count of image tokens (:class:`~.decoder.DecoderGraph`), which is the same placement
  because every row's real tiles come first;
- the Llama decoder runs unrolled in eager form (causal + padding mask, positions ``arange(S)``
  whatever the left padding, as transformers does, rotary with ``attention_scaling``, GQA) so
  the window layers' attention is reduced in-graph to SAP in-degree.

The vision graph's connector (``pixel_shuffle`` + projection) is the module itself: its
``int(seq ** 0.5)`` is a Python int at export because the patch count per tile is static.
"""

from __future__ import annotations

import torch
from torch import nn

from sapindex.exporter.graphs import TEXT_AXES, TOLERANCES, GraphSpec
from sapindex.exporter.graphs.decoder import DecoderGraph, additive_mask, causal_padding_mask
from sapindex.exporter.preprocessing_params import idefics3_params


class VisionGraph(nn.Module):
    """``pixel_values [B, N, 3, M, M]`` -> ``image_embeds [B, N*T, hidden]`` (T tokens per tile, fp32)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.vision = backbone.vision_model
        self.connector = backbone.connector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, n_tiles = pixel_values.shape[0], pixel_values.shape[1]
        embeddings = self.vision.embeddings
        tiles = pixel_values.reshape(batch * n_tiles, *pixel_values.shape[2:])  # [B*N, 3, M, M]
        tiles = tiles.to(embeddings.patch_embedding.weight.dtype)
        x = embeddings.patch_embedding(tiles).flatten(2).transpose(1, 2)  # [B*N, P, E]
        x = x + embeddings.position_embedding.weight[: x.shape[1]]  # full tiles: position ids 0..P-1
        x = self.vision.encoder(inputs_embeds=x).last_hidden_state  # [B*N, P, E], no mask: tiles are full
        x = self.vision.post_layernorm(x)
        x = self.connector(x)  # [B*N, T, hidden]: pixel shuffle + projection
        return x.reshape(batch, n_tiles * x.shape[1], x.shape[2]).float()  # [B, N*T, hidden]


class TextGraph(DecoderGraph):
    """Llama decoder + ``linear`` head with in-graph SAP centrality under the causal mask.

    Inputs: ``input_ids [B, S]``, ``attention_mask [B, S]``, ``image_embeds [B, T, hidden]``
    (a zero ``[B, 1, hidden]`` for queries). Outputs as the Qwen2-VL text graph:
    ``embeddings [B, S, dim]``, ``centrality [B, S]``, ``eos_attention [B, S]``, in sequence order.
    """

    def __init__(self, model: nn.Module, window: tuple[int, int], centrality: bool = True):
        backbone = model.model  # Idefics3Model
        cfg = backbone.config
        super().__init__(backbone.text_model, model.linear, cfg.text_config, cfg.image_token_id, window, centrality)

    def forward(self, input_ids, attention_mask, image_embeds):
        seq = input_ids.shape[1]
        x, is_image, _rank = self._merge_image_features(input_ids, image_embeds)
        positions = torch.arange(seq, device=input_ids.device)  # left padding ignored, as LlamaModel
        cos, sin = self._rope_1d(positions, x.dtype)
        mask = additive_mask(causal_padding_mask(attention_mask))
        return self._decode(x, attention_mask, is_image, mask, cos, sin)


def build(adapter, window: tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    """The adapter's ``Idefics3Model`` and ``linear`` head as (vision, text) graphs."""
    return VisionGraph(adapter.model.model), TextGraph(adapter.model, window)


SPEC = GraphSpec(
    build=build,
    params=idefics3_params,
    # fixed tile size: the batch and the tile count (padded to the batch's largest page) vary
    dynamic_axes={"vision": {"pixel_values": {0: "batch", 1: "tiles"}}, "text": TEXT_AXES},
    tolerances=TOLERANCES,
)
