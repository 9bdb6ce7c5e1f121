"""Import-time fixes that the torch side needs before transformers / colpali-engine load.

- Offline: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are forced on, so no code path can
  reach a hub; every path sapindex loads is a local directory.
- transformers' own progress bars (weight loading, saving) are turned off: the CLI has its own.
- torchvision: on CPU-only machines the only torchvision wheels are CUDA builds whose C
  extension cannot load against CPU torch; ``import torchvision`` then dies registering fake
  kernels for ``torchvision::nms``/``qnms`` (operators that do not exist). transformers' Qwen2-VL
  image processor and colpali-engine import torchvision.transforms, so we declare those two
  operator schemas (without kernels) when the extension is absent. Detection and NMS are never
  used by sapindex; with a working torchvision this does nothing.
"""

from __future__ import annotations

import importlib.util
import os

_TORCHVISION_LIB = None


def prepare_torch_side() -> None:
    """Idempotent: call before importing transformers or colpali_engine."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _torchvision_fix()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # sapindex draws its own progress bars


def _torchvision_fix() -> None:
    global _TORCHVISION_LIB
    if _TORCHVISION_LIB is not None or importlib.util.find_spec("torchvision") is None:
        return
    import torch

    if _torchvision_ops_load():
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        if not _op_exists(op):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_LIB = lib


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _torchvision_ops_load() -> bool:
    """True when torchvision's C extension loads (then no fix is needed)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    origin = spec.origin if spec else None
    if not origin:
        return False
    ext = [p for p in os.listdir(os.path.dirname(origin)) if p.startswith("_C") and p.endswith((".so", ".pyd"))]
    if not ext:
        return False
    try:
        torch.ops.load_library(os.path.join(os.path.dirname(origin), ext[0]))
        return True
    except (OSError, RuntimeError):
        return False
