"""Export-ready forward passes for the Qwen2-VL family (ColQwen2, ColQwen2.5).

colpali-engine's forward cannot be exported as is: the vision tower splits packed patches by
``cu_seqlens`` (data-dependent), M-RoPE positions come from Python loops over ``.tolist()``, and
image features are placed with ``masked_scatter``. These modules reuse the same HF submodules
and weights and re-express only that glue as plain batched tensor ops:

- vision: one padded row per page ``[B, P, 1176]``; a page's patches attend only to valid
  patches of the same page (and, for Qwen2.5-VL windowed blocks, of the same window), which is
  the block-diagonal attention of ``cu_seqlens`` written as a mask in the original patch order;
- text: image features are gathered by a running count of image tokens; M-RoPE positions are
  computed in closed form from the attention mask and the merged grid; decoder layers are
  unrolled in eager form so the window layers' attention probabilities exist in the graph and
  are reduced there to SAP in-degree centrality.

Two graphs share no weight: ``vision`` (pixels -> merged image features) and ``text`` (ids +
image features -> embeddings + centrality). Queries run the text graph alone. The text graph is
a :class:`~.decoder.DecoderGraph` (feature placement, unrolled layers, in-graph centrality,
head), as the other backbones' are. jina-embeddings-v4 is a Qwen2.5-VL and exports through
this module too.
"""

from __future__ import annotations

import torch
from torch import nn

from sapindex.exporter.graphs import TEXT_AXES, TOLERANCES, GraphSpec
from sapindex.exporter.graphs.decoder import NEG, DecoderGraph, additive_mask, causal_padding_mask, rotate_half
from sapindex.exporter.preprocessing_params import qwen2_vl_params


