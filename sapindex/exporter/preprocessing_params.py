"""Extract the torch-free preprocessing parameters from a loaded colpali-engine processor.

The exporter stores the result in the bundle manifest (each backbone's ``GraphSpec.params`` is
one of these functions); the backbone's module in ``sapindex.runtime.preprocess`` rebuilds the
processor from it without torch or transformers. Values come from the live processor
object (its image processor config, tokenizer and colpali class attributes), not from files,
so a ``max_num_visual_tokens`` override applied at load time is captured too.
"""

from __future__ import annotations

from pathlib import Path

from sapindex.errors import SapIndexError

# colpali-engine's process_queries appends ``query_augmentation_token * 10`` (hard-coded there);
# a processor with an ``n_augmentation`` attribute (jina-embeddings-v4: 0) overrides it.
N_AUGMENTATION = 10


def qwen2_vl_params(processor) -> dict:
    """``Qwen2VLParams.to_dict()``-compatible params of a ColQwen2Processor / ColQwen2_5_Processor."""
    ip, tok = processor.image_processor, processor.tokenizer
    resample = _checked_resample(ip, tok)
    return {
        "patch_size": int(ip.patch_size),
        "merge_size": int(ip.merge_size),
        "temporal_patch_size": int(ip.temporal_patch_size),
        "min_pixels": int(ip.size["shortest_edge"]),
        "max_pixels": int(ip.size["longest_edge"]),
        "image_mean": [float(v) for v in ip.image_mean],
        "image_std": [float(v) for v in ip.image_std],
        "rescale_factor": float(ip.rescale_factor),
        "resample": resample,
        "visual_prompt": processor.visual_prompt_prefix,
        "image_token": processor.image_token,
        "video_token": processor.video_token,
        "query_prefix": processor.query_prefix,
        "query_augmentation_token": processor.query_augmentation_token,
        "n_augmentation": int(getattr(processor, "n_augmentation", N_AUGMENTATION)),
        "pad_token_id": int(tok.pad_token_id),
        "padding_side": tok.padding_side,
    }


def paligemma_params(processor) -> dict:
    """``PaliGemmaParams.to_dict()``-compatible params of a ColPali processor, either flavour.

    The page token ids and the query attention kind are read off the live processor's own
    output (one blank page, one query), so the bundle records what it really produced: the
    engine's double ``<bos>``, whether queries get ``token_type_ids`` (hf: yes, so they are
    one bidirectional block; engine: no, causal).
    """
    from PIL import Image

    ip, tok = processor.image_processor, processor.tokenizer
    resample = _checked_resample(ip, tok)
    size = ip.size
    height, width = size["height"], size["width"]
    if height != width:
        raise SapIndexError(f"image processor size {height}x{width} is not square; ColPali's token grid assumes it")
    page = {k: v.tolist() for k, v in processor.process_images(images=[Image.new("RGB", (width, height))]).items()}
    if set(page["token_type_ids"][0]) != {0} or set(page["attention_mask"][0]) != {1}:
        raise SapIndexError("ColPali processor: page token_type_ids not all 0 or attention_mask not all 1; "
                            "the runtime treats a page as one unpadded bidirectional block")
    query = processor.process_queries(["x"])
    query_prefix_lm = "token_type_ids" in query
    if query_prefix_lm and query["token_type_ids"].any():
        raise SapIndexError("ColPali processor: query token_type_ids are not all 0; the runtime cannot reproduce them")
    # colpali-engine: "<bos>" + query_prefix ("") + q + aug*10 (process_queries, process_texts);
    # transformers: "<bos>" + query_prefix ("Question: ") + q + aug*10 + "\n" (ColPaliProcessor.__call__).
    engine = _is_colpali_engine(processor)
    return {
        "image_size": int(height),
        "resample": resample,
        "rescale_factor": float(ip.rescale_factor),
        "image_mean": [float(v) for v in ip.image_mean],
        "image_std": [float(v) for v in ip.image_std],
        "image_seq_length": int(processor.image_seq_length),
        "image_token_id": int(processor.image_token_id),
        "page_token_ids": [int(v) for v in page["input_ids"][0]],
        "bos_token": tok.bos_token,
        "query_prefix": processor.query_prefix,
        "query_augmentation_token": processor.query_augmentation_token,
        "n_augmentation": N_AUGMENTATION,
        "query_suffix": "" if engine else "\n",
        "pad_token_id": int(tok.pad_token_id),
        "padding_side": tok.padding_side,
        "query_prefix_lm": query_prefix_lm,
    }


def _is_colpali_engine(processor) -> bool:
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    return isinstance(processor, BaseVisualRetrieverProcessor)


def _checked_resample(ip, tok) -> str:
    """The PIL name of the image processor's resample filter, after refusing what the runtime lacks."""
    from PIL import Image

    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if not getattr(ip, flag, True):
            raise SapIndexError(f"image processor has {flag}=False; the runtime only supports the colpali default")
    if tok.pad_token_id is None:
        raise SapIndexError("tokenizer has no pad token")
    resample = ip.resample
    if not isinstance(resample, int):  # a torchvision InterpolationMode
        resample = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}[str(resample.value).lower()]
    return Image.Resampling(int(resample)).name.lower()


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


def idefics3_params(processor) -> dict:
    """``Idefics3Params.to_dict()``-compatible params of a colpali-engine ``ColIdefics3Processor``.

    The tile texts use transformers' hard-coded ``<row_{r}_col_{c}>`` tokens
    (``Idefics3Processor.replace_image_token``); the runtime refuses a tokenizer without them.
    ``do_pad`` must be on: the model input is ``[B, N_max, 3, M, M]`` with zero tiles, which the
    runtime always builds.
    """
    ip, tok = processor.image_processor, processor.tokenizer
    resample = _checked_resample(ip, tok)
    if not getattr(ip, "do_pad", True):
        raise SapIndexError("Idefics3 image processor has do_pad=False; the runtime only builds padded tile batches")
    return {
        "longest_edge": int(ip.size["longest_edge"]),
        "tile_size": int(ip.max_image_size["longest_edge"]),
        "do_image_splitting": bool(ip.do_image_splitting),
        "resample": resample,
        "rescale_factor": float(ip.rescale_factor),
        "image_mean": [float(v) for v in ip.image_mean],
        "image_std": [float(v) for v in ip.image_std],
        "image_seq_len": int(processor.image_seq_len),
        "image_token": processor.image_token,
        "fake_image_token": processor.fake_image_token,
        "global_image_token": processor.global_image_tag,
        "row_col_token": "<row_{row}_col_{col}>",
        "visual_prompt": processor.visual_prompt_prefix,
        "query_prefix": processor.query_prefix,
        "query_augmentation_token": processor.query_augmentation_token,
        "n_augmentation": int(getattr(processor, "n_augmentation", N_AUGMENTATION)),
        "pad_token_id": int(tok.pad_token_id),
        "padding_side": tok.padding_side,
    }
