"""A tiny random checkpoint in jina-embeddings-v4's on-disk layout, built offline.

No jina checkpoint can be downloaded here, so tests build one with the same files a user copies
from the hub: ``config.json`` (Qwen2.5-VL fields + jina keys + ``auto_map`` to remote code),
base weights under Qwen2ForConditionalGeneration names plus ``multi_vector_projector.*`` and an
unused ``lm_head``, ``adapters/`` (peft ``adapter_config.json`` + ``adapter_model.safetensors``
with one LoRA per task on every targeted Linear, ``base_model.model.<module>.lora_{A,B}.<task>``),
tokenizer and ``preprocessor_config.json``, and a ``modeling_jina_embeddings_v4.py`` that raises
if anything imports it. The backbone is the tiny ColQwen2.5 of :mod:`sapindex.testing.tiny`.

Two unverified choices of the real checkpoint are parameters: ``config_layout`` (``nested``:
``text_config`` as transformers 5 writes it; ``flat``: text fields at the top level, as
Qwen2.5-VL configs of 2025 were) and ``key_layout`` (``new``: ``model.language_model.*`` /
``model.visual.*``; ``legacy``: ``model.layers.*`` / ``visual.*``).
"""

from __future__ import annotations

import json
from pathlib import Path

from sapindex.testing.tiny import make_tiny, tiny_spec

TASKS = ("retrieval", "text-matching", "code")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY_LAYOUTS = {
    "new": {"visual.": "model.visual.", "language_model.": "model.language_model.",
            "custom_text_proj.": "multi_vector_projector."},
    "legacy": {"visual.": "visual.", "language_model.": "model.", "custom_text_proj.": "multi_vector_projector."},
}
REMOTE_CODE = "raise ImportError('sapindex must never execute a checkpoint's own modeling code')\n"


def build_tiny_jina(out_dir: str | Path, config_layout: str = "nested", key_layout: str = "new",
                    rank: int = 4, alpha: float = 8.0, seed: int = 0, **sizes) -> Path:
    """``sizes`` override the backbone's :class:`~sapindex.testing.tiny.TinySpec` (e.g. real widths)."""
    import torch
    from safetensors.torch import save_file

    model, processor = make_tiny(tiny_spec("colqwen2_5", seed=seed, **sizes))
    out = Path(out_dir)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    rename = _KEY_LAYOUTS[key_layout]

    def jina_name(name: str) -> str:
        prefix = next(p for p in rename if name.startswith(p))
        return rename[prefix] + name[len(prefix):]

    state = {jina_name(k): v.contiguous() for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    generator = torch.Generator().manual_seed(seed + 1)
    text = model.config.text_config
    state["lm_head.weight"] = torch.randn(text.vocab_size, text.hidden_size, generator=generator)
    save_file(state, str(out / "model.safetensors"))

    lora = {}
    targets = [n for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("language_model.")
               and n.rsplit(".", 1)[-1] in LORA_TARGETS]
    for name in targets + ["custom_text_proj"]:
        linear = model.get_submodule(name)
        module = jina_name(name + ".")[:-1]
        prefix = f"base_model.model.{module}"
        for task in TASKS:
            lora[f"{prefix}.lora_A.{task}.weight"] = 0.05 * torch.randn(rank, linear.in_features, generator=generator)
            lora[f"{prefix}.lora_B.{task}.weight"] = 0.05 * torch.randn(linear.out_features, rank, generator=generator)
    save_file(lora, str(out / "adapters" / "adapter_model.safetensors"))
    _write_json(out / "adapters" / "adapter_config.json", {
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": "(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
                          "|.*(multi_vector_projector).*$)",
        "base_model_name_or_path": "jinaai/jina-embeddings-v4", "task_type": "FEATURE_EXTRACTION",
        "use_rslora": False, "use_dora": False, "task_names": list(TASKS),
    })
    _write_json(out / "config.json", _jina_config(model.config.to_dict(), config_layout))
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text(encoding="utf-8"))
    pre["auto_map"] = {"AutoProcessor": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Processor"}
    _write_json(out / "preprocessor_config.json", pre)
    (out / "modeling_jina_embeddings_v4.py").write_text(REMOTE_CODE, encoding="utf-8")
    return out


def _jina_config(config: dict, layout: str) -> dict:
    config = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    if layout == "flat":
        text = config.pop("text_config")
        config.update({k: v for k, v in text.items() if k not in ("model_type", "architectures")})
    config.update({
        "architectures": ["JinaEmbeddingsV4Model"],
        "auto_map": {"AutoConfig": "configuration_jina_embeddings_v4.JinaEmbeddingsV4Config",
                     "AutoModel": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Model"},
        "task_names": list(TASKS),
        "multi_vector_projector_dim": 128,
        "matryoshka_dims": [128, 256, 512, 1024, 2048],
        "single_vector_pool_strategy": "mean",
        "truncate_dim": None,
        "verbosity": 1,
    })
    return config


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
