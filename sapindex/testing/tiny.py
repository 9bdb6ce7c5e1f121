"""Tiny random-weight checkpoints built offline from configs: ColQwen2 / ColQwen2.5 (``TinySpec``)
and ColPali in both flavours (:func:`build_tiny_colpali`); :func:`build_tiny` takes any family of
:data:`TINY_FAMILIES` and picks the builder of its backbone (:data:`TINY_BUILDERS`; ColIdefics3's
is in ``tiny_idefics3``, jina-embeddings-v4's layout in ``tiny_jina``).

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

from sapindex.families import FAMILIES
from sapindex.models._compat import prepare_torch_side
from sapindex.testing.tiny_idefics3 import build_tiny_colidefics3
from sapindex.testing.toy_pages import WORDS

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
    # Qwen2.5-VL's vision tower only: its MLP width (0: vision_mlp_ratio x vision_width), its
    # attention window in px and the blocks that attend the whole page (empty: the last one)
    vision_mlp: int = 0
    vision_window: int = 56
    full_attention_blocks: tuple[int, ...] = ()
    min_visual_tokens: int = 4
    max_visual_tokens: int = 64
    seed: int = 0


# Qwen2.5-VL's published 112 px windows: 4 x 4 merge blocks, so tiny pages have whole and edge windows
DEFAULTS = {"colqwen2": TinySpec("colqwen2", n_layers=6),
            "colqwen2_5": TinySpec("colqwen2_5", n_layers=8, vision_window=112)}


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
                      intermediate_size=spec.vision_mlp or spec.vision_mlp_ratio * spec.vision_width,
                      num_heads=spec.vision_heads, out_hidden_size=spec.hidden, window_size=spec.vision_window,
                      fullatt_block_indexes=list(spec.full_attention_blocks or [spec.vision_depth - 1]))
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls, processor_cls = cm.ColQwen2_5, cm.ColQwen2_5_Processor
    torch.manual_seed(spec.seed)
    model = model_cls(config).eval()
    image_processor = Qwen2VLImageProcessor(
        min_pixels=spec.min_visual_tokens * 28 * 28, max_pixels=spec.max_visual_tokens * 28 * 28
    )
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              video_processor=Qwen2VLVideoProcessor())
    return model, processor


# -- ColPali (PaliGemma + SigLIP) ----------------------------------------------------------------

GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Gemma's ids 0..4


def build_gemma_tokenizer():
    """A ``GemmaTokenizer`` (the class real ColPali checkpoints load) with a small BPE vocabulary.

    Same pipeline as Gemma's: spaces normalised to ``▁``, no pre-tokenizer, byte fallback over
    ``<0x00>..<0xFF>`` (so unicode queries hit it), ``add_bos_token=True`` (the processor turns
    it off), left padding. Upper-case letters and most punctuation are left out of the training
    text on purpose: they reach the model as byte tokens.
    """
    prepare_torch_side()
    import json

    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=GEMMA_SPECIAL_TOKENS + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 4 + [" " + w for w in WORDS], trainer)
    bpe = json.loads(tok.to_str())["model"]
    return GemmaTokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]], add_bos_token=True)


def make_tiny_colpali(hf: bool, seed: int = 0, image_size: int = 112, text: dict | None = None,
                      vision: dict | None = None):
    """A random-weight ColPali (colpali-engine ``ColPali``, or transformers ``ColPaliForRetrieval``
    when ``hf``) and its processor, in memory.

    SigLIP 112 px / patch 14 -> 8x8 = 64 image tokens; Gemma 6 layers, hidden 64, 4 heads, one
    KV head (MQA, as PaliGemma-3B), head_dim 16; ``image_size``, ``text`` and ``vision`` (config
    fields) override those sizes, e.g. for real widths. The processor is built first because it grows
    the vocabulary (``<image>`` plus 1,152 ``<locNNNN>``/``<segNNN>`` tokens) and the embedding
    table must cover it.
    """
    prepare_torch_side()
    import torch
    import transformers
    from colpali_engine import models as cm
    from transformers import ColPaliConfig, ColPaliForRetrieval, PaliGemmaConfig, SiglipImageProcessor

    tokenizer = build_gemma_tokenizer()
    n_image_tokens = (image_size // 14) ** 2
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=3,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3, image_seq_length=n_image_tokens)
    processor_cls = transformers.ColPaliProcessor if hf else cm.ColPaliProcessor
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer)
    text_config = dict(model_type="gemma", hidden_size=64, num_hidden_layers=6, intermediate_size=128,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                       hidden_act="gelu_pytorch_tanh", vocab_size=len(tokenizer)) | (text or {})
    vision_config = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=image_size,
                         vision_use_head=False) | (vision or {})
    hidden = text_config["hidden_size"]
    config = PaliGemmaConfig(text_config=text_config, vision_config=vision_config, projection_dim=hidden,
                             hidden_size=hidden, image_token_index=processor.image_token_id, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = ColPaliForRetrieval(ColPaliConfig(vlm_config=config, embedding_dim=128)) if hf else cm.ColPali(config)
    return model.eval(), processor


def build_tiny_colpali(out_dir: str | Path, hf: bool = False, seed: int = 0, **sizes) -> Path:
    """Write a loadable tiny ColPali checkpoint (weights, config, tokenizer, processor) to ``out_dir``.

    The tokenizer files are then made to look like a real PaliGemma checkpoint's, which says
    ``add_bos_token: true`` and whose ``tokenizer.json`` post-processor prepends ``<bos>``
    (the processor turns both off when it loads): a runtime that tokenized with the
    checkpoint's file instead of the exported one would put a second ``<bos>`` on every query.
    ``sizes``: :func:`make_tiny_colpali`'s ``image_size``, ``text`` and ``vision``.
    """
    import json

    model, processor = make_tiny_colpali(hf, seed, **sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tok = processor.tokenizer
    tokenizer_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_json["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": tok.bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": tok.bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {tok.bos_token: {"id": tok.bos_token, "ids": [tok.bos_token_id], "tokens": [tok.bos_token]}},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["add_bos_token"] = True
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


COLPALI_FLAVOURS = {"colpali": False, "colpali_hf": True}  # family -> transformers' ColPaliForRetrieval


def _build_tiny_paligemma(out_dir: str | Path, family: str) -> Path:
    return build_tiny_colpali(out_dir, hf=COLPALI_FLAVOURS[family])


def _build_tiny_idefics3(out_dir: str | Path, family: str) -> Path:
    return build_tiny_colidefics3(out_dir)


# backbone (FamilySpec.backbone) -> (out_dir, family) -> checkpoint dir, with default sizes
TINY_BUILDERS = {
    "qwen2_vl": build_tiny_model,  # ColQwen2 / ColQwen2.5 by family (DEFAULTS)
    "paligemma": _build_tiny_paligemma,  # both ColPali flavours (COLPALI_FLAVOURS)
    "idefics3": _build_tiny_idefics3,
}
# Families that share a backbone but not its checkpoint layout, each with a builder module of its
# own that builds on this one ("module:function").
TINY_OWN_LAYOUT = {"jina_v4": "sapindex.testing.tiny_jina:build_tiny_jina"}
# Every other family: built here, from its backbone's builder.
TINY_FAMILIES = tuple(name for name in FAMILIES if name not in TINY_OWN_LAYOUT)


def build_tiny(out_dir: str | Path, family: str) -> Path:
    """A tiny checkpoint of any family in :data:`TINY_FAMILIES`, with its default sizes."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny builder for family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    return TINY_BUILDERS[FAMILIES[family].backbone](out_dir, family)
