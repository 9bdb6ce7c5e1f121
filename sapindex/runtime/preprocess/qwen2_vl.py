"""Torch-free ColQwen2 / ColQwen2.5 preprocessing (numpy + PIL + ``tokenizers``).

Reproduces colpali-engine's ``ColQwen2Processor`` / ``ColQwen2_5_Processor``
(``process_images`` and ``process_queries``) so that an air-gapped machine with no torch or
transformers builds the exact inputs of the exported ONNX model. Every number that the
processor reads from its config or class attributes lives in :class:`Qwen2VLParams`, which
the exporter extracts (``sapindex.exporter.preprocessing_params``) and stores in the bundle.

What matches what (checked by tests/families/qwen2_vl/test_preprocess.py; the measured figures are in
docs/measurements.md):

- ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and ``image_grid_thw``: identical to
  colpali-engine's processor, pages and queries.
- ``pixel_values``: the same arithmetic as transformers' PIL backend (``Qwen2VLImageProcessorPil``):
  PIL bicubic resize of the uint8 RGB image, ``uint8 -> float64 * rescale_factor -> float32``,
  ``(x - mean) / std`` in float32, Qwen2-VL patch order. Bit-identical to that backend whenever
  Pillow resizes horizontally first; the runtime always does
  (:func:`~sapindex.runtime.preprocess.base.resize_hv`), while recent Pillow sometimes goes
  vertical first, and then that backend differs from the runtime (and from torchvision) at
  clipped edges.
- Against colpali-engine's actual backend (torchvision, ``Qwen2VLImageProcessor``, antialiased
  bicubic with its own fixed-point rounding): within
  :data:`~sapindex.runtime.preprocess.base.TORCHVISION_MAX_LEVELS` uint8 levels
  (``TORCHVISION_MAX_LEVELS / 255 / min(image_std)`` normalised), with few values off at all;
  images already at the target size differ only by float32 rounding (torchvision folds the
  rescale into mean/std). The runtime uses PIL because it is the only bicubic resize available
  without torch.

Output of :meth:`Qwen2VLPreprocessor.pages` (colpali's key order, numpy instead of torch)::

    input_ids          [B, S]        int64  left-padded with pad_token_id
    attention_mask     [B, S]        int64
    mm_token_type_ids  [B, S]        int64  1 at image tokens, 2 at video tokens, else 0
    pixel_values       [B, P, 1176]  float32  per-image patches, zero-padded to P = max(gh*gw)
    image_grid_thw     [B, 3]        int64  (1, gh, gw) in 14 px patches

:meth:`Qwen2VLPreprocessor.queries` returns the first three keys only (as colpali does);
:meth:`~Qwen2VLPreprocessor.query_extras` adds the text graph's other inputs for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.base import ManifestParams, PreprocessorBase

__all__ = ["Qwen2VLParams", "Qwen2VLPreprocessor", "smart_resize"]

MAX_ASPECT_RATIO = 200  # transformers' smart_resize refuses anything longer


@dataclass(frozen=True)
class Qwen2VLParams(ManifestParams):
    """Everything the Qwen2-VL family processor needs, as stored in a bundle manifest.

    No defaults on purpose: a bundle must say what its model was trained with.
    ``video_token`` is only used for ``mm_token_type_ids`` (2 where a text contains it).
    """

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    visual_prompt: str
    image_token: str
    video_token: str

    def __post_init__(self):
        super().__post_init__()
        self._check_visual_prompt(self.visual_prompt, self.image_token)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """transformers' Qwen2-VL ``smart_resize``, same arithmetic (Python ``round`` included).

    Returns (height, width), both multiples of ``factor``, with the pixel count inside
    [min_pixels, max_pixels] and the aspect ratio kept as closely as possible.
    """
    if height <= 0 or width <= 0:
        raise SapIndexError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise SapIndexError(f"image aspect ratio {max(height, width) / min(height, width):.1f} exceeds "
                            f"{MAX_ASPECT_RATIO} ({width}x{height}); Qwen2-VL cannot take it")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Qwen2VLPreprocessor(PreprocessorBase[Qwen2VLParams]):
    """``process_images`` / ``process_queries`` of colpali-engine's Qwen2-VL processors, torch-free."""

    def __init__(self, params: Qwen2VLParams, tokenizer_path):
        super().__init__(params, tokenizer_path)
        self.image_token_id = self.token_id(params.image_token)
        self.video_token_id = self.tokenizer.token_to_id(params.video_token)

    # -- pages -----------------------------------------------------------------------------

    def visual_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of visual tokens for an image of this size: the resized size / 28."""
        p = self.params
        factor = p.patch_size * p.merge_size
        h, w = smart_resize(height, width, factor, p.min_pixels, p.max_pixels)
        return h // factor, w // factor

    def pages(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Model inputs for a batch of page images (any PIL mode; converted to RGB like colpali)."""
        if not images:
            raise SapIndexError("no page images to preprocess")
        p = self.params
        patches, grids = [], []
        for image in images:
            flat, grid = self._patchify(image.convert("RGB"))
            patches.append(flat)
            grids.append(grid)
        n_tokens = [gh * gw // p.merge_size**2 for gh, gw in grids]
        # Same text the processor tokenizes: the image token repeated once per merged patch.
        texts = [p.visual_prompt.replace(p.image_token, p.image_token * n) for n in n_tokens]
        batch = self._encode(texts)
        pixel_values = np.zeros((len(images), max(len(x) for x in patches), patches[0].shape[1]), np.float32)
        for i, flat in enumerate(patches):
            pixel_values[i, : len(flat)] = flat  # [B, P_max, C*T*ps*ps], zero rows after each image
        batch["pixel_values"] = pixel_values
        batch["image_grid_thw"] = np.array([[1, gh, gw] for gh, gw in grids], np.int64)  # [B, 3]
        return batch

    def layouts(self, batch: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, TokenLayout]]:
        """Per page of a :meth:`pages` batch: its image tokens' positions (one contiguous run, in
        raster order) and the ``rows x cols`` grid of merged patches they cover."""
        m = self.params.merge_size
        out = []
        for ids, (_t, gh, gw) in zip(batch["input_ids"], batch["image_grid_thw"], strict=True):
            layout = TokenLayout.raster(int(gh) // m, int(gw) // m)
            out.append((self.positions(ids, layout), layout))
        return out

    def _patchify(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """One RGB image -> (patches [gh*gw, 3*T*ps*ps] float32, (gh, gw)) in Qwen2-VL order."""
        p = self.params
        ps, m, tps = p.patch_size, p.merge_size, p.temporal_patch_size
        height, width = smart_resize(image.height, image.width, ps * m, p.min_pixels, p.max_pixels)
        x = self.normalize(self.resize(image, width, height)).transpose(2, 0, 1)  # [C, H, W]
        c, gh, gw = x.shape[0], height // ps, width // ps
        # A still image is a clip of temporal_patch_size identical frames: one temporal patch.
        x = np.broadcast_to(x[None], (tps, c, height, width))  # [T, C, H, W]
        x = x.reshape(1, tps, c, gh // m, m, ps, gw // m, m, ps)  # [t, T, C, gh/m, m, ps, gw/m, m, ps]
        # Merged 2x2 blocks are contiguous (row-major over blocks, then within a block).
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [t, gh/m, gw/m, m, m, C, T, ps, ps]
        return np.ascontiguousarray(x.reshape(gh * gw, c * tps * ps * ps)), (gh, gw)

    # -- queries and text ------------------------------------------------------------------

    def queries(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``process_queries``: prefix + text + n_augmentation x augmentation token, padded."""
        if not texts:
            raise SapIndexError("no queries to preprocess")
        p = self.params
        suffix = p.query_augmentation_token * p.n_augmentation
        return self._encode([p.query_prefix + t + suffix for t in texts])

    def query_extras(self, batch: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
        """Text-graph inputs a :meth:`queries` batch has no value for: zero image features and a
        dummy 1x2x2 grid (no token is an image token, so neither is read; rows without image
        tokens get positions ``0..S-1``, as transformers gives text-only input)."""
        n = len(batch["input_ids"])
        return {"image_embeds": self.no_image(n, hidden),
                "image_grid_thw": np.tile(np.array([[1, 2, 2]], np.int64), (n, 1))}  # [B, 3]

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenize and pad to the longest, as the processor's tokenizer call with padding='longest'."""
        input_ids, attention_mask = self.pad(texts)
        mm_token_type_ids = np.zeros_like(input_ids)  # [B, S]: 0 text, 1 image, 2 video
        mm_token_type_ids[input_ids == self.image_token_id] = 1
        if self.video_token_id is not None:
            mm_token_type_ids[input_ids == self.video_token_id] = 2
        return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids}
