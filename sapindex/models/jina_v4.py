"""jina-embeddings-v4 without its remote code: Qwen2.5-VL + merged retrieval LoRA + 128-d projector.

The checkpoint ships its own modeling code (``auto_map`` -> ``modeling_jina_embeddings_v4.py``);
air-gapped users must not execute code that came with weights, so sapindex reads only its
files: ``config.json`` (a ``Qwen2_5_VLConfig`` plus jina keys), the base weights, and the
task adapters in ``adapters/`` (peft layout of jina's ``MultiAdapterLinear``: one LoRA per task
on every targeted Linear). The ``retrieval`` task's deltas are merged into the weights,
``W' = W + scaling * B @ A``, and the multi-vector head is jina's ``multi_vector_projector``
(hidden -> 128, bias) placed where ColQwen2.5 keeps ``custom_text_proj``. What jina computes,
``normalize(projector(last_hidden_state)) * attention_mask`` on a Qwen2.5-VL forward whose
M-RoPE positions come from ``get_rope_index(input_ids, image_grid_thw, attention_mask)``, is
then exactly colpali-engine's ``ColQwen2_5.forward``, so calibration, export (the Qwen2.5-VL
graphs) and the runtime (``runtime/preprocess/qwen2_vl.py``) are shared with ColQwen2.5.

Prompts are jina's own: pages ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>
Describe the image.<|im_end|>\\n``, queries ``"Query: " + text`` with no augmentation tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from sapindex.errors import SapIndexError
from sapindex.families import JINA_V4_KEYS, ModelInfo
from sapindex.models._compat import prepare_torch_side
from sapindex.models.qwen2_vl import Qwen2VLAdapter

TASK = "retrieval"
PAGE_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
QUERY_PREFIX = "Query: "
# config.json keys of JinaEmbeddingsV4Config that Qwen2_5_VLConfig does not know
_CONFIG_EXTRAS = (*JINA_V4_KEYS, "architectures", "auto_map", "matryoshka_dims", "truncate_dim",
                  "pretrained_peft_model_name_or_path", "verbosity")
# checkpoint key prefix -> ColQwen2_5 state-dict prefix (both transformers layouts of Qwen2.5-VL)
_KEY_PREFIXES = (
    ("model.visual.", "visual."),
    ("visual.", "visual."),
    ("model.language_model.", "language_model."),
    ("model.", "language_model."),  # legacy flat layout: model.layers / model.embed_tokens / model.norm
    ("multi_vector_projector.", "custom_text_proj."),
)
KEY_MAPPING = {rf"^{re.escape(prefix)}": target for prefix, target in _KEY_PREFIXES}
_IGNORED_PREFIXES = ("lm_head.",)  # the LM head is never used for embeddings
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\."
                       r"(?P<rest>.+)\.(?P<param>weight|bias)$")


def map_key(name: str) -> str | None:
    """The ColQwen2_5 state-dict key for a jina checkpoint key; ``None`` for keys we drop."""
    if name.startswith(_IGNORED_PREFIXES):
        return None
    for prefix, target in _KEY_PREFIXES:
        if name.startswith(prefix):
            return target + name[len(prefix):]
    raise KeyError(name)


def backbone_config(config: dict):
    """``Qwen2_5_VLConfig`` from jina's config.json (flat legacy or nested ``text_config``)."""
    from transformers import Qwen2_5_VLConfig

    clean = {k: v for k, v in config.items() if k not in _CONFIG_EXTRAS}
    clean["model_type"] = "qwen2_5_vl"
    return Qwen2_5_VLConfig(**clean)


def jina_processor(path: Path):
    """jina's page/query processing on top of colpali-engine's ColQwen2.5 processor, from the
    checkpoint's tokenizer and ``preprocessor_config.json`` only (its ``auto_map`` is ignored).

    The subclass is made here so that importing this module does not import colpali-engine.
    """
    prepare_torch_side()
    from colpali_engine.models import ColQwen2_5_Processor
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    class _JinaProcessor(ColQwen2_5_Processor):
        visual_prompt_prefix = PAGE_PROMPT
        query_prefix = QUERY_PREFIX
        query_augmentation_token = ""  # jina appends nothing to queries

    try:
        image_processor = Qwen2VLImageProcessor.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SapIndexError(f"{path}: cannot read the jina-embeddings-v4 processor files: {exc}") from None
    processor = _JinaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor())
    processor.n_augmentation = 0
    return processor


