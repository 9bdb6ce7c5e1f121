"""Which adapter class serves a checkpoint, and :func:`load_adapter`, the one way every command loads one.

The table lives here, not in ``base``, because it imports every family module and every family
module imports ``base``: keeping it apart is what keeps the package free of import circles.
"""

from __future__ import annotations

from pathlib import Path

from sapindex.families import FamilySpec, inspect_model_dir
from sapindex.models.base import FamilyAdapter, resolve_device, resolve_dtype
from sapindex.models.idefics3 import Idefics3Adapter
from sapindex.models.jina_v4 import JinaV4Adapter
from sapindex.models.paligemma import PaliGemmaAdapter
from sapindex.models.qwen2_vl import Qwen2VLAdapter

# backbone (FamilySpec.backbone) -> adapter class
ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": Qwen2VLAdapter,
    "paligemma": PaliGemmaAdapter,
    "idefics3": Idefics3Adapter,
}
# Families whose checkpoints load differently from their backbone's. jina-embeddings-v4 is a
# Qwen2.5-VL for the forward pass, the graphs and the runtime, but its checkpoint ships remote
# code that must not run, other weight names, per-task LoRA adapters to merge and its own
# prompts, so it has its own load (``jina_v4``).
FAMILY_ADAPTERS: dict[str, type[FamilyAdapter]] = {"jina_v4": JinaV4Adapter}


def adapter_class(spec: FamilySpec) -> type[FamilyAdapter]:
    """The adapter class for a family: its own override, else its backbone's."""
    return FAMILY_ADAPTERS.get(spec.name) or ADAPTERS[spec.backbone]


def load_adapter(model_dir: str | Path, *, base_model=None, device: str = "cpu",
                 dtype: str = "float32") -> FamilyAdapter:
    """Load any supported checkpoint offline, with eager attention, ready for SAP."""
    info = inspect_model_dir(model_dir, base_model)
    return adapter_class(info.family).load(info, device=resolve_device(device), dtype=resolve_dtype(dtype))
