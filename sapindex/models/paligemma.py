"""PaliGemma family adapter: ColPali in both checkpoint flavours.

- colpali-engine ``ColPali`` (family ``colpali``, config ``model_type: "paligemma"``): the
  model is ``PaliGemmaForConditionalGeneration`` at ``model.model`` plus ``custom_text_proj``.
- transformers ``ColPaliForRetrieval`` (family ``colpali_hf``, ``model_type: "colpali"``, the
  "-hf" checkpoints): ``PaliGemmaModel`` at ``model.vlm`` plus ``embedding_proj_layer``.

A page is always ``image_seq_length`` (1024 for 448 px) ``<image>`` tokens first, then the
prompt: a fixed ``side x side`` grid of 14 px SigLIP patches of the page squashed to a square,
token k at row ``k // side``, column ``k % side``. The decoder is a prefix-LM: tokens with
``token_type_ids == 0`` (the whole page, and hf queries) attend each other bidirectionally,
so in-degree has no causal position bias there.
"""

from __future__ import annotations

import math

import torch

from sapindex.errors import SapIndexError
from sapindex.families import ModelInfo
from sapindex.models.base import FamilyAdapter

HF_FAMILY = "colpali_hf"


def _tie_lm_head(model) -> None:
    """Tie colpali-engine ColPali's LM head to the token embeddings, as PaliGemma's config says.

    ``ColPali.tie_weights`` only reaches the Gemma decoder, which has no head, so with
    transformers 5 a checkpoint without ``lm_head`` weights (``save_pretrained`` drops tied
    ones) leaves ``model.lm_head`` on the meta device, and moving the model fails. The head is
    never used for embeddings, but ``ColPali.forward`` (the reference) computes it.
    """
    if not hasattr(model, "vlm"):
        model.model.tie_weights()


class PaliGemmaAdapter(FamilyAdapter):
    fix_loaded = staticmethod(_tie_lm_head)

    @staticmethod
    def model_library(info: ModelInfo):
        """transformers for the "-hf" conversion (``ColPaliForRetrieval``), colpali-engine otherwise."""
        if info.family.name == HF_FAMILY:
            import transformers

            return transformers
        return FamilyAdapter.model_library(info)

    def check_processor(self) -> None:
        self.grid_side()  # refuse a non-square token grid

    @property
    def is_hf(self) -> bool:
        return hasattr(self.model, "vlm")

    def backbone(self):
        """The ``PaliGemmaModel`` (vision tower, projector, Gemma decoder; no LM head)."""
        return self.model.vlm if self.is_hf else self.model.model.model

    def decoder_layers(self):
        return list(self.backbone().language_model.layers)

    def page_inputs(self, images) -> dict:
        batch = self.processor.process_images(images=[image.convert("RGB") for image in images])
        # labels (all -100) would make the reference forward compute a loss; token_type_ids
        # (all 0) is what turns the page into one bidirectional block.
        return self._to_device({k: v for k, v in batch.items() if k != "labels"})

    def visual_mask(self, inputs):
        return inputs["input_ids"] == self.image_token_id  # [B, S]

    @property
    def image_token_id(self) -> int:
        return int(self.backbone().config.image_token_id)

    def projection(self):
        return self.model.embedding_proj_layer if self.is_hf else self.model.custom_text_proj

    def graph_inputs(self, inputs: dict) -> dict:
        """Adds ``prefix_mask [B, S]`` (1 = in the bidirectional block), which PaliGemma derives
        from ``token_type_ids == 0``, padding included; no ``token_type_ids`` (engine queries)
        means no block: plain causal. ``runtime.paligemma`` builds the same from the text alone."""
        ids = inputs["input_ids"]
        token_types = inputs.get("token_type_ids")
        prefix = (token_types == 0).long() if token_types is not None else torch.zeros_like(ids)
        return {**inputs, "prefix_mask": prefix}

    def grid_side(self) -> int:
        """``side`` of the fixed ``side x side`` token grid: sqrt(image_seq_length)."""
        n = int(self.processor.image_seq_length)
        side = math.isqrt(n)
        vision = self.backbone().config.vision_config
        if side * side != n or n != (vision.image_size // vision.patch_size) ** 2:
            raise SapIndexError(
                f"{self.info.path}: image_seq_length {n} is not the square patch grid of a "
                f"{vision.image_size} px image with {vision.patch_size} px patches"
            )
        return side

    def page_grids(self, inputs):
        side = self.grid_side()
        return [(side, side)] * inputs["input_ids"].shape[0]

    @torch.no_grad()
    def forward_embeddings(self, inputs: dict) -> torch.Tensor:
        """The checkpoint class's own forward minus ``lm_head``: ``[B, S, dim]``.

        ``ColPali.forward`` runs ``PaliGemmaForConditionalGeneration``, whose LM head
        (hidden x 257,216 per token) is computed and thrown away; the final-norm hidden state
        it projects is the base model's ``last_hidden_state``. ``ColPaliForRetrieval`` already
        skips the head but returns an output object, not the tensor.
        """
        kwargs = dict(inputs)
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(self.model.dtype)
        hidden = self.backbone()(**kwargs).last_hidden_state  # [B, S, hidden]
        head = self.projection()
        proj = head(hidden.to(head.weight.dtype))  # [B, S, dim]
        proj = proj / proj.norm(dim=-1, keepdim=True)
        return proj * inputs["attention_mask"].unsqueeze(-1)  # [B, S, dim], padding zeroed
