"""Export-ready forward passes for the Qwen2-VL family (ColQwen2, ColQwen2.5).

colpali-engine's forward cannot be exported as is: the vision tower splits packed patches by
``cu_seqlens`` (data-dependent), M-RoPE positions come from Python loops over ``.tolist()``, and
image features are placed with ``masked_scatter``. These modules reuse the same HF submodules
and weights and re-express only that glue as plain batched tensor ops:

- vision: one padded row per page ``[B, P, 1176]``; a page's patches attend only to valid
  patches of the same page, the block-diagonal attention of ``cu_seqlens``: padding keys are
  pushed to the minimum score inside the product itself. Qwen2.5-VL's windowed blocks attend
  within windows only: patches are put in window order (as transformers does) and each chunk
  of one window's length attends a band of three chunks, so they cost a band, not the page;
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
        self.chunk = self.window * self.window * self.merge * self.merge  # patches in a whole window

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
        band_mask = None
        if self.windowed:  # window by window, as transformers orders them; back to page order at the end
            order, position = self._window_order(valid, p, row, col, within, grid_h // m, merged_w)  # [B, P] each
            x, cos, sin, valid, win = (_gather(t, order) for t in (x, cos, sin, valid, self._window_id(row, col)))
            x, cos, sin, valid, win = _pad_to(self.chunk, (x, 0.0), (cos, 0.0), (sin, 0.0), (valid, False), (win, -1))
            band_mask = self._band_mask(win.masked_fill(~valid, -1))
        # full attention: padding keys score the dtype's minimum through one more column of the
        # product (query 1 x key bias), so no [P, P] mask is added to the scores (measured: bench)
        key_bias = torch.where(valid, 0.0, torch.finfo(x.dtype).min).to(x.dtype)[:, None, :, None]  # [B, 1, P, 1]
        for idx, block in enumerate(self.visual.blocks):
            in_windows = self.windowed and idx not in self.full_blocks
            x = x + self._attention(block.attn, block.norm1(x), cos, sin, key_bias, band_mask if in_windows else None)
            x = x + block.mlp(block.norm2(x))
        if self.windowed:
            x = _gather(x, position)  # [B, P, E] in page order again
        merged = self.visual.merger(x.reshape(batch * n_patch, -1))  # [B*P/m^2, D]
        return merged.reshape(batch, n_patch // (m * m), -1).float()  # [B, P/m^2, D], fp32 between graphs

    def _window_id(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return (row // self.window) * 100_000 + col // self.window  # [B, P]

    def _window_order(self, valid, p, row, col, within, merged_h, merged_w) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, P]`` twice: the patch at each position when patches go window by window (windows
        of ``window`` x ``window`` merge blocks, row-major; blocks row-major inside a window; edge
        windows smaller; padding patches last), transformers' ``get_window_index`` in closed form;
        and its inverse, each patch's position, for the way back."""
        s, mm = self.window, self.merge * self.merge
        w_row, w_col, in_row, in_col = row // s, col // s, row % s, col % s
        rows_here = torch.clamp(merged_h - w_row * s, max=s)  # merge-block rows of this window
        cols_here = torch.clamp(merged_w - w_col * s, max=s)
        block = w_row * s * merged_w + w_col * s * rows_here + in_row * cols_here + in_col
        position = torch.where(valid, block * mm + within, p)  # [B, P], a permutation of 0..P-1
        return torch.zeros_like(position).scatter(1, position, p.expand_as(position)), position

    def _band_mask(self, win: torch.Tensor) -> torch.Tensor:
        """``[B, 1, n, C, 3C]`` additive mask: a query of chunk c may attend the keys of chunks
        c-1..c+1 (a window, at most one chunk long, spans at most two) in its own window."""
        batch, length = win.shape
        chunks = win.reshape(batch, length // self.chunk, self.chunk)  # [B, n, C]
        keys = _band(chunks.unsqueeze(1), fill=-2).squeeze(1)  # [B, n, 3C]; -2: no window
        allowed = (chunks.unsqueeze(-1) == keys.unsqueeze(-2)) & (chunks.unsqueeze(-1) >= 0)
        return torch.where(allowed, 0.0, NEG).unsqueeze(1)

    def _rotary(self, h_pos: torch.Tensor, w_pos: torch.Tensor):
        inv = self.visual.rotary_pos_emb.inv_freq  # [hd/4]
        # [B, P, hd/2]
        freqs = torch.cat([h_pos.unsqueeze(-1).float() * inv, w_pos.unsqueeze(-1).float() * inv], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)  # [B, P, 1, hd]
        return emb.cos(), emb.sin()

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos, sin, key_bias: torch.Tensor,
                   band_mask: torch.Tensor | None) -> torch.Tensor:
        """One block's attention: over the page (``band_mask`` None) or within windows (patches in
        window order, each chunk of queries against its band of keys)."""
        batch, n, dim = x.shape
        qkv = attn.qkv(x).reshape(batch, n, 3, self.heads, dim // self.heads)  # [B, P, 3, h, hd]
        q, k, v = qkv.unbind(2)  # each [B, P, h, hd]
        # rotary in fp32, back to the weights' dtype (as transformers does)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype).transpose(1, 2)  # [B, h, P, hd]
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype).transpose(1, 2)
        v = v.transpose(1, 2)
        if band_mask is None:  # [q * scaling, 1] . [k, bias]: scaled scores with padding keys at the minimum
            q = torch.cat([q * attn.scaling, torch.ones_like(q[..., :1])], dim=-1)
            k = torch.cat([k, key_bias.expand(batch, self.heads, n, 1)], dim=-1)
            probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)).float(), dim=-1).to(v.dtype)  # [B, h, P, P]
            out = torch.matmul(probs, v)
        else:
            c = self.chunk
            q, k, v = (t.reshape(batch, self.heads, n // c, c, -1) for t in (q, k, v))  # [B, h, n, C, hd]
            k, v = _band(k, fill=0.0), _band(v, fill=0.0)  # [B, h, n, 3C, hd]
            scores = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scaling + band_mask  # [B, h, n, C, 3C]
            out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v).reshape(batch, self.heads, n, -1)
        return attn.proj(out.transpose(1, 2).reshape(batch, n, dim))  # [B, P, E]


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[b, index[b, i], ...]`` for ``t [B, P, ...]`` and ``index [B, Q]``."""
    index = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:])
    return torch.gather(t, 1, index)


def _pad_to(multiple: int, *tensors: tuple[torch.Tensor, object]) -> list[torch.Tensor]:
    """Each ``[B, P, ...]`` tensor padded along P with its fill value to a multiple of ``multiple``."""
    n = tensors[0][0].shape[1]
    extra = (multiple - n % multiple) % multiple
    return [torch.cat([t, torch.full((t.shape[0], extra, *t.shape[2:]), fill, dtype=t.dtype, device=t.device)], dim=1)
            for t, fill in tensors]


def _band(chunks: torch.Tensor, fill) -> torch.Tensor:
    """``[B, h, n, C, ...]`` -> ``[B, h, n, 3C, ...]``: each chunk with its previous and next one."""
    edge = torch.full_like(chunks[:, :, :1], fill)
    before = torch.cat([edge, chunks[:, :, :-1]], dim=2)
    after = torch.cat([chunks[:, :, 1:], edge], dim=2)
    return torch.cat([before, chunks, after], dim=3)


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
