"""The one table of supported families, read by every layer (torch-free).

A *family* is what a user downloads (ColQwen2, ColQwen2.5, jina-embeddings-v4, ColPali in two
flavours, ColSmol); a *backbone* is the architecture its code is written for (``qwen2_vl``,
``paligemma``, ``idefics3``). Each layer keys its own small table by backbone: the torch
adapters (``sapindex.models.adapters.ADAPTERS``), the ONNX graphs
(``sapindex.exporter.graphs.GRAPHS``), the torch-free preprocessing
(``sapindex.runtime.preprocess.PREPROCESSORS``) and the tiny checkpoints
(``sapindex.testing.tiny.TINY_BUILDERS``). ``tests/test_families_complete.py`` walks
:data:`FAMILIES` and names any layer that misses one: the checklist for adding a family.

:func:`inspect_model_dir` reads ``config.json`` (and ``adapter_config.json`` for LoRA
checkpoints) and returns a :class:`ModelInfo` or raises :class:`SapIndexError` naming the file
and the reason.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from sapindex.errors import SapIndexError
from sapindex.fingerprint import model_fingerprint
from sapindex.formats import read_json

# What the runtime reads from each graph, whatever the backbone. Format-1 bundles have one text
# graph; format 2 splits it at the end of the SAP window into a head (its outputs are what the tail
# needs) and a tail, which adds the final layer's eos_attention when it has decoder layers.
GRAPH_OUTPUTS = {"vision": ("image_embeds",), "text": ("embeddings", "centrality", "eos_attention"),
                 "head": ("states", "centrality", "attention_bias", "rope_cos", "rope_sin", "eos_attention"),
                 "tail": ("embeddings",)}
TAIL_INPUTS = ("states", "attention_mask", "attention_bias", "rope_cos", "rope_sin")
# the graphs of each bundle format
FORMAT_GRAPHS = {1: ("vision", "text"), 2: ("vision", "head", "tail")}
ATTENTION_KINDS = ("causal", "prefix-lm")


@dataclass(frozen=True)
class Backbone:
    """An architecture that sapindex's code is written for, shared by one or more families."""

    name: str  # names the module of every layer: models/, exporter/graphs/, runtime/preprocess/
    image_token_scheme: str  # how page pixels become visual tokens, for `info` and manifests
    # "causal", or "prefix-lm" where the page (image + prompt) is one bidirectional block: then
    # in-degree has no causal position bias, and `--position-correction` is refused.
    attention: str
    graph_inputs: dict  # graph name -> the input names it takes, in order

    def graph_io(self, version: int = 2, tail_layers: int = 1) -> dict[str, dict[str, list[str]]]:
        """``{graph: {"inputs": [...], "outputs": [...]}}`` of a bundle of format ``version``, as its
        manifest records it (``tail_layers``: decoder layers after the SAP window)."""
        inputs = {**self.graph_inputs, "head": self.graph_inputs["text"], "tail": TAIL_INPUTS}
        outputs = {**GRAPH_OUTPUTS, "tail": GRAPH_OUTPUTS["tail"] + (("eos_attention",) if tail_layers else ())}
        return {name: {"inputs": list(inputs[name]), "outputs": list(outputs[name])}
                for name in FORMAT_GRAPHS[version]}


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "qwen2_vl",
            "dynamic resolution: page resized to multiples of 28 px within min/max pixels, 14 px patches "
            "merged 2x2, one contiguous run of (h/28)*(w/28) image tokens in row-major order",
            "causal",
            {"vision": ("pixel_values", "image_grid_thw"),
             "text": ("input_ids", "attention_mask", "image_embeds", "image_grid_thw")},
        ),
        # one fixed grid (no grid input); prefix_mask marks the bidirectional prefix-LM block
        Backbone(
            "paligemma",
            "fixed resolution: page squashed to a square (448 px in ColPali), 14 px SigLIP patches, "
            "(448/14)^2 = 32x32 = 1024 image tokens in row-major order before <bos> and the prompt; "
            "prefix-LM: image and prompt attend each other bidirectionally",
            "prefix-lm",
            {"vision": ("pixel_values",), "text": ("input_ids", "attention_mask", "image_embeds", "prefix_mask")},
        ),
        # tiles of a fixed size (pixel_values [B, N, 3, M, M]); the ids carry the tiling
        Backbone(
            "idefics3",
            "tiles + global tile: page longest side scaled to longest_edge, stretched onto R x C tiles of M px "
            "(512 px in ColSmol) plus the whole page at M x M as a global tile; SigLIP patches pixel-shuffled "
            "to (M/64)^2 tokens per tile (64 per 512 px tile), tile by tile in row-major order, global tile "
            "last; stored positions are spatial: the (8R x 8C) page grid in raster order, then the 8x8 global "
            "grid",
            "causal",
            {"vision": ("pixel_values",), "text": ("input_ids", "attention_mask", "image_embeds")},
        ),
    )
}


