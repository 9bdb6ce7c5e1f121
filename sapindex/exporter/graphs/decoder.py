"""What every backbone's text graph shares: masks, rotary halves and :class:`DecoderGraph`.

The families differ in how a page's tokens are positioned and which tokens may attend which
(M-RoPE + causal for Qwen2-VL, 1-based RoPE + prefix-LM for PaliGemma, plain RoPE + causal for
Idefics3); placing image features, running the decoder layers with their attention probabilities
in the graph, reducing the window layers to SAP in-degree and the multi-vector head are the same
code. It lives here, not in the first family's module, so that no backbone's graph imports another's.
"""

from __future__ import annotations

import torch
from torch import nn

NEG = torch.finfo(torch.float32).min


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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

    # "whole": the text graph of a format-1 bundle (and the torch reference of head + tail);
    # "head": the layers through the SAP window, as a format-2 bundle's head.onnx (:class:`TailGraph`)
    part = "whole"

    def _decode(self, x, attention_mask, is_image, mask, cos, sin):
        """What the graph returns once a family has placed the tokens, their mask and rotary tables:
        ``(embeddings [B, S, dim], centrality [B, S], eos_attention [B, S])`` for the whole decoder,
        or for the head ``(states [B, S, hidden], centrality, attention_bias [B, 1, S, S], rope_cos,
        rope_sin [B, 1, S, hd], eos_attention of the head's last layer)``: all the tail needs."""
        x, centrality, probs = self._head(x, is_image, mask, cos, sin)
        if self.part == "head":
            batch = x.shape[0]
            return (x, centrality, mask, cos.expand(batch, -1, -1, -1), sin.expand(batch, -1, -1, -1),
                    self._eos(probs, attention_mask))
        emb, eos = self._tail(x, attention_mask, mask, cos, sin, probs)
        return emb, centrality, eos

    @property
    def tail_layers(self) -> int:
        return len(self.lm.layers) - self.window[1]

    def _layer(self, layer: nn.Module, x, mask, cos, sin):
        """One decoder layer: ``(x, attention probabilities [B, h, S, S])``."""
        attn_out, probs = self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, mask)
        x = x + attn_out
        return x + layer.mlp(layer.post_attention_layernorm(x)), probs

    def _head(self, x, is_image, mask, cos, sin):
        """The layers up to the end of the SAP window: ``(states after the window [B, S, hidden],
        centrality [B, S], the last layer's attention probabilities)``; what the tail starts from."""
        rows = is_image.to(torch.float32)  # visual rows for the in-degree
        centrality = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        probs = None
        for idx in range(self.window[1]):
            x, probs = self._layer(self.lm.layers[idx], x, mask, cos, sin)
            if self.with_centrality and self.window[0] <= idx:
                # in-degree: attention each column receives from visual rows, head mean  [B, S]
                centrality = centrality + torch.einsum("bhij,bi->bj", probs, rows) / self.heads
        return x, centrality / (self.window[1] - self.window[0]) * rows, probs

    def _tail(self, x, attention_mask, mask, cos, sin, probs):
        """The layers after the window, the final norm and the multi-vector head: ``(embeddings
        [B, S, dim], eos_attention [B, S])``, the final layer's attention row from the last valid
        token (``probs``: the head's last layer, when the window ends at the last layer)."""
        for layer in self.lm.layers[self.window[1]:]:
            x, probs = self._layer(layer, x, mask, cos, sin)
        eos = self._eos(probs, attention_mask) if probs is not None else None
        x = self.lm.norm(x)
        emb = self.proj(x).float()  # [B, S, dim], normalised in fp32
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return emb * attention_mask.unsqueeze(-1).to(emb.dtype), eos

    @staticmethod
    def _eos(probs, attention_mask):
        """A layer's attention row from the last valid token, head mean ``[B, S]`` (the EOS baseline)."""
        seq = attention_mask.shape[1]
        i = torch.arange(seq, device=attention_mask.device)
        last = (attention_mask.bool().long() * i.view(1, seq)).max(dim=1).values  # [B]
        row = last.view(-1, 1, 1, 1).expand(-1, probs.shape[1], 1, seq)  # [B, h, 1, S]
        return torch.gather(probs, 2, row).squeeze(2).mean(dim=1)

    def _attention(self, attn: nn.Module, x, cos, sin, mask):
        batch, seq, _ = x.shape
        q = attn.q_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # [B, h, S, hd]
        k = attn.k_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # [B, kv, S, hd]
        v = attn.v_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)  # [B, h, S, hd]
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling + mask  # [B, h, S, S] fp32
        probs = torch.softmax(scores, dim=-1)  # fp32: centrality and EOS are reduced from these
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(batch, seq, -1)  # [B, S, h*hd]
        return attn.o_proj(out), probs


class TailGraph(nn.Module):
    """A format-2 bundle's tail.onnx: the decoder layers after the SAP window, the final norm and
    the multi-vector head, from the head's outputs. It knows no family: the head hands it each
    token's mask row and rotary table, so it runs as well on a subset of the tokens (fast mode)
    as on all of them. Outputs ``embeddings [B, S, dim]`` and, when it has layers, the final
    layer's ``eos_attention [B, S]`` (else the head's is the final layer's)."""

    def __init__(self, text: DecoderGraph):
        super().__init__()
        self.text = text

    def forward(self, states, attention_mask, attention_bias, rope_cos, rope_sin):
        emb, eos = self.text._tail(states, attention_mask, attention_bias, rope_cos, rope_sin, None)
        return emb if eos is None else (emb, eos)
