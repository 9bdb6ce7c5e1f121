"""Random-weight checkpoints at the published sizes of every family, built offline from configs.

Why: users download 0.26-3.75 B parameter checkpoints, and memory, time and numerics only show
at that size. These builders write the published text and vision widths, heads and depths of
each family (the vocabulary stays the small test one: it changes the embedding table, not the
work per token). Random weights say nothing about retrieval quality. ``text_layers`` /
``vision_blocks`` cut the depth for quicker checks at real width; the defaults are full depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sapindex.testing.tiny import build_tiny_colpali, build_tiny_model
from sapindex.testing.tiny_idefics3 import build_tiny_colidefics3
from sapindex.testing.tiny_jina import build_tiny_jina


@dataclass(frozen=True)
class RealSize:
    """One published checkpoint's architecture sizes and how to build it at a chosen depth."""

    checkpoint: str  # the published checkpoint whose config this follows
    text_layers: int
    vision_blocks: int
    hidden: int  # the text decoder's width, what `sapindex info` reports
    build: Callable[[Path, int, int], Path]  # (out_dir, text_layers, vision_blocks) -> checkpoint dir


def _qwen2_vl_2b(out: Path, text_layers: int, vision_blocks: int) -> Path:
    return build_tiny_model(out, "colqwen2", **_QWEN2_VL_2B, n_layers=text_layers, vision_depth=vision_blocks)


def _qwen2_5_vl_3b(out: Path, text_layers: int, vision_blocks: int, jina: bool = False) -> Path:
    sizes = dict(_QWEN2_5_VL_3B, n_layers=text_layers, vision_depth=vision_blocks,
                 full_attention_blocks=_every_8th(vision_blocks))
    return build_tiny_jina(out, **sizes) if jina else build_tiny_model(out, "colqwen2_5", **sizes)


def _every_8th(blocks: int) -> tuple[int, ...]:
    """Qwen2.5-VL's vision tower attends the whole page in blocks 7, 15, 23 and 31 (windows elsewhere)."""
    return tuple(i for i in range(blocks) if i % 8 == 7) or (blocks - 1,)


def _paligemma_3b_448(hf: bool) -> Callable[[Path, int, int], Path]:
    def build(out: Path, text_layers: int, vision_blocks: int) -> Path:
        text = dict(hidden_size=2048, num_hidden_layers=text_layers, intermediate_size=16384, num_attention_heads=8,
                    num_key_value_heads=1, head_dim=256)
        vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=vision_blocks, num_attention_heads=16)
        return build_tiny_colpali(out, hf=hf, image_size=448, text=text, vision=vision)
    return build


def _smolvlm(text: dict) -> Callable[[Path, int, int], Path]:
    """ColSmol: SigLIP-B/16 on 512 px tiles (64 tokens each after the 4x pixel shuffle), SmolLM2 text."""
    def build(out: Path, text_layers: int, vision_blocks: int) -> Path:
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=vision_blocks, num_attention_heads=12)
        return build_tiny_colidefics3(out, tile=512, longest_edge=2048, patch=16,
                                      text={**text, "num_hidden_layers": text_layers}, vision=vision)
    return build


# Qwen2-VL-2B: text 1536 wide, 12 heads, 2 KV heads, MLP 8960; vision 1280 wide, 16 heads, MLP 4x.
# ColQwen2's processor caps a page at 768 visual tokens.
_QWEN2_VL_2B = dict(hidden=1536, heads=12, kv_heads=2, mlp=8960, vision_width=1280, vision_heads=16,
                    vision_mlp_ratio=4, max_visual_tokens=768)
# Qwen2.5-VL-3B: text 2048 wide, 16 heads, 2 KV heads, MLP 11008; vision 1280 wide, 16 heads, MLP 3420,
# 112 px attention windows.
_QWEN2_5_VL_3B = dict(hidden=2048, heads=16, kv_heads=2, mlp=11008, vision_width=1280, vision_heads=16,
                      vision_mlp=3420, vision_window=112, max_visual_tokens=768)

REAL_SIZES: dict[str, RealSize] = {
    "colqwen2": RealSize("vidore/colqwen2-v1.0 (Qwen2-VL-2B)", 28, 32, 1536, _qwen2_vl_2b),
    "colqwen2_5": RealSize("vidore/colqwen2.5-v0.2 (Qwen2.5-VL-3B)", 36, 32, 2048, _qwen2_5_vl_3b),
    "jina_v4": RealSize("jinaai/jina-embeddings-v4 (Qwen2.5-VL-3B)", 36, 32, 2048,
                        lambda out, t, v: _qwen2_5_vl_3b(out, t, v, jina=True)),
    "colpali": RealSize("vidore/colpali-v1.3 (PaliGemma-3B-448)", 18, 27, 2048, _paligemma_3b_448(hf=False)),
    "colpali_hf": RealSize("vidore/colpali-v1.3-hf (PaliGemma-3B-448)", 18, 27, 2048, _paligemma_3b_448(hf=True)),
    "colidefics3": RealSize("vidore/colSmol-256M (SmolVLM-256M)", 30, 12, 576, _smolvlm(
        dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3))),
}
# ColSmol-500M (SmolVLM-500M) shares the 256M's vision tower; its text decoder is SmolLM2-360M.
COLSMOL_500M = RealSize("vidore/colSmol-500M (SmolVLM-500M)", 32, 12, 960, _smolvlm(
    dict(hidden_size=960, intermediate_size=2560, num_attention_heads=15, num_key_value_heads=5)))


def build_real_size(out_dir: str | Path, family: str, text_layers: int | None = None,
                    vision_blocks: int | None = None) -> Path:
    """Write a random-weight ``family`` checkpoint at its published size (full depth by default)."""
    if family not in REAL_SIZES:
        raise ValueError(f"no real-size builder for family {family!r}; choose from {', '.join(REAL_SIZES)}")
    size = REAL_SIZES[family]
    return size.build(Path(out_dir), text_layers or size.text_layers, vision_blocks or size.vision_blocks)
