"""Torch-free ColQwen2 / ColQwen2.5 preprocessing (numpy + PIL + ``tokenizers``).

Reproduces colpali-engine's ``ColQwen2Processor`` / ``ColQwen2_5_Processor``
(``process_images`` and ``process_queries``) so that an air-gapped machine with no torch or
transformers builds the exact inputs of the exported ONNX model. Every number that the
processor reads from its config or class attributes lives in :class:`Qwen2VLParams`, which
the exporter extracts (``sapindex.exporter.preprocessing_params``) and stores in the bundle.

What matches what (transformers 5.23, colpali-engine 0.3.18, measured by
tests/test_runtime_preprocessing.py):

- ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and ``image_grid_thw``: identical to
  colpali-engine's processor, pages and queries.
- ``pixel_values``: the same arithmetic as transformers' PIL backend (``Qwen2VLImageProcessorPil``):
  PIL bicubic resize of the uint8 RGB image, ``uint8 -> float64 * rescale_factor -> float32``,
  ``(x - mean) / std`` in float32, Qwen2-VL patch order. Bit-identical to that backend whenever
  Pillow resizes horizontally first; the runtime always does (:func:`resize_hv`), while
  Pillow 13 sometimes goes vertical first, and then that backend differs from the runtime
  (and from torchvision) by up to ~20 levels at clipped edges.
- Against colpali-engine's actual backend (torchvision, ``Qwen2VLImageProcessor``, antialiased
  bicubic with its own fixed-point rounding): measured max difference 1 uint8 level when
  downscaling and 2 levels when upscaling (one per resize pass), under 1% of values off at
  all; images already at the target size differ only by float32 rounding (<= 2.4e-7:
  torchvision folds the rescale into mean/std). In normalised units that is at most
  ``TORCHVISION_MAX_LEVELS / 255 / min(image_std)`` ~= 0.030. The runtime uses PIL because it is
  the only bicubic resize available without torch.

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
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from sapindex.errors import SapIndexError

__all__ = ["ManifestParams", "Qwen2VLParams", "Qwen2VLPreprocessor", "PageLayout", "smart_resize", "resize_hv",
           "rescale_normalize", "load_tokenizer", "encode_padded", "text_only_image_embeds", "TORCHVISION_MAX_LEVELS"]

# Max |runtime - torchvision| in uint8 levels (measured: 1 downscaling, 2 upscaling).
TORCHVISION_MAX_LEVELS = 2

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

MAX_ASPECT_RATIO = 200  # transformers' smart_resize refuses anything longer


class ManifestParams:
    """What every family's preprocessing params share: the manifest round trip and the checks
    of ``image_mean``, ``image_std``, ``resample`` and ``padding_side`` (fields of the frozen
    dataclass subclasses). ``LIST_FIELDS`` are tuples here and lists in the manifest.
    """

    LIST_FIELDS = ("image_mean", "image_std")

    def __post_init__(self):
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise SapIndexError("preprocessing params: image_mean and image_std need 3 values (RGB)")
        if self.resample not in RESAMPLE:
            raise SapIndexError(f"preprocessing params: unknown resample {self.resample!r}; "
                                f"one of {', '.join(RESAMPLE)}")
        if self.padding_side not in ("left", "right"):
            raise SapIndexError(f"preprocessing params: padding_side must be 'left' or 'right', "
                                f"got {self.padding_side!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in self.LIST_FIELDS:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: Mapping):
        """Build from a manifest dict; unknown keys are ignored (newer exporters may add some)."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise SapIndexError(f"preprocessing params: missing keys {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls)})


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
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float
    resample: str
    visual_prompt: str
    image_token: str
    video_token: str
    query_prefix: str
    query_augmentation_token: str
    n_augmentation: int
    pad_token_id: int
    padding_side: str

    def __post_init__(self):
        super().__post_init__()
        if self.visual_prompt.count(self.image_token) != 1:
            raise SapIndexError(f"preprocessing params: visual_prompt must contain {self.image_token!r} exactly once")


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


def resize_hv(image: Image.Image, width: int, height: int, resample) -> Image.Image:
    """PIL resize as two single-axis passes, horizontal first, each rounded to uint8.

    Recent Pillow (13.0 here; python-pillow/Pillow#9549) picks the pass order itself: observed
    vertical first when that makes the intermediate image smaller. With uint8 clipping between
    passes the order
    changes pixels by tens of levels at sharp edges. Fixing the order keeps the runtime
    independent of the Pillow version and in the order torchvision uses (colpali's backend).
    """
    if image.width != width:
        image = image.resize((width, image.height), resample)
    if image.height != height:
        image = image.resize((width, height), resample)
    return image


