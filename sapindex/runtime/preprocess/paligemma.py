"""Torch-free ColPali preprocessing (numpy + PIL + ``tokenizers``), both checkpoint flavours.

Reproduces ``process_images`` / ``process_queries`` of colpali-engine's ``ColPaliProcessor``
(family ``colpali``) and of transformers' ``ColPaliProcessor`` (``colpali_hf``). Every number
lives in :class:`PaliGemmaParams`, extracted from the live processor by
``sapindex.exporter.preprocessing_params.paligemma_params``.

Pages need no tokenizer: every page is the same ``page_token_ids`` sequence (``<image>`` x
image_seq_length, then the prompt), recorded exactly as the live processor produced it. The
two flavours differ there: the engine's prompt ``"<image><bos>Describe the image."`` gets a
second ``<bos>`` from ``PaliGemmaProcessor`` (``<image>...<bos><bos>Describe the image.\\n``);
the hf one has a single ``<bos>``.

Pixels: the page is squashed to ``image_size`` x ``image_size`` (aspect not kept) with the same
arithmetic as transformers' PIL backend (``SiglipImageProcessorPil``): bicubic
:func:`~sapindex.runtime.preprocess.base.resize_hv` (horizontal pass first), rescale in float64,
normalise in float32. Bit-identical to that backend given the same pass order; against the
torchvision backend colpali actually uses: within
:data:`~sapindex.runtime.preprocess.base.TORCHVISION_MAX_LEVELS` uint8 levels, few values off at
all, and only float32 rounding apart for pages already at ``image_size`` (checked by
tests/families/paligemma/; the measured figures are in docs/measurements.md).

Attention (``prefix_mask``, an extra int64 ``[B, S]`` input that the torch models derive from
``token_type_ids``): PaliGemma puts every token whose ``token_type_ids`` is 0 into one
bidirectional block, the rest is causal; keys are always limited to ``attention_mask``.
``prefix_mask = 1`` marks that block:

- pages: all 1 (the processor's ``token_type_ids`` are all 0; pages are never padded);
- hf queries: all 1, padding included, because transformers' processor returns
  ``token_type_ids`` = 0 everywhere: valid tokens see every valid token (bidirectional), and
  left-padding rows see the valid tokens too (their outputs are zeroed anyway);
- engine queries: all 0: ``process_texts`` asks for no ``token_type_ids``, so the mask is plain
  causal + padding (and those queries carry no ``token_type_ids`` key, as colpali's do not).

Outputs (the live processor's keys and order, ``labels`` dropped, ``prefix_mask`` appended)::

    pages:    input_ids [B, S], token_type_ids [B, S], attention_mask [B, S] int64,
              pixel_values [B, 3, image_size, image_size] float32, prefix_mask [B, S] int64
    queries:  input_ids, [token_type_ids (hf only)], attention_mask, prefix_mask  [B, M] int64
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

__all__ = ["PaliGemmaParams", "PaliGemmaPreprocessor"]


@dataclass(frozen=True)
class PaliGemmaParams(ManifestParams):
    """Everything the ColPali processors need, as stored in a bundle manifest. No defaults on purpose.

    A query is tokenized as ``bos_token + query_prefix + text + query_augmentation_token *
    n_augmentation + query_suffix`` (engine: ``"<bos>" + "" + q + "<pad>"*10``; hf:
    ``"<bos>Question: " + q + "<pad>"*10 + "\\n"``) with the bundle tokenizer, which adds no
    BOS itself (the processors turn ``add_bos_token`` off).
    """

    image_size: int
    image_seq_length: int
    image_token_id: int
    page_token_ids: tuple[int, ...]
    bos_token: str
    query_suffix: str
    query_prefix_lm: bool

    LIST_FIELDS = ("image_mean", "image_std", "page_token_ids")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "page_token_ids", tuple(int(v) for v in self.page_token_ids))
        if math.isqrt(self.image_seq_length) ** 2 != self.image_seq_length:
            raise SapIndexError(f"preprocessing params: image_seq_length {self.image_seq_length} is not a square grid")
        n_image = self.page_token_ids.count(self.image_token_id)
        if n_image != self.image_seq_length:
            raise SapIndexError(f"preprocessing params: page_token_ids hold {n_image} image tokens, "
                                f"expected image_seq_length {self.image_seq_length}")

    @property
    def grid_side(self) -> int:
        return math.isqrt(self.image_seq_length)


class PaliGemmaPreprocessor(PreprocessorBase[PaliGemmaParams]):
    """``process_images`` / ``process_queries`` of the ColPali processors, torch-free."""

    def __init__(self, params: PaliGemmaParams, tokenizer_path):
        super().__init__(params, tokenizer_path)
        self.image_token_id = params.image_token_id

    # -- pages -----------------------------------------------------------------------------

    def visual_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of visual tokens: fixed, whatever the page size (it is squashed to a square)."""
        if height <= 0 or width <= 0:
            raise SapIndexError(f"image has no pixels ({width}x{height})")
        return self.params.grid_side, self.params.grid_side

    def pages(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Model inputs for a batch of page images (any PIL mode; converted to RGB like colpali)."""
        if not images:
            raise SapIndexError("no page images to preprocess")
        p = self.params
        size = p.image_size
        pixels = [self.normalize(self.resize(image.convert("RGB"), size, size)).transpose(2, 0, 1)  # [3, size, size]
                  for image in images]
        input_ids = np.tile(np.asarray(p.page_token_ids, np.int64), (len(images), 1))  # [B, S]
        return {
            "input_ids": input_ids,
            "token_type_ids": np.zeros_like(input_ids),  # one bidirectional block
            "attention_mask": np.ones_like(input_ids),  # same length for every page: no padding
            "pixel_values": np.ascontiguousarray(np.stack(pixels)),  # [B, 3, size, size] float32
            "prefix_mask": np.ones_like(input_ids),
        }

    def layouts(self, batch: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, TokenLayout]]:
        """Per page of a :meth:`pages` batch: its image tokens' positions and the ``side x side``
        raster grid they cover (token k at ``(k // side, k % side)``), the same for every page."""
        layout = TokenLayout.raster(self.params.grid_side, self.params.grid_side)  # every page: one fixed grid
        return [(self.positions(ids, layout), layout) for ids in batch["input_ids"]]

    # -- queries ---------------------------------------------------------------------------

    def queries(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``process_queries``: bos + prefix + text + augmentation tokens + suffix, padded to the longest."""
        if not texts:
            raise SapIndexError("no queries to preprocess")
        p = self.params
        suffix = p.query_augmentation_token * p.n_augmentation + p.query_suffix
        input_ids, attention_mask = self.pad([p.bos_token + p.query_prefix + t + suffix for t in texts])
        batch = {"input_ids": input_ids}
        if p.query_prefix_lm:
            batch["token_type_ids"] = np.zeros_like(input_ids)  # [B, M]: all in the prefix block
        batch["attention_mask"] = attention_mask
        batch["prefix_mask"] = np.full_like(input_ids, int(p.query_prefix_lm))  # [B, M]
        return batch

    def query_extras(self, batch: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
        """Text-graph inputs a :meth:`queries` batch has no value for: zero image features
        ``[B, 1, hidden]`` (a query has no ``<image>`` token; ``prefix_mask`` is already in the batch)."""
        return {"image_embeds": self.no_image(len(batch["input_ids"]), hidden)}
