"""Torch-free ColIdefics3 / ColSmol preprocessing (numpy + PIL + ``tokenizers``).

Reproduces ``process_images`` / ``process_queries`` of colpali-engine's ``ColIdefics3Processor``
(transformers' ``Idefics3Processor`` + ``Idefics3ImageProcessor``). Every number lives in
:class:`Idefics3Params`, extracted from the live processor by
``sapindex.exporter.preprocessing_params.idefics3_params``.

A page becomes tiles, in three resize passes, each from the previous pass's uint8 image (both
transformers backends keep uint8 between passes), all with the processor's filter (LANCZOS):

1. longest side to ``longest_edge`` L, aspect kept, the other side ``int()``-truncated and
   bumped to even (small pages are *upscaled*), then capped at 4096;
2. each side up to a multiple of the tile size M (:func:`canvas_size`);
   the page is stretched onto this ``R*M x C*M`` canvas, nothing is cropped or padded;
3. if the canvas is larger than one tile: ``R x C`` crops of M x M, row-major, then the
   global tile = the canvas resized to M x M. Otherwise the canvas itself is the only tile
   (``R = C = 0`` in the processor's terms).

Text: the prompt's ``<image>`` becomes, per tile row r and column c (1-based),
``<fake_token_around_image><row_r_col_c>`` + ``<image>`` x n, a ``"\\n"`` after each tile row,
then ``"\\n<fake_token_around_image><global-img>"`` + ``<image>`` x n + ``<fake_token_around_image>``
(unsplit: only the last part, without the leading ``"\\n"``). ``n = image_seq_len``.

What matches what (checked by tests/families/idefics3/; the measured figures are in
docs/measurements.md):

- ``input_ids``, ``attention_mask``, tile counts and every shape: identical to the processor.
- ``pixel_values``: the arithmetic of transformers' PIL backend (``Idefics3ImageProcessorPil``),
  bit-identical to it when Pillow resizes horizontally first (the runtime always does, see
  :func:`~sapindex.runtime.preprocess.base.resize_hv`); unpinned, recent Pillow sometimes goes
  vertical first and that backend is then off at sharp edges. Against colpali's torchvision
  backend (its own antialiased Lanczos, uint8 rounding after every pass): within
  :data:`~sapindex.runtime.preprocess.base.TORCHVISION_MAX_LEVELS` uint8 levels over the three
  passes (not one per pass: the later passes average the earlier rounding away), few values off
  at all.

Output of :meth:`Idefics3Preprocessor.pages` (the processor's keys and order, numpy)::

    input_ids             [B, S]              int64  left-padded with pad_token_id
    attention_mask        [B, S]              int64
    pixel_values          [B, N, 3, M, M]     float32  N = max tiles per page; zero tiles after each page's
    pixel_attention_mask  [B, N, M, M]        int64    1 on real tiles, 0 on padding tiles

Token geometry: :meth:`Idefics3Preprocessor.layouts` and :class:`~sapindex.runtime.layout.TokenLayout`.
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

__all__ = ["Idefics3Params", "Idefics3Preprocessor", "tile_grid_from_ids", "MAX_IMAGE_SIZE", "MAX_TILES_PER_SIDE"]

MAX_IMAGE_SIZE = 4096  # transformers' absolute cap after pass 1 (image_processing_idefics3.MAX_IMAGE_SIZE)
MAX_TILES_PER_SIDE = 6  # the processor only knows <row_1_col_1> .. <row_6_col_6>


@dataclass(frozen=True)
class Idefics3Params(ManifestParams):
    """Everything ``ColIdefics3Processor`` needs, as stored in a bundle manifest. No defaults on purpose.

    ``row_col_token`` is a ``str.format`` pattern with fields ``row`` and ``col`` (1-based).
    A query is ``query_prefix + text + query_augmentation_token * n_augmentation``.
    """

    longest_edge: int
    tile_size: int
    do_image_splitting: bool
    image_seq_len: int
    image_token: str
    fake_image_token: str
    global_image_token: str
    row_col_token: str
    visual_prompt: str

    def __post_init__(self):
        super().__post_init__()
        side = math.isqrt(self.image_seq_len)
        if side * side != self.image_seq_len or self.tile_size % side:
            raise SapIndexError(f"preprocessing params: image_seq_len {self.image_seq_len} is not a square grid "
                                f"dividing the {self.tile_size} px tile")
        self._check_visual_prompt(self.visual_prompt, self.image_token)
        if "{row}" not in self.row_col_token or "{col}" not in self.row_col_token:
            raise SapIndexError(f"preprocessing params: row_col_token {self.row_col_token!r} needs {{row}} and {{col}}")
        if self.do_image_splitting and math.ceil(self.longest_edge / self.tile_size) > MAX_TILES_PER_SIDE:
            raise SapIndexError(f"preprocessing params: longest_edge {self.longest_edge} / tile {self.tile_size} "
                                f"gives more than {MAX_TILES_PER_SIDE} tiles a side; the processor has no row/col "
                                "tokens for them")

    @property
    def tokens_per_side(self) -> int:
        """``s``: a tile is an ``s x s`` grid of tokens, each covering ``tile_size / s`` px square."""
        return math.isqrt(self.image_seq_len)


def resized_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Pass 1, transformers' ``get_resize_output_image_size`` arithmetic: longest side to
    ``longest_edge`` (always, upscaling too), the other truncated and made even, then the 4096 cap."""
    if height <= 0 or width <= 0:
        raise SapIndexError(f"image has no pixels ({width}x{height})")
    aspect_ratio = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    else:
        height = longest_edge
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    height, width = max(height, 1), max(width, 1)
    aspect_ratio = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width = MAX_IMAGE_SIZE
        height = int(width / aspect_ratio)
    elif height > width and height > MAX_IMAGE_SIZE:
        height = MAX_IMAGE_SIZE
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def canvas_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Pass 2, ``resize_for_vision_encoder``: both sides up to multiples of ``tile``, the short one
    derived from the long one's *rounded-up* size and the pass-1 aspect (not rounded up on its own)."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect_ratio)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect_ratio)
        width = math.ceil(width / tile) * tile
    return height, width