class VisionGraph(nn.Module):
    """``pixel_values [B, P, C*T*ps*ps]``, ``image_grid_thw [B, 3]`` -> ``image_embeds [B, P/4, D]``."""

    def __init__(self, visual: nn.Module, windowed: bool):
        super().__init__()
        self.visual = visual
        cfg = visual.config
        self.merge = cfg.spatial_merge_size
        self.heads = cfg.num_heads
        self.windowed = windowed
        # Qwen2.5-VL: a window is window_size px = (window_size / patch / merge) merged tokens per side
        self.window = cfg.window_size // cfg.patch_size // cfg.spatial_merge_size if windowed else 0
        self.full_blocks = set(getattr(cfg, "fullatt_block_indexes", ()) or ()) if windowed else None

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        batch, n_patch, _ = pixel_values.shape
        m = self.merge
        grid_h = image_grid_thw[:, 1:2]  # [B, 1] patches per column
        grid_w = image_grid_thw[:, 2:3]  # [B, 1] patches per row
        p = torch.arange(n_patch, device=pixel_values.device).unsqueeze(0)  # [1, P]
        valid = p < grid_h * grid_w  # [B, P]
        # Patches come in merge blocks of m*m: block u = p // m^2 sits at merged (row, col) of the page.
        unit, within = p // (m * m), p % (m * m)
        merged_w = grid_w // m  # [B, 1]
        row, col = unit // merged_w, unit % merged_w  # [B, P]
        h_pos = row * m + within // m
        w_pos = col * m + within % m

        x = self.visual.patch_embed(pixel_values.reshape(batch * n_patch, -1)).reshape(batch, n_patch, -1)  # [B, P, E]
        cos, sin = self._rotary(h_pos, w_pos)  # [B, P, 1, hd]

        pair = valid.unsqueeze(2) & valid.unsqueeze(1)  # [B, P, P]
        full_mask = torch.where(pair, 0.0, NEG).unsqueeze(1)  # [B, 1, P, P]
        window_mask = full_mask
        if self.windowed:
            win = (row // self.window) * 100_000 + col // self.window  # [B, P] window id
            same = pair & (win.unsqueeze(2) == win.unsqueeze(1))
            window_mask = torch.where(same, 0.0, NEG).unsqueeze(1)
        for idx, block in enumerate(self.visual.blocks):
            mask = full_mask if (not self.windowed or idx in self.full_blocks) else window_mask
            x = x + self._attention(block.attn, block.norm1(x), cos, sin, mask)
            x = x + block.mlp(block.norm2(x))
        merged = self.visual.merger(x.reshape(batch * n_patch, -1))  # [B*P/m^2, D]
        return merged.reshape(batch, n_patch // (m * m), -1).float()  # [B, P/m^2, D], fp32 between graphs

    def _rotary(self, h_pos: torch.Tensor, w_pos: torch.Tensor):
        inv = self.visual.rotary_pos_emb.inv_freq  # [hd/4]
        # [B, P, hd/2]
        freqs = torch.cat([h_pos.unsqueeze(-1).float() * inv, w_pos.unsqueeze(-1).float() * inv], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)  # [B, P, 1, hd]
        return emb.cos(), emb.sin()

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos, sin, mask: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        qkv = attn.qkv(x).reshape(batch, n, 3, self.heads, dim // self.heads)  # [B, P, 3, h, hd]
        q, k, v = qkv.unbind(2)  # each [B, P, h, hd]
        # rotary in fp32, back to the weights' dtype (as transformers does)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype).transpose(1, 2)  # [B, h, P, hd]
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype).transpose(1, 2)
        v = v.transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling + mask  # [B, h, P, P] fp32
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, n, dim)  # [B, P, E]
        return attn.proj(out)


class TextGraph(DecoderGraph):
    """Qwen2-VL decoder + projection with in-graph SAP centrality (see :class:`DecoderGraph`).

    Inputs: ``input_ids [B, S]``, ``attention_mask [B, S]``, ``image_embeds [B, T, D]``,
    ``image_grid_thw [B, 3]``. Outputs: ``embeddings [B, S, dim]`` (L2-normalised, zero at padding,
    as colpali-engine returns them), ``centrality [B, S]`` (window-mean visual in-degree, zero
    at non-visual positions) and ``eos_attention [B, S]`` (the final layer's attention from the
    last valid token, head mean: the final-layer baseline SAP is compared with). Rows without
    image tokens (queries) use positions ``0..S-1``, as transformers does for text-only input;
    pass a zero ``image_embeds [B, 1, D]`` for them.
    """

    def __init__(self, model: nn.Module, window: tuple[int, int], centrality: bool = True):
        cfg = model.config
        super().__init__(model.language_model, model.custom_text_proj, cfg.text_config, cfg.image_token_id, window,
                         centrality)
        self.merge = int(cfg.vision_config.spatial_merge_size)
        self.mrope_section = list(self.lm.rotary_emb.mrope_section)

    def forward(self, input_ids, attention_mask, image_embeds, image_grid_thw):
        valid = attention_mask.bool()  # [B, S]
        x, is_image, img_rank = self._merge_image_features(input_ids, image_embeds)
        position_ids = self._positions(valid, is_image, img_rank, image_grid_thw)  # [3, B, S]
        cos, sin = self._rotary(position_ids, x.dtype)  # [B, 1, S, hd]
        mask = additive_mask(causal_padding_mask(attention_mask))  # causal + padding
        return self._decode(x, attention_mask, is_image, mask, cos, sin)

    def _positions(self, valid, is_image, img_rank, image_grid_thw):
        """M-RoPE position ids ``[3, B, S]``, closed form of transformers' ``get_rope_index`` for one image per row."""
        seq = valid.shape[1]
        pos_valid = torch.cumsum(valid.long(), dim=1) - 1  # [B, S] index among valid tokens
        n_img = is_image.long().sum(dim=1, keepdim=True)  # [B, 1]
        merged_h = image_grid_thw[:, 1:2] // self.merge  # [B, 1]
        merged_w = image_grid_thw[:, 2:3] // self.merge
        first = torch.where(is_image, pos_valid, torch.full_like(pos_valid, seq)).min(dim=1, keepdim=True).values
        after = (~is_image) & (pos_valid > first)
        text = pos_valid + after.long() * (torch.maximum(merged_h, merged_w) - n_img)  # [B, S]
        rank = img_rank.clamp(min=0)
        t_pos = torch.where(is_image, first, text)
        h_pos = torch.where(is_image, first + rank // merged_w.clamp(min=1), text)
        w_pos = torch.where(is_image, first + rank % merged_w.clamp(min=1), text)
        mm = torch.stack([t_pos, h_pos, w_pos])  # [3, B, S]
        mm = mm * valid.long().unsqueeze(0)  # padding positions are 0, as transformers leaves them
        plain = torch.arange(seq, device=valid.device).view(1, 1, seq).expand(3, valid.shape[0], seq)
        return torch.where((n_img > 0).unsqueeze(0), mm, plain)

    def _rotary(self, position_ids, dtype):
        inv = self.lm.rotary_emb.inv_freq  # [hd/2]
        freqs = position_ids.unsqueeze(-1).float() * inv  # [3, B, S, hd/2]
        chunks = freqs.split(self.mrope_section, dim=-1)
        freqs = torch.cat([c[i % 3] for i, c in enumerate(chunks)], dim=-1)  # [B, S, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)  # [B, 1, S, hd]
        scale = self.lm.rotary_emb.attention_scaling
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def build(adapter, window: tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    """The adapter's model as (vision, text) graphs; Qwen2.5-VL vision towers attend in windows."""
    windowed = adapter.info.family.model_type == "qwen2_5_vl"
    return VisionGraph(adapter.model.visual, windowed=windowed), TextGraph(adapter.model, window)


SPEC = GraphSpec(
    build=build,
    params=qwen2_vl_params,
    # dynamic resolution: the patch count varies with the page, and so does the grid per row
    dynamic_axes={"vision": {"pixel_values": {0: "batch", 1: "patches"}, "image_grid_thw": {0: "batch"}},
                  "text": {**TEXT_AXES, "image_grid_thw": {0: "batch"}}},
    tolerances=TOLERANCES,
)
