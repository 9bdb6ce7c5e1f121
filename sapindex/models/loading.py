"""Offline loading of colpali-engine checkpoints, merged or LoRA, refusing silent random weights.

Two failure modes are checked rather than trusted: a checkpoint that lacks some weights of the
class (transformers would initialise them randomly, e.g. a plain Qwen2-VL without the 128-d
``custom_text_proj``), and a LoRA adapter whose saved tensors did not all attach to its base
(peft only warns, and merging then changes nothing or too little).
"""

from __future__ import annotations

import warnings

import torch

from sapindex.errors import SapIndexError
from sapindex.families import ModelInfo
from sapindex.models._compat import prepare_torch_side


def load_colpali(info: ModelInfo, model_cls, device: torch.device, dtype: torch.dtype, fix=None):
    """Load ``model_cls`` from ``info`` (merging a LoRA adapter when there is one), eager attention, eval mode.

    ``fix(model)`` runs right after loading, for class quirks (ColPali leaves its tied LM head on
    the meta device); any parameter still without data after it is refused like a missing weight.
    """
    prepare_torch_side()
    source = info.base_path if info.is_lora else info.path
    try:
        model, loading = model_cls.from_pretrained(
            str(source), dtype=dtype, attn_implementation="eager", local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SapIndexError(f"{source}: cannot load as {model_cls.__name__}: {_first_line(exc)}") from None
    missing = set(loading.get("missing_keys", ()))
    if info.is_lora:
        saved = tuple(info.adapter.get("modules_to_save") or ())
        missing = {k for k in missing if not any(f"{m}." in k or k.startswith(m) for m in saved)}
    if missing:
        shown = ", ".join(sorted(missing)[:3])
        raise SapIndexError(
            f"{source}: checkpoint lacks {len(missing)} weight(s) of {model_cls.__name__} ({shown}...); "
            "refusing to run with randomly initialised weights (is this a ColPali-family retriever checkpoint?)"
        )
    if fix is not None:
        fix(model)
    meta = [name for name, param in model.named_parameters() if param.is_meta]
    if meta:
        raise SapIndexError(f"{source}: {len(meta)} weight(s) of {model_cls.__name__} were never loaded "
                            f"({meta[0]}...); refusing to run with uninitialised weights")
    if info.is_lora:
        model = _merge_lora(info, model)
    return model.to(device).eval()


def _merge_lora(info: ModelInfo, model):
    from peft import PeftModel

    try:
        with warnings.catch_warnings():  # peft warns about hub names and missing keys; we check those ourselves
            warnings.simplefilter("ignore")
            peft_model = PeftModel.from_pretrained(
                model, str(info.path), is_trainable=False, local_files_only=True
            )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SapIndexError(f"{info.path}: cannot apply LoRA adapter: {_first_line(exc)}") from None
    unattached = _unattached_adapter_keys(info, peft_model)
    if unattached:
        raise SapIndexError(
            f"{info.path}: {len(unattached)} LoRA adapter weight(s) did not attach to the base model {info.base_path} "
            f"(e.g. {unattached[0]}; wrong base for this adapter?)"
        )
    return peft_model.merge_and_unload()


def _unattached_adapter_keys(info: ModelInfo, peft_model) -> list[str]:
    """Adapter tensors from the checkpoint that are not in the live model with the same value.

    peft only warns when saved keys match no module; a silently unapplied adapter would index
    with the base model's vectors, so every saved tensor is checked.
    """
    from peft.utils import get_peft_model_state_dict

    saved_path = info.path / "adapter_model.safetensors"
    if saved_path.exists():
        from safetensors.torch import load_file

        saved = load_file(str(saved_path))
    else:
        saved = torch.load(info.path / "adapter_model.bin", map_location="cpu", weights_only=True)
    live = get_peft_model_state_dict(peft_model)
    return sorted(
        k for k, v in saved.items()
        if k not in live or not torch.allclose(live[k].detach().cpu().to(v.dtype), v)
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
