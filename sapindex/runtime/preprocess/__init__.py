"""Torch-free preprocessing, one module per backbone, reproducing each family's processor in numpy.

:data:`PREPROCESSORS` is keyed by backbone (``sapindex.families.BACKBONES``): families of one
backbone share its code and differ only in the params their bundle records.
:func:`preprocessor_for` builds the one a bundle needs. The contract every preprocessor meets
is :class:`~sapindex.runtime.preprocess.base.Preprocessor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sapindex.errors import SapIndexError
from sapindex.families import FAMILIES
from sapindex.runtime.preprocess.base import ManifestParams, Preprocessor
from sapindex.runtime.preprocess.idefics3 import Idefics3Params, Idefics3Preprocessor
from sapindex.runtime.preprocess.paligemma import PaliGemmaParams, PaliGemmaPreprocessor
from sapindex.runtime.preprocess.qwen2_vl import Qwen2VLParams, Qwen2VLPreprocessor

if TYPE_CHECKING:
    from sapindex.runtime.bundle import Bundle

__all__ = ["PREPROCESSORS", "Preprocessor", "preprocessor_for"]

# backbone -> (params class, preprocessor class: called with those params and the tokenizer path)
PREPROCESSORS: dict[str, tuple[type[ManifestParams], Callable[[Any, Any], Preprocessor]]] = {
    "qwen2_vl": (Qwen2VLParams, Qwen2VLPreprocessor),  # jina_v4's own prompts live in its params
    "paligemma": (PaliGemmaParams, PaliGemmaPreprocessor),  # colpali vs colpali_hf: in the params too
    "idefics3": (Idefics3Params, Idefics3Preprocessor),
}


def preprocessor_for(bundle: Bundle) -> Preprocessor:
    """The bundle's preprocessor, built from its manifest's ``preprocessing`` and its ``tokenizer.json``."""
    spec = FAMILIES.get(bundle.family)
    if spec is None or spec.backbone not in PREPROCESSORS:
        raise SapIndexError(f"{bundle.path}: family {bundle.family!r} has no runtime preprocessing in this sapindex")
    params_cls, pre_cls = PREPROCESSORS[spec.backbone]
    return pre_cls(params_cls.from_dict(bundle.manifest["preprocessing"]), bundle.tokenizer_path)
