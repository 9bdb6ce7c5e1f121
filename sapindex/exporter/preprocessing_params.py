"""Extract the torch-free preprocessing parameters from a loaded colpali-engine processor.

The exporter stores the result in the bundle manifest; ``sapindex.runtime.qwen2_vl`` rebuilds
the processor from it without torch or transformers. Values come from the live processor
object (its image processor config, tokenizer and colpali class attributes), not from files,
so a ``max_num_visual_tokens`` override applied at load time is captured too.
"""

from __future__ import annotations

from pathlib import Path

from sapindex.errors import SapIndexError

# colpali-engine's process_queries appends ``query_augmentation_token * 10`` (hard-coded there).
N_AUGMENTATION = 10


def qwen2_vl_params(processor) -> dict:
    """``Qwen2VLParams.to_dict()``-compatible params of a ColQwen2Processor / ColQwen2_5_Processor."""
    from PIL import Image

    ip, tok = processor.image_processor, processor.tokenizer
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if not getattr(ip, flag, True):
            raise SapIndexError(f"image processor has {flag}=False; the runtime only supports the colpali default")
    resample = ip.resample
    if not isinstance(resample, int):  # a torchvision InterpolationMode
        resample = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}[str(resample.value).lower()]
    if tok.pad_token_id is None:
        raise SapIndexError("tokenizer has no pad token")
    return {
        "patch_size": int(ip.patch_size),
        "merge_size": int(ip.merge_size),
        "temporal_patch_size": int(ip.temporal_patch_size),
        "min_pixels": int(ip.size["shortest_edge"]),
        "max_pixels": int(ip.size["longest_edge"]),
        "image_mean": [float(v) for v in ip.image_mean],
        "image_std": [float(v) for v in ip.image_std],
        "rescale_factor": float(ip.rescale_factor),
        "resample": Image.Resampling(int(resample)).name.lower(),
        "visual_prompt": processor.visual_prompt_prefix,
        "image_token": processor.image_token,
        "video_token": processor.video_token,
        "query_prefix": processor.query_prefix,
        "query_augmentation_token": processor.query_augmentation_token,
        "n_augmentation": N_AUGMENTATION,
        "pad_token_id": int(tok.pad_token_id),
        "padding_side": tok.padding_side,
    }


def write_tokenizer_json(processor, path: str | Path) -> Path:
    """Save the ``tokenizers.Tokenizer`` that transformers actually encodes with.

    transformers 5 may rebuild a checkpoint's tokenizer (e.g. ``Qwen2Tokenizer`` re-creates its
    normalizer and pre-tokenizer from vocab and merges), so the bundle ships this object rather
    than copying the checkpoint's tokenizer.json. Padding and truncation are cleared: the
    runtime pads itself.
    """
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(processor.tokenizer.backend_tokenizer.to_str())  # leave the live one alone
    copy.no_padding()
    copy.no_truncation()
    path = Path(path)
    copy.save(str(path))
    return path
