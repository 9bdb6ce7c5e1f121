"""Idefics3 family adapter: colpali-engine ``ColIdefics3`` (ColSmol), family ``colidefics3``.

The model is ``Idefics3Model`` at ``model.model`` (SigLIP ``vision_model``, pixel-shuffle
``connector``, Llama ``text_model``) plus the 128-d head ``model.linear``; the decoder is causal.
A page is cut into ``R x C`` tiles of ``M x M`` px plus one global tile (the whole page at
``M x M``), each ``s x s = image_seq_len`` ``<image>`` tokens, tile after tile in the sequence
(``sapindex.runtime.preprocess.idefics3`` has the exact resize chain and text). Every ``<image>`` token,
local or global, is a SAP candidate and a SAP row, as colpali-engine's image mask has it.

Token geometry (:meth:`Idefics3Adapter.page_layouts`, the convention of
:class:`sapindex.runtime.layout.TokenLayout`): sequence image token ``k`` is local when
``k < n*R*C``: tile ``t = k // n``, ``(r, c) = (t // C, t % C)``, ``i = k % n`` -> cell
``(s*r + i // s, s*c + i % s)`` of the ``s*R x s*C`` grid that covers the whole page (pass 2
stretches the page onto the ``R*M x C*M`` canvas, no crop or pad, so a cell is ``H0/(s*R)`` x
``W0/(s*C)`` page pixels); global when ``k >= n*R*C``: cell ``((k - n*R*C) // s, (k - n*R*C) % s)``
of an ``s x s`` grid over the whole page. Pixel shuffle makes token ``i`` of a tile cover the
``scale x scale`` patches at patch rows ``scale*(i // s)..``, cols ``scale*(i % s)..``, i.e. a
row-major ``s x s`` grid of ``M/s`` px cells (checked by tests/families/idefics3/ with the
model's own patch embedding and connector).
"""

from __future__ import annotations

import math

import torch

from sapindex.errors import SapIndexError
from sapindex.models.base import FamilyAdapter
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.preprocess.idefics3 import MAX_TILES_PER_SIDE, tile_grid_from_ids


class Idefics3Adapter(FamilyAdapter):
    # ColIdefics3 has no LM head (Idefics3Model + linear): nothing is left on the meta device
    # after from_pretrained, unlike ColPali, so fix_loaded stays the default.

    def check_processor(self) -> None:
        self.tokens_per_side()  # refuse a processor/model mismatch

    def decoder_layers(self):
        return list(self.model.model.text_model.layers)

    def page_inputs(self, images) -> dict:
        # process_images converts to RGB itself; returns input_ids, attention_mask,
        # pixel_values [B, N, 3, M, M] (zero tiles pad) and pixel_attention_mask [B, N, M, M].
        return self._to_device(self.processor.process_images(list(images)))

    def visual_mask(self, inputs):
        return inputs["input_ids"] == self.image_token_id  # [B, S]: local and global tiles alike

    def projection(self):
        return self.model.linear

    def tokens_per_side(self) -> int:
        """``s = sqrt(image_seq_len)``, after checking that processor and model agree on it.

        The processor writes ``image_seq_len`` tokens per tile whatever the model computes; the
        model yields ``(tile/patch)^2 / scale^2`` per tile, and the exported vision graph takes
        position ids ``0..P-1`` directly, which is only what transformers computes for tiles
        the full ``vision_config.image_size`` (``max_image_size`` of the image processor).
        """
        config = self.model.config
        vision = config.vision_config
        n = int(self.processor.image_seq_len)
        side = math.isqrt(n)
        per_side = vision.image_size // vision.patch_size // config.scale_factor
        tile = int(self.processor.image_processor.max_image_size["longest_edge"])
        if side * side != n or side != per_side or tile != vision.image_size:
            raise SapIndexError(
                f"{self.info.path}: processor image_seq_len {n} / tile {tile} px does not match the model "
                f"({vision.image_size} px tiles, {vision.patch_size} px patches, pixel shuffle x{config.scale_factor} "
                f"-> {per_side}x{per_side} tokens per tile)"
            )
        if int(self.processor.image_token_id) != self.image_token_id:
            raise SapIndexError(f"{self.info.path}: processor <image> id {self.processor.image_token_id} != "
                                f"config image_token_id {self.image_token_id}")
        return side

    def page_layouts(self, inputs) -> list[TokenLayout]:
        """Token geometry of every page of a :meth:`page_inputs` batch (module doc), read from the
        ``<row_r_col_c>`` tokens of its ``input_ids`` the way the runtime does."""
        side = self.tokens_per_side()
        per_side = MAX_TILES_PER_SIDE  # processor.row_col_ids: <row_{r}_col_{c}>, r-major, 1-based
        listed = self.processor.row_col_ids
        unk = self.processor.tokenizer.unk_token_id
        if None in listed or (unk is not None and unk in listed) or len(set(listed)) != per_side**2:
            raise SapIndexError(f"{self.info.path}: the tokenizer lacks some <row_r_col_c> tokens (r, c in 1..6); "
                                "a page's tiling cannot be read from its tokens")
        row_col_ids = {int(i): (k // per_side + 1, k % per_side + 1) for k, i in enumerate(listed)}
        ids = inputs["input_ids"].cpu().numpy()  # [B, S]
        return [TokenLayout.tiled(*tile_grid_from_ids(row, self.image_token_id, row_col_ids,
                                                      self.processor.image_seq_len), side)
                for row in ids]

    def page_grids(self, inputs):
        """``(s*R, s*C)`` local token grid per page (kept for ``ReferenceEncoding.grid``; see :meth:`page_layouts`)."""
        return [layout.grid for layout in self.page_layouts(inputs)]

    @torch.no_grad()
    def forward_embeddings(self, inputs: dict) -> torch.Tensor:
        """``ColIdefics3.forward`` without the KV cache: ``[B, S, dim]``.

        ``ColIdefics3.forward`` has no LM head to skip (``Idefics3Model`` + ``linear``), but the
        base model defaults to ``use_cache=True`` and fills a ``DynamicCache`` with every
        layer's keys and values for the whole page, which an embedding pass never reads.
        """
        return self.model(**inputs, use_cache=False)
