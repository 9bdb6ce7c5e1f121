"""Tiny random-weight ColQwen2 / ColQwen2.5 checkpoints built offline from configs.

They exercise every mechanical path (loading, processors, attention capture, calibration,
export) in seconds on a CPU; their weights are random, so they say nothing about retrieval
quality. Default sizes (``TinySpec``): text decoder 6 layers (ColQwen2) or 8 (ColQwen2.5),
hidden 64, 4 heads / 2 KV heads, MLP 128; vision tower 2 blocks of width 32; a byte-level BPE
tokenizer of ~330 tokens trained on a built-in word list; pages resized to 4..64 visual tokens
(max 50,176 pixels). About 0.33 M parameters, 1.3 MB of fp32 safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sapindex.models._compat import prepare_torch_side
from sapindex.synthetic import WORDS

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]



@dataclass(frozen=True)
class TinySpec:
    family: str = "colqwen2"
    n_layers: int = 6
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 128
    vision_depth: int = 2
    vision_width: int = 32
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    min_visual_tokens: int = 4
    max_visual_tokens: int = 64
    seed: int = 0


DEFAULTS = {"colqwen2": TinySpec("colqwen2", n_layers=6), "colqwen2_5": TinySpec("colqwen2_5", n_layers=8)}


def tiny_spec(family: str, **overrides) -> TinySpec:
    if family not in DEFAULTS:
        raise ValueError(f"no tiny model for family {family!r}; choose from {', '.join(DEFAULTS)}")
    return replace(DEFAULTS[family], **overrides)


def build_tokenizer():
    """A byte-level BPE tokenizer with the Qwen2-VL special tokens, trained offline on ``WORDS``."""
    prepare_torch_side()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(WORDS)] * 4 + [" " + w for w in WORDS], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def build_tiny_model(out_dir: str | Path, family: str = "colqwen2", tokenizer=None, **overrides) -> Path:
    """Write a loadable tiny checkpoint (weights, config, tokenizer, processor) to ``out_dir``."""
    model, processor = make_tiny(tiny_spec(family, **overrides), tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_tiny(spec: TinySpec, tokenizer=None):
    """A random-weight ColQwen2 / ColQwen2.5 model (eval mode) and its processor, in memory.

    ``tokenizer`` (a ``PreTrainedTokenizerFast`` holding :data:`SPECIAL_TOKENS`) defaults to
    :func:`build_tokenizer`; the micro retriever passes its own word-level one.
    """
    prepare_torch_side()
    import torch
    from colpali_engine import models as cm
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = spec.hidden // spec.heads
    third = head_dim // 2 // 3
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.mlp,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096,
        # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [head_dim // 2 - 2 * third, third, third]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if spec.family == "colqwen2":
        vision = dict(depth=spec.vision_depth, embed_dim=spec.vision_width, hidden_size=spec.hidden,
                      num_heads=spec.vision_heads, mlp_ratio=spec.vision_mlp_ratio)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls, processor_cls = cm.ColQwen2, cm.ColQwen2Processor
    else:
        vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_width,
                      intermediate_size=spec.vision_mlp_ratio * spec.vision_width,
                      num_heads=spec.vision_heads, out_hidden_size=spec.hidden, window_size=56,
                      fullatt_block_indexes=[spec.vision_depth - 1])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls, processor_cls = cm.ColQwen2_5, cm.ColQwen2_5_Processor
    torch.manual_seed(spec.seed)
    model = model_cls(config).eval()
    image_processor = Qwen2VLImageProcessor(
        min_pixels=spec.min_visual_tokens * 28 * 28, max_pixels=spec.max_visual_tokens * 28 * 28
    )
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    return model, processor
