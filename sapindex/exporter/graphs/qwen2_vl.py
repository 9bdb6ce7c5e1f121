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
image features -> embeddings + centrality). Queries run the text graph alone.
:class:`DecoderGraph` (feature placement, unrolled layers, in-graph centrality, head) is shared
with the other families' text graphs (``paligemma_graph``, ``idefics3_graph``).
"""

from __future__ import annotations

import torch
from torch import nn

NEG = torch.finfo(torch.float32).min


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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
        freqs = torch.cat([h_pos.unsqueeze(-1).float() * inv, w_pos.unsqueeze(-1).float() * inv], dim=-1)  # [B, P, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)  # [B, P, 1, hd]
        return emb.cos(), emb.sin()

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos, sin, mask: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        qkv = attn.qkv(x).reshape(batch, n, 3, self.heads, dim // self.heads)  # [B, P, 3, h, hd]
        q, k, v = qkv.unbind(2)  # each [B, P, h, hd]
        # rotary in fp32, back to the weights' dtype (as transformers does)
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(x.dtype).transpose(1, 2)  # [B, h, P, hd]
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(x.dtype).transpose(1, 2)
        v = v.transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling + mask  # [B, h, P, P] fp32
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, n, dim)  # [B, P, E]
        return attn.proj(out)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]`` bool (query i may attend key j) -> ``[B, 1, S, S]`` fp32 additive mask.

    fp32 even in fp16 graphs: NEG does not fit in fp16, and scores are added to it in fp32.
    """
    return torch.where(allowed, 0.0, NEG).unsqueeze(1)


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` attention mask -> ``[B, S, S]`` bool: query i may attend key j iff ``j <= i`` and j is valid."""
    seq = attention_mask.shape[1]
    i = torch.arange(seq, device=attention_mask.device)
    return (i.view(1, seq, 1) >= i.view(1, 1, seq)) & attention_mask.bool().unsqueeze(1)


class DecoderGraph(nn.Module):
    """What every family's text graph shares, given its attention mask and rotary tables.

    Image features are placed at the image tokens by a running count (no ``masked_scatter``);
    decoder layers are unrolled in eager form so the window layers' attention probabilities
    exist in the graph and are reduced there to SAP in-degree (head mean, window-layer mean);
    the final layer's attention row from the last valid token is the EOS baseline; then the
    final norm and the L2-normalised multi-vector head. Subclasses compute positions and the
    mask, which is where families differ (M-RoPE + causal; 1-based RoPE + prefix-LM).
    """

    def __init__(self, lm: nn.Module, proj: nn.Module, text_config, image_token_id: int,
                 window: tuple[int, int], centrality: bool = True):
        """``centrality=False`` builds the same graph without the in-degree reduction (to measure its cost)."""
        super().__init__()
        self.with_centrality = centrality
        self.lm = lm
        self.proj = proj
        self.image_token_id = int(image_token_id)
        self.heads = int(text_config.num_attention_heads)
        self.kv_heads = int(text_config.num_key_value_heads)
        self.head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // self.heads)
        self.window = (int(window[0]), int(window[1]))
        if not 0 <= self.window[0] < self.window[1] <= len(self.lm.layers):
            raise ValueError(f"window {self.window} outside the model's {len(self.lm.layers)} decoder layers")

    def _merge_image_features(self, input_ids, image_embeds):
        """Token embeddings ``[B, S, hidden]`` with the k-th image token of each row replaced by
        ``image_embeds[:, k]``; also ``is_image [B, S]`` and that rank ``k`` (-1 before the first)."""
        is_image = input_ids == self.image_token_id  # [B, S]
        img_rank = torch.cumsum(is_image.long(), dim=1) - 1  # [B, S] k-th image token
        gather_idx = img_rank.clamp(0, image_embeds.shape[1] - 1)
        gathered = torch.gather(image_embeds, 1, gather_idx.unsqueeze(-1).expand(-1, -1, image_embeds.shape[2]))
        # image-token ids never reach the embedding table: they may lie outside it (PaliGemma allows that)
        text_ids = torch.where(is_image, torch.zeros_like(input_ids), input_ids)
        embed = self.lm.embed_tokens
        x = torch.where(is_image.unsqueeze(-1), gathered.to(embed.weight.dtype), embed(text_ids))
        return x, is_image, img_rank

    def _rope_1d(self, positions, dtype):
        """Plain RoPE tables ``[1, 1, S, hd]`` for ``positions [S]``, times the rotary module's
        ``attention_scaling`` (1 for the default rope type, not for Llama-3-style scaled ropes)."""
        inv = self.lm.rotary_emb.inv_freq  # [hd/2]
        freqs = positions.float().unsqueeze(-1) * inv  # [S, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1).view(1, 1, positions.shape[0], -1)  # [1, 1, S, hd]
        scale = self.lm.rotary_emb.attention_scaling
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    def _decode(self, x, attention_mask, is_image, mask, cos, sin):
        """Decoder layers + head: ``(embeddings [B, S, dim], centrality [B, S], eos_attention [B, S])``."""
        batch, seq = attention_mask.shape
        valid = attention_mask.bool()  # [B, S]
        i = torch.arange(seq, device=attention_mask.device)
        rows = is_image.to(torch.float32)  # visual rows for the in-degree
        centrality = torch.zeros(batch, seq, dtype=torch.float32, device=attention_mask.device)

        last = (valid.long() * i.view(1, seq)).max(dim=1).values  # [B] index of the last valid token
        for idx, layer in enumerate(self.lm.layers):
            residual = x
            attn_out, probs = self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, mask)
            if self.with_centrality and self.window[0] <= idx < self.window[1]:
                # in-degree: attention each column receives from visual rows, head mean  [B, S]
                centrality = centrality + torch.einsum("bhij,bi->bj", probs, rows) / self.heads
            if idx == len(self.lm.layers) - 1:
                row = last.view(-1, 1, 1, 1).expand(-1, probs.shape[1], 1, seq)  # [B, h, 1, S]
                eos = torch.gather(probs, 2, row).squeeze(2).mean(dim=1)  # [B, S]
            x = residual + attn_out
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.lm.norm(x)
        emb = self.proj(x).float()  # [B, S, dim], normalised in fp32
        emb = emb / emb.norm(dim=-1, keepdim=True)
        emb = emb * attention_mask.unsqueeze(-1).to(emb.dtype)
        centrality = centrality / (self.window[1] - self.window[0]) * rows
        return emb, centrality, eos

    def _attention(self, attn: nn.Module, x, cos, sin, mask):
        batch, seq, _ = x.shape
        q = attn.q_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # [B, h, S, hd]
        k = attn.k_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # [B, kv, S, hd]
        v = attn.v_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)  # [B, h, S, hd]
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling + mask  # [B, h, S, S] fp32
        probs = torch.softmax(scores, dim=-1)  # fp32: centrality and EOS are reduced from these
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(batch, seq, -1)  # [B, S, h*hd]
        return attn.o_proj(out), probs


class TextGraph(DecoderGraph):
    """Qwen2-VL decoder + projection with in-graph SAP centrality (see :class:`DecoderGraph`).

    Inputs: ``input_ids [B, S]``, ``attention_mask [B, S]``, ``image_embeds [B, T, D]``,
    ``image_grid_thw [B, 3]``. Outputs: ``embeddings [B, S, dim]`` (L2-normalised, zero at padding,
    as colpali-engine returns them), ``centrality [B, S]`` (window-mean visual in-degree, zero
    at non-visual positions) and ``eos_attention [B, S]`` (the final layer's attention from the
    last valid token, head mean: the final-layer baseline SAP is compared with). Rows without image tokens (queries) use positions ``0..S-1``, as
    transformers does for text-only input; pass a zero ``image_embeds [B, 1, D]`` for them.
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