class JinaV4Adapter(Qwen2VLAdapter):
    @classmethod
    def load(cls, info: ModelInfo, *, device: torch.device, dtype: torch.dtype) -> JinaV4Adapter:
        model = load_jina_v4(info.path, task=TASK, dtype=dtype).to(device)
        processor = jina_processor(info.path)
        adapter = cls(info, model, processor, device, dtype)
        adapter.check_eager()
        return adapter


def load_jina_v4(path: Path, task: str = TASK, dtype: torch.dtype = torch.float32):
    """A ColQwen2_5 (eager attention, eval mode) holding jina's weights with ``task``'s LoRA merged.

    transformers' ``from_pretrained`` does the loading (sharded files, meta-device init) under an
    explicit config and key mapping, so no file of the checkpoint decides which code runs.
    """
    prepare_torch_side()
    from colpali_engine.models import ColQwen2_5

    path = Path(path)
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    dim = int(raw.get("multi_vector_projector_dim", 128))
    if dim != 128:
        raise SapIndexError(f"{path / 'config.json'}: multi_vector_projector_dim {dim}; only 128 is supported")
    try:
        model, loading = ColQwen2_5.from_pretrained(
            str(path), config=backbone_config(raw), key_mapping=KEY_MAPPING, dtype=torch.float32,
            attn_implementation="eager", local_files_only=True, output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SapIndexError(f"{path}: cannot load as jina-embeddings-v4: {str(exc).strip().splitlines()[0]}") from None
    missing = sorted(loading.get("missing_keys", ()))
    unexpected = sorted(k for k in loading.get("unexpected_keys", ()) if not k.startswith(_IGNORED_PREFIXES))
    if missing or unexpected:
        raise SapIndexError(
            f"{path}: weights do not match a jina-embeddings-v4 layout (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); refusing to run with randomly initialised weights"
        )
    merge_task_lora(model, path / "adapters", task)
    return model.to(dtype).eval()


def merge_task_lora(model, adapter_dir: Path, task: str) -> int:
    """Add ``scaling * B_task @ A_task`` to every targeted Linear; returns how many were merged."""
    cfg_file = adapter_dir / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SapIndexError(f"{cfg_file}: unreadable adapter config: {exc}") from None
    if (cfg.get("peft_type", "LORA") != "LORA" or cfg.get("rank_pattern") or cfg.get("alpha_pattern")
            or cfg.get("use_dora")):
        raise SapIndexError(f"{cfg_file}: only plain LoRA adapters (one rank and alpha, no DoRA) are supported")
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / rank ** 0.5 if cfg.get("use_rslora") else alpha / rank
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    tasks = set()
    for name, tensor in _read_adapter_tensors(adapter_dir).items():
        m = _LORA_KEY.match(name)
        if m is None:
            raise SapIndexError(f"{adapter_dir}: {name!r} is not a LoRA tensor name")
        tasks.add(m["rest"].rsplit(".", 1)[-1])
        if m["rest"].rsplit(".", 1)[-1] != task:
            continue
        pairs.setdefault(m["module"], {})[f"{m['ab']}.{m['param']}"] = tensor.float()
    if task not in tasks:
        raise SapIndexError(f"{adapter_dir}: no LoRA weights for task {task!r} (found {sorted(tasks) or 'none'})")
    for module_name, parts in pairs.items():
        try:
            target = map_key(module_name + ".weight")
            linear = model.get_submodule(target.rsplit(".", 1)[0]) if target else None
        except (KeyError, AttributeError):
            linear = None
        if not isinstance(linear, torch.nn.Linear) or "A.weight" not in parts or "B.weight" not in parts:
            raise SapIndexError(f"{adapter_dir}: LoRA weights for {module_name!r} match no Linear layer of the model")
        with torch.no_grad():
            delta = parts["B.weight"] @ parts["A.weight"]  # [out, r] @ [r, in] -> [out, in]
            linear.weight += scaling * delta.to(linear.weight.dtype)
            if "B.bias" in parts:
                linear.bias += scaling * parts["B.bias"].to(linear.bias.dtype)
    return len(pairs)


def _read_adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        raise SapIndexError(f"{adapter_dir}: no adapter *.safetensors file")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state