def rescale_normalize(image: Image.Image, rescale_factor: float, mean, std) -> np.ndarray:
    """RGB image -> ``[H, W, 3]`` float32, exactly transformers' PIL backend: rescale in float64
    then downcast, normalise in float32."""
    x = (np.asarray(image, np.uint8).astype(np.float64) * rescale_factor).astype(np.float32)  # [H, W, 3]
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def load_tokenizer(tokenizer_path) -> Tokenizer:
    """A bundle's ``tokenizer.json`` with any saved padding/truncation cleared (transformers overrides them)."""
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise SapIndexError(f"{tokenizer_path}: cannot load tokenizer ({exc})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def encode_padded(tokenizer: Tokenizer, texts: Sequence[str], pad_token_id: int,
                  padding_side: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize and pad to the longest, as a transformers tokenizer call with padding='longest'.

    Returns ``input_ids`` and ``attention_mask``, both ``[B, S]`` int64.
    """
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    length = max(len(e.ids) for e in encodings)
    input_ids = np.full((len(texts), length), pad_token_id, np.int64)  # [B, S]
    attention_mask = np.zeros((len(texts), length), np.int64)  # [B, S]
    for i, e in enumerate(encodings):
        span = slice(length - len(e.ids), length) if padding_side == "left" else slice(0, len(e.ids))
        input_ids[i, span] = e.ids
        attention_mask[i, span] = e.attention_mask
    return input_ids, attention_mask


def text_only_image_embeds(batch: int, hidden: int) -> np.ndarray:
    """``[B, 1, hidden]`` zeros for the text graph's ``image_embeds`` when no token is an image
    token (queries): the graph gathers nothing from it, but ONNX Runtime needs a value."""
    return np.zeros((batch, 1, hidden), np.float32)


@dataclass(frozen=True)
class PageLayout:
    """Where a page's visual tokens are: a ``rows x cols`` grid of 28 px cells (merged patches).

    ``positions[k]`` is the sequence index (in the padded batch) of grid cell
    ``(k // cols, k % cols)``.
    """

    rows: int
    cols: int
    positions: np.ndarray  # [rows * cols] int64


class Qwen2VLPreprocessor:
    """``process_images`` / ``process_queries`` of colpali-engine's Qwen2-VL processors, torch-free."""

    def __init__(self, params: Qwen2VLParams, tokenizer_path):
        self.params = params
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.image_token_id = self.tokenizer.token_to_id(params.image_token)
        if self.image_token_id is None:
            raise SapIndexError(f"{tokenizer_path}: no token {params.image_token!r} in the vocabulary")
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

    def layouts(self, batch: Mapping[str, np.ndarray]) -> list[PageLayout]:
        """The visual grid and token positions of every page in a :meth:`pages` batch."""
        m = self.params.merge_size
        out = []
        for ids, (_t, gh, gw) in zip(batch["input_ids"], batch["image_grid_thw"]):
            rows, cols = int(gh) // m, int(gw) // m
            positions = np.flatnonzero(ids == self.image_token_id).astype(np.int64)
            if len(positions) != rows * cols:
                raise SapIndexError(f"page has {len(positions)} image tokens, expected {rows}x{cols}")
            out.append(PageLayout(rows, cols, positions))
        return out

    def _patchify(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """One RGB image -> (patches [gh*gw, 3*T*ps*ps] float32, (gh, gw)) in Qwen2-VL order."""
        p = self.params
        ps, m, tps = p.patch_size, p.merge_size, p.temporal_patch_size
        height, width = smart_resize(image.height, image.width, ps * m, p.min_pixels, p.max_pixels)
        image = resize_hv(image, width, height, RESAMPLE[p.resample])
        x = rescale_normalize(image, p.rescale_factor, p.image_mean, p.image_std).transpose(2, 0, 1)  # [C, H, W]
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
        return {"image_embeds": text_only_image_embeds(n, hidden),
                "image_grid_thw": np.tile(np.array([[1, 2, 2]], np.int64), (n, 1))}  # [B, 3]

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenize and pad to the longest, as the processor's tokenizer call with padding='longest'."""
        input_ids, attention_mask = encode_padded(self.tokenizer, texts, self.params.pad_token_id,
                                                  self.params.padding_side)
        mm_token_type_ids = np.zeros_like(input_ids)  # [B, S]: 0 text, 1 image, 2 video
        mm_token_type_ids[input_ids == self.image_token_id] = 1
        if self.video_token_id is not None:
            mm_token_type_ids[input_ids == self.video_token_id] = 2
        return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids}