@dataclass(frozen=True)
class FamilySpec:
    """What sapindex knows about one family: how to recognise it, its backbone, what users download."""

    name: str
    model_type: str  # config.json "model_type" of the checkpoint
    colpali_class: str  # model class (colpali-engine; transformers' for colpali_hf)
    processor_class: str  # processor class, from the same library
    backbone: str  # a key of BACKBONES
    # published checkpoints of this family (what users download) and their parameter counts in
    # billions, for `sapindex info` and the bundle-size table of docs/concepts/families.md (fp32 = 4 bytes/parameter)
    checkpoints: tuple[str, ...] = ()
    billions: tuple[float, ...] = ()

    @property
    def arch(self) -> Backbone:
        return BACKBONES[self.backbone]

    @property
    def image_token_scheme(self) -> str:
        return self.arch.image_token_scheme

    @property
    def attention(self) -> str:
        return self.arch.attention

    def graph_io(self, version: int = 2, tail_layers: int = 1) -> dict[str, dict[str, list[str]]]:
        return self.arch.graph_io(version, tail_layers)

    def bundle_gb(self, dtype: str) -> tuple[float, ...]:
        """Estimated bundle size per checkpoint: every weight once, 4 (fp32) or 2 (fp16) bytes."""
        return tuple(round(b * (4 if dtype == "fp32" else 2), 1) for b in self.billions)


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec("colqwen2", "qwen2_vl", "ColQwen2", "ColQwen2Processor", "qwen2_vl",
                   checkpoints=("vidore/colqwen2-v1.0",), billions=(2.21,)),
        FamilySpec("colqwen2_5", "qwen2_5_vl", "ColQwen2_5", "ColQwen2_5_Processor", "qwen2_vl",
                   checkpoints=("vidore/colqwen2.5-v0.2",), billions=(3.75,)),
        # jina-embeddings-v4 declares model_type qwen2_5_vl too: told apart by _is_jina_v4 first
        FamilySpec("jina_v4", "qwen2_5_vl", "ColQwen2_5", "ColQwen2_5_Processor", "qwen2_vl",
                   checkpoints=("jinaai/jina-embeddings-v4",), billions=(3.75,)),
        # colpali-engine ColPali (PaliGemma + custom_text_proj), and transformers' "-hf" conversion
        FamilySpec("colpali", "paligemma", "ColPali", "ColPaliProcessor", "paligemma",
                   checkpoints=("vidore/colpali-v1.2", "vidore/colpali-v1.3"), billions=(2.92, 2.92)),
        FamilySpec("colpali_hf", "colpali", "ColPaliForRetrieval", "ColPaliProcessor", "paligemma",
                   checkpoints=("vidore/colpali-v1.2-hf", "vidore/colpali-v1.3-hf"), billions=(2.92, 2.92)),
        # colpali-engine ColIdefics3 (ColSmol): Idefics3 = SigLIP + pixel shuffle + Llama, causal
        FamilySpec("colidefics3", "idefics3", "ColIdefics3", "ColIdefics3Processor", "idefics3",
                   checkpoints=("vidore/colSmol-256M", "vidore/colSmol-500M"), billions=(0.26, 0.51)),
    )
}


# config.json keys that only jina-embeddings-v4 (remote-code JinaEmbeddingsV4Model) writes
JINA_V4_KEYS = ("task_names", "multi_vector_projector_dim", "single_vector_pool_strategy")

# Backbones we recognise but cannot (yet) serve, with the reason a user sees.
_KNOWN_UNSUPPORTED = {
    "smolvlm": "SmolVLM2 has no colpali-engine retrieval class (ColSmol checkpoints are idefics3)",
    "qwen3_5": "Qwen3.5 hybrid models have linear-attention layers that expose no attention matrix",
}


@dataclass
class ModelInfo:
    """A checkpoint directory as sapindex sees it before loading any weights."""

    path: Path
    family: FamilySpec
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_size: int
    base_path: Path | None = None  # LoRA checkpoints: the local base model
    adapter: dict | None = None  # LoRA checkpoints: adapter_config.json
    fingerprint: dict = field(default_factory=dict)

    @property
    def is_lora(self) -> bool:
        return self.adapter is not None

    def parameter_count(self) -> int:
        """Parameters stored in the safetensors files (base + adapter), read from their headers."""
        dirs = [self.path] + ([self.base_path] if self.base_path else [])
        return sum(_safetensors_params(p) for d in dirs for p in sorted(Path(d).glob("*.safetensors")))

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "family": self.family.name,
            "model_type": self.family.model_type,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "hidden_size": self.hidden_size,
            "image_token_scheme": self.family.image_token_scheme,
            "attention": self.family.attention,
            "lora": self.is_lora,
            "base_model": str(self.base_path) if self.base_path else None,
            "parameters": self.parameter_count(),
            "fingerprint": self.fingerprint,
        }


