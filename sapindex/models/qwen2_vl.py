"""Qwen2-VL family adapter: ColQwen2 (Qwen2-VL) and ColQwen2.5 (Qwen2.5-VL) share it.

Both put the page as one contiguous run of ``(h/28) * (w/28)`` ``<|image_pad|>`` tokens after
``<|vision_start|>``; token k sits at grid row ``k // (w/28)``, column ``k % (w/28)``. The
decoder is causal, and pages are left-padded by colpali-engine's processor.
"""

from __future__ import annotations

import torch

from sapindex.models._compat import prepare_torch_side
from sapindex.models.base import FamilyAdapter
from sapindex.models.loading import load_colpali
from sapindex.families import ModelInfo


class Qwen2VLAdapter(FamilyAdapter):
    @classmethod
    def load(cls, info: ModelInfo, *, device: torch.device, dtype: torch.dtype) -> "Qwen2VLAdapter":
        prepare_torch_side()
        import colpali_engine.models as cm

        model_cls = getattr(cm, info.family.colpali_class)
        processor_cls = getattr(cm, info.family.processor_class)
        model = load_colpali(info, model_cls, device, dtype)
        processor = processor_cls.from_pretrained(str(_processor_dir(info)), local_files_only=True)
        adapter = cls(info, model, processor, device, dtype)
        adapter.check_eager()
        return adapter

    def decoder_layers(self):
        return list(self.model.language_model.layers)

    def page_inputs(self, images) -> dict:
        batch = self.processor.process_images(list(images))
        return self._to_device(batch)

    def query_inputs(self, texts):
        return self._to_device(self.processor.process_queries(list(texts)))

    def visual_mask(self, inputs):
        return inputs["input_ids"] == self.model.config.image_token_id  # [B, S]

    def page_grids(self, inputs):
        merge = self.model.config.vision_config.spatial_merge_size
        thw = inputs["image_grid_thw"].tolist()  # [B, 3]: (t, h/14, w/14)
        return [(h // merge, w // merge) for _t, h, w in thw]

    def _to_device(self, batch) -> dict:
        out = {}
        for key, value in batch.items():
            value = value.to(self.device)
            if key == "pixel_values":
                value = value.to(self.dtype)
            out[key] = value
        return out


def _processor_dir(info: ModelInfo):
    """LoRA checkpoints usually ship their own processor files; fall back to the base's."""
    if info.is_lora and not (info.path / "tokenizer.json").exists() and not (info.path / "tokenizer_config.json").exists():
        return info.base_path
    return info.path
