"""A tiny random ColIdefics3 (ColSmol layout) checkpoint, built offline.

Same shape of checkpoint as ColSmol: colpali-engine ``ColIdefics3`` (``Idefics3Model`` + 128-d
``linear``) with ``ColIdefics3Processor``, only small. SigLIP-style vision tower on 64 px tiles
with 4 px patches (16x16 patches) and pixel shuffle x4 -> 4x4 = 16 tokens per tile; pages go to
a longest side of 192 px, so up to 3x3 tiles + the global tile = 160 visual tokens; Llama
decoder with 6 layers, hidden 64, 4 heads / 2 KV heads (GQA, as SmolLM2). About 0.32 M
parameters. Random weights: it exercises loading, processors, attention capture and export,
and says nothing about retrieval.

The tokenizer is byte-level BPE trained on :data:`sapindex.testing.toy_pages.WORDS` plus the page
prompt and ``"\\n\\n"``, so the text around the tiles (``"...\\n\\n<fake_token_around_image>"``)
meets a merged ``ĊĊ`` token as with SmolVLM's; every Idefics3 marker, including the 36
``<row_r_col_c>``, is one special token.
"""

from __future__ import annotations

from pathlib import Path

from sapindex.models._compat import prepare_torch_side
from sapindex.testing.toy_pages import WORDS

ROW_COL_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                  "<global-img>", *ROW_COL_TOKENS]
PROMPT = "User: Describe the image.\nAssistant:"  # the page prompt's plain text, so BPE merges cover it

TILE = 64  # px, vision_config.image_size == max_image_size["longest_edge"]
LONGEST_EDGE = 192  # px: at most 3x3 tiles
PATCH = 4
SCALE_FACTOR = 4  # pixel shuffle: (64/4)^2 / 4^2 = 16 tokens per tile


def build_idefics3_tokenizer():
    """``PreTrainedTokenizerFast``, eos = pad = ``<|endoftext|>``, no BOS (as SmolVLM's adds none)."""
    prepare_torch_side()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS)] * 4 + [" " + w for w in WORDS] + [PROMPT, "\n\n"] * 8
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[0],
                                   additional_special_tokens=SPECIAL_TOKENS[1:])


def make_tiny_colidefics3(seed: int = 0, tile: int = TILE, longest_edge: int = LONGEST_EDGE, patch: int = PATCH,
                          text: dict | None = None, vision: dict | None = None):
    """A random-weight colpali-engine ``ColIdefics3`` (eval mode) and its ``ColIdefics3Processor``, in memory.

    The processor is built first: it registers ``<image>`` & co. and the embedding table must
    cover ``len(tokenizer)`` afterwards. ``tile``, ``longest_edge``, ``patch``, ``text`` and
    ``vision`` (config fields) override the sizes, e.g. ColSmol's 512 px tiles of 16 px patches.
    """
    prepare_torch_side()
    import torch
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3Config
    from transformers.models.idefics3 import Idefics3ImageProcessor

    tokenizer = build_idefics3_tokenizer()
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}, resample=1,  # LANCZOS
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    processor = ColIdefics3Processor(image_processor, tokenizer, image_seq_len=(tile // patch) ** 2 // SCALE_FACTOR**2)
    config = Idefics3Config(
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), rms_norm_eps=1e-5,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id) | (text or {}),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=tile, patch_size=patch) | (vision or {}),
        scale_factor=SCALE_FACTOR, image_token_id=processor.image_token_id,
    )
    torch.manual_seed(seed)
    return ColIdefics3(config).eval(), processor


def build_tiny_colidefics3(out_dir: str | Path, seed: int = 0, **sizes) -> Path:
    """Write a loadable tiny ColIdefics3 checkpoint (weights, config, tokenizer, processor) to ``out_dir``.

    ``sizes``: :func:`make_tiny_colidefics3`'s size overrides."""
    model, processor = make_tiny_colidefics3(seed, **sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