def inspect_model_dir(model_dir: str | Path, base_model: str | Path | None = None) -> ModelInfo:
    """Identify the family of a local checkpoint, refusing anything that would need a hub."""
    path = Path(model_dir)
    if not path.exists():
        raise SapIndexError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise SapIndexError(f"{path}: not a directory (give the checkpoint directory, not a file)")
    adapter_file = path / "adapter_config.json"
    adapter = read_json(adapter_file, "Hugging Face config file") if adapter_file.exists() else None
    base_path = None
    config_dir = path
    if adapter is not None:
        base_path = _resolve_lora_base(path, adapter, base_model)
        config_dir = base_path if not (path / "config.json").exists() else path
    elif base_model is not None:
        raise SapIndexError(f"{path}: --base-model was given but {path} is not a LoRA adapter (no adapter_config.json)")
    config = read_json(config_dir / "config.json", "Hugging Face config file",
                       missing="missing (not a Hugging Face checkpoint directory?)")
    family = _family_of(config, config_dir / "config.json")
    text = _text_config(config)
    try:
        n_layers = int(text["num_hidden_layers"])
        n_heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SapIndexError(f"{config_dir / 'config.json'}: missing or invalid text config field {exc}") from None
    fingerprint = model_fingerprint(path)
    if base_path is not None:
        fingerprint = {"sha256": fingerprint["sha256"], "files": fingerprint["files"],
                       "base": model_fingerprint(base_path)}
    if not fingerprint["files"] and base_path is None:
        raise SapIndexError(f"{path}: no weight files (*.safetensors or *.bin) in the model directory")
    return ModelInfo(
        path=path,
        family=family,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(text.get("num_key_value_heads") or n_heads),
        hidden_size=hidden,
        base_path=base_path,
        adapter=adapter,
        fingerprint=fingerprint,
    )


def _resolve_lora_base(path: Path, adapter: dict, base_model: str | Path | None) -> Path:
    """The LoRA base must be a local directory: a hub id would be fetched or, offline, silently
    replaced by random weights, which is the most common air-gapped failure."""
    if adapter.get("peft_type", "LORA") != "LORA":
        raise SapIndexError(f"{path / 'adapter_config.json'}: peft_type {adapter.get('peft_type')!r} "
                            "is not supported (LoRA only)")
    named = adapter.get("base_model_name_or_path")
    candidate = Path(base_model) if base_model is not None else (Path(named) if named else None)
    if candidate is None:
        raise SapIndexError(f"{path / 'adapter_config.json'}: LoRA adapter names no base model; pass --base-model DIR")
    if not (candidate / "config.json").is_file():
        how = "--base-model" if base_model is not None else f"its base_model_name_or_path {named!r}"
        raise SapIndexError(
            f"{path}: LoRA adapter whose base model is not a local checkpoint "
            f"({how} -> {candidate} has no config.json); "
            "sapindex never downloads: pass --base-model /path/to/the/base/checkpoint"
        )
    return candidate


def _family_of(config: dict, config_file: Path) -> FamilySpec:
    model_type = str(config.get("model_type", "")).lower()
    if _is_jina_v4(config):
        if not (config_file.parent / "adapters" / "adapter_config.json").is_file():
            raise SapIndexError(
                f"{config_file.parent}: jina-embeddings-v4 checkpoint without adapters/adapter_config.json; "
                "its multi-vector output needs the retrieval LoRA adapter that ships in adapters/"
            )
        return FAMILIES["jina_v4"]
    for spec in FAMILIES.values():
        if spec.model_type == model_type:
            return spec
    if model_type in _KNOWN_UNSUPPORTED:
        raise SapIndexError(f"{config_file}: unsupported architecture: {_KNOWN_UNSUPPORTED[model_type]}")
    if "vision_config" not in config:
        raise SapIndexError(
            f"{config_file}: unsupported architecture {model_type or '?'!r}: "
            "a text-only model has no visual tokens to prune"
        )
    supported = ", ".join(f"{s.name} ({s.model_type})" for s in FAMILIES.values())
    raise SapIndexError(f"{config_file}: unsupported architecture {model_type!r}; supported: {supported}")


def _text_config(config: dict) -> dict:
    """The decoder's config: ``text_config``, ``vlm_config.text_config`` (transformers'
    ColPaliForRetrieval wraps a whole PaliGemma config) or the top level (flat legacy configs)."""
    vlm = config.get("vlm_config")
    return config.get("text_config") or (vlm.get("text_config") if isinstance(vlm, dict) else None) or config


def _is_jina_v4(config: dict) -> bool:
    return "JinaEmbeddingsV4Model" in (config.get("architectures") or ()) or any(k in config for k in JINA_V4_KEYS)


def _safetensors_params(path: Path) -> int:
    """Parameter count of a safetensors file from its JSON header, without reading tensors."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SapIndexError(f"{path}: not a readable safetensors file: {exc}") from None
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in meta["shape"]:
            count *= dim
        total += count
    return total