def tile_grid_from_ids(ids: np.ndarray, image_token_id: int, row_col_ids: Mapping[int, tuple[int, int]],
                       image_seq_len: int) -> tuple[int, int]:
    """``(R, C)`` tiles of one page from its ``input_ids [S]`` (``(0, 0)``: not split).

    Read from the ``<row_r_col_c>`` tokens, the only place the processor's output records the
    tiling (the tile count alone cannot tell 2x3 from 3x2); the torch adapter uses it too.
    """
    ids = np.asarray(ids)
    n_image = int((ids == image_token_id).sum())
    found = [row_col_ids[int(i)] for i in ids[np.isin(ids, list(row_col_ids))]]
    rows = max((r for r, _c in found), default=0)
    cols = max((c for _r, c in found), default=0)
    expected_tiles = rows * cols + 1 if found else 1
    if sorted(found) != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)] \
            or n_image != expected_tiles * image_seq_len:
        raise SapIndexError(f"page has {n_image} image tokens and {len(found)} row/col tokens (up to "
                            f"{rows}x{cols}); expected {image_seq_len} per tile, one tile per row/col token + 1")
    return rows, cols


class Idefics3Preprocessor(PreprocessorBase[Idefics3Params]):
    """``process_images`` / ``process_queries`` of colpali-engine's ``ColIdefics3Processor``, torch-free."""

    def __init__(self, params: Idefics3Params, tokenizer_path):
        super().__init__(params, tokenizer_path)
        self.image_token_id = self.token_id(params.image_token)
        self.row_col_ids = {}  # {token id: (row, col)}, 1-based, as the processor numbers tiles
        for r in range(1, MAX_TILES_PER_SIDE + 1):
            for c in range(1, MAX_TILES_PER_SIDE + 1):
                self.row_col_ids[self.token_id(params.row_col_token.format(row=r, col=c))] = (r, c)

    # -- geometry --------------------------------------------------------------------------

    def tile_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(R, C)`` local tiles for a page of this size; ``(0, 0)`` when it is one unsplit tile."""
        p = self.params
        if not p.do_image_splitting:
            resized_size(height, width, p.longest_edge)  # refuses empty images like the split path
            return 0, 0
        h, w = canvas_size(*resized_size(height, width, p.longest_edge), p.tile_size)
        if h > p.tile_size or w > p.tile_size:
            return h // p.tile_size, w // p.tile_size
        return 0, 0

    def visual_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the local token grid over the page: ``(s*R, s*C)``, or ``(s, s)`` unsplit."""
        rows, cols = self.tile_grid(height, width)
        s = self.params.tokens_per_side
        return (s * rows, s * cols) if rows else (s, s)

    # -- pages -----------------------------------------------------------------------------

    def pages(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Model inputs for a batch of page images (any PIL mode; converted to RGB like colpali)."""
        if not images:
            raise SapIndexError("no page images to preprocess")
        p = self.params
        tiles, texts = [], []
        for image in images:
            page_tiles, (rows, cols) = self._tiles(image.convert("RGB"))
            tiles.append(page_tiles)
            texts.append(p.visual_prompt.replace(p.image_token, self._image_text(rows, cols)))
        input_ids, attention_mask = self.pad(texts)
        m, n_max = p.tile_size, max(len(t) for t in tiles)
        pixel_values = np.zeros((len(images), n_max, 3, m, m), np.float32)  # [B, N, 3, M, M], zero tiles pad
        pixel_attention_mask = np.zeros((len(images), n_max, m, m), np.int64)  # [B, N, M, M]
        for i, page_tiles in enumerate(tiles):
            pixel_values[i, : len(page_tiles)] = page_tiles
            pixel_attention_mask[i, : len(page_tiles)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                "pixel_attention_mask": pixel_attention_mask}

    def layouts(self, batch: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, TokenLayout]]:
        """Per page of a :meth:`pages` batch: its image tokens' positions (every ``<image>`` of the
        row, tile by tile) and their geometry, read from the ``input_ids``."""
        p = self.params
        out = []
        for ids in batch["input_ids"]:
            layout = TokenLayout.tiled(*tile_grid_from_ids(ids, self.image_token_id, self.row_col_ids, p.image_seq_len),
                                       p.tokens_per_side)
            out.append((self.positions(ids, layout), layout))
        return out

    def _tiles(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """One RGB page -> (tiles ``[N, 3, M, M]`` float32, (R, C)), the three passes of the module doc."""
        p = self.params
        m = p.tile_size
        height, width = resized_size(image.height, image.width, p.longest_edge)
        image = self.resize(image, width, height)  # pass 1, uint8
        if not p.do_image_splitting:
            crops, rows, cols = [self.resize(image, m, m)], 0, 0
        else:
            height, width = canvas_size(height, width, m)
            image = self.resize(image, width, height)  # pass 2, uint8, R*M x C*M
            if height > m or width > m:
                rows, cols = height // m, width // m
                crops = [image.crop((c * m, r * m, (c + 1) * m, (r + 1) * m)) for r in range(rows) for c in range(cols)]
                crops.append(self.resize(image, m, m))  # pass 3: the global tile
            else:
                crops, rows, cols = [image], 0, 0
        tiles = [self.normalize(crop).transpose(2, 0, 1) for crop in crops]  # each [3, M, M]
        return np.stack(tiles), (rows, cols)

    def _image_text(self, rows: int, cols: int) -> str:
        """What ``Idefics3Processor.replace_image_token`` puts in place of the prompt's ``<image>``."""
        p = self.params
        tile = p.image_token * p.image_seq_len
        glob = p.fake_image_token + p.global_image_token + tile + p.fake_image_token
        if rows == 0:
            return glob
        lines = ["".join(p.fake_image_token + p.row_col_token.format(row=r, col=c) + tile
                         for c in range(1, cols + 1)) + "\n" for r in range(1, rows + 1)]
        return "".join(lines) + "\n" + glob

    # -- queries ---------------------------------------------------------------------------

    def queries(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``process_queries``: prefix + text + augmentation tokens, tokenized alone, padded to the longest."""
        if not texts:
            raise SapIndexError("no queries to preprocess")
        p = self.params
        suffix = p.query_augmentation_token * p.n_augmentation
        input_ids, attention_mask = self.pad([p.query_prefix + t + suffix for t in texts])
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def query_extras(self, batch: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
        """Text-graph inputs a :meth:`queries` batch has no value for: zero image features
        ``[B, 1, hidden]`` (a query has no ``<image>`` token, so none is gathered)."""
        return {"image_embeds": self.no_image(len(batch["input_ids"]), hidden)}
