"""Qwen2-VL family adapter: ColQwen2 (Qwen2-VL) and ColQwen2.5 (Qwen2.5-VL) share it.

Both put the page as one contiguous run of ``(h/28) * (w/28)`` ``<|image_pad|>`` tokens after
``<|vision_start|>``; token k sits at grid row ``k // (w/28)``, column ``k % (w/28)``. The
decoder is causal, and pages are left-padded by colpali-engine's processor. Loading is
:meth:`FamilyAdapter.load <sapindex.models.base.FamilyAdapter.load>` as it stands.
"""

from __future__ import annotations

from sapindex.models.base import FamilyAdapter


class Qwen2VLAdapter(FamilyAdapter):
    def decoder_layers(self):
        return list(self.model.language_model.layers)

    def page_inputs(self, images) -> dict:
        return self._to_device(self.processor.process_images(list(images)))

    def visual_mask(self, inputs):
        return inputs["input_ids"] == self.model.config.image_token_id  # [B, S]

    def page_grids(self, inputs):
        merge = self.model.config.vision_config.spatial_merge_size
        thw = inputs["image_grid_thw"].tolist()  # [B, 3]: (t, h/14, w/14)
        return [(h // merge, w // merge) for _t, h, w in thw]
