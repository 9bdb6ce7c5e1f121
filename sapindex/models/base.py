"""The torch side's family-independent machinery: one batched forward pass that yields final
embeddings and each decoder layer's visual in-degree centrality.

Why hooks: colpali-engine's ``forward`` is the reference for the embeddings, so we call it
unchanged and listen to the decoder layers' attention modules. In eager attention every
``self_attn`` returns ``(output, probabilities [B, H, S, S])``; the hook reduces the
probabilities to in-degree ``[B, S]`` at once, so a pass over L layers holds one layer's
attention matrix at a time instead of all L (the reference code keeps them all, at batch 1).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sapindex.errors import SapIndexError
from sapindex.families import ModelInfo
from sapindex.models._compat import prepare_torch_side
from sapindex.models.loading import load_colpali

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class ReferenceEncoding:
    """One page through the model: final visual-token vectors and per-layer centrality."""

    embeddings: np.ndarray  # [V, dim] float32, L2-normalised final-layer projections of the visual tokens
    centrality: np.ndarray  # [n_layers_captured, V] float64 visual in-degree per captured layer
    layers: tuple[int, ...]  # decoder layer index of each centrality row
    grid: tuple[int, int]  # (rows, cols) of visual tokens on the page
    eos: np.ndarray  # [V] final layer's attention from the last valid token, head mean (a baseline)


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise SapIndexError("--device cuda was asked for but this torch build sees no CUDA device")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SapIndexError(f"unknown device {device!r} (use cpu or cuda)")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise SapIndexError(f"unknown dtype {dtype!r} (use one of {', '.join(sorted(DTYPES))})") from None


def in_degree_batch(attn: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Batched visual in-degree of one layer: ``[B, H, S, S]`` probabilities -> ``[B, S]`` (head mean).

    Column sums over visual rows only; non-visual columns come out too and are dropped by the caller.
    """
    rows = visual.to(torch.float32)  # [B, S]
    col = torch.einsum("bhij,bi->bhj", attn.to(torch.float32), rows)  # [B, H, S]
    return col.mean(dim=1)  # [B, S]


class FamilyAdapter(abc.ABC):
    """A loaded colpali-engine model plus what SAP needs to know about its family.

    Subclasses say where the decoder layers are, how pages become tensors and where the visual
    tokens sit (the abstract methods); loading, queries and the forward pass are shared, with
    hooks for what a backbone does differently.
    """

    def __init__(self, info: ModelInfo, model, processor, device: torch.device, dtype: torch.dtype):
        self.info = info
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, info: ModelInfo, *, device: torch.device, dtype: torch.dtype) -> FamilyAdapter:
        """Load the checkpoint offline with eager attention: the family's model and processor
        classes (``FamilySpec.colpali_class`` / ``processor_class``) from :meth:`model_library`,
        LoRA adapters merged (``loading.load_colpali``), then the backbone's own checks."""
        prepare_torch_side()
        library = cls.model_library(info)
        model = load_colpali(info, getattr(library, info.family.colpali_class), device, dtype, fix=cls.fix_loaded)
        processor_cls = getattr(library, info.family.processor_class)
        processor = processor_cls.from_pretrained(str(cls.processor_dir(info)), local_files_only=True)
        adapter = cls(info, model, processor, device, dtype)
        adapter.check_eager()
        adapter.check_processor()
        return adapter

    @staticmethod
    def model_library(info: ModelInfo):
        """The module that holds the family's model and processor classes: colpali-engine's."""
        import colpali_engine.models as cm

        return cm

    @staticmethod  # noqa: B027 (an optional hook: most families have no quirk)
    def fix_loaded(model) -> None:
        """Repair a class quirk right after ``from_pretrained`` (``load_colpali``'s ``fix``); none by default."""

    def check_processor(self) -> None:  # noqa: B027 (an optional hook: most families need no check)
        """Refuse a processor/model mismatch at load time, not mid-index; nothing to check by default."""

    @staticmethod
    def processor_dir(info: ModelInfo) -> Path:
        """LoRA checkpoints usually ship their own processor files; fall back to the base's."""
        own = (info.path / "tokenizer.json").exists() or (info.path / "tokenizer_config.json").exists()
        return info.base_path if info.is_lora and not own else info.path

    # -- family specifics ------------------------------------------------------------------
    @abc.abstractmethod
    def decoder_layers(self) -> list[torch.nn.Module]:
        """The text decoder's layers, in order (their ``self_attn`` is hooked)."""

    @abc.abstractmethod
    def page_inputs(self, images) -> dict:
        """The processor's tensors for a batch of page images, on the adapter's device."""

    def query_inputs(self, texts: list[str]) -> dict:
        """The processor's tensors for a batch of queries (prefix and augmentation tokens included)."""
        return self._to_device(self.processor.process_queries(list(texts)))

    @abc.abstractmethod
    def visual_mask(self, inputs: dict) -> torch.Tensor:
        """``[B, S]`` bool: which sequence positions are visual tokens."""

    @abc.abstractmethod
    def page_grids(self, inputs: dict) -> list[tuple[int, int]]:
        """``(rows, cols)`` of each page's visual tokens (``ReferenceEncoding.grid``)."""

    def forward_embeddings(self, inputs: dict) -> torch.Tensor:
        """``[B, S, dim]`` final embeddings; families override it to skip work the reference forward wastes."""
        return self.model(**inputs)

    def projection(self) -> torch.nn.Linear:
        """The multi-vector head (hidden -> dim); the bundle's ``dim`` is its output width."""
        return self.model.custom_text_proj

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def graph_inputs(self, inputs: dict) -> dict:
        """The processor's tensors as the exported graphs take them (the runtime preprocessor's
        keys): families whose model derives a graph input from processor outputs override it."""
        return dict(inputs)

    def _to_device(self, batch) -> dict:
        """Processor tensors to the adapter's device, pixels to its dtype."""
        out = {}
        for key, value in batch.items():
            value = value.to(self.device)
            if key == "pixel_values":
                value = value.to(self.dtype)
            out[key] = value
        return out

    # -- shared ----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.decoder_layers())

    def check_eager(self) -> None:
        impl = getattr(self.decoder_layers()[0].self_attn.config, "_attn_implementation", None)
        if impl != "eager":
            raise SapIndexError(
                f"{self.info.path}: attention implementation {impl!r} cannot return attention probabilities; "
                "SAP needs eager attention"
            )

    @torch.no_grad()
    def encode_pages(self, images, layers: tuple[int, ...] | None = None) -> list[ReferenceEncoding]:
        """Final embeddings and per-layer centrality for a batch of page images, in one forward pass."""
        layers = tuple(range(self.n_layers)) if layers is None else tuple(layers)
        inputs = self.page_inputs(images)
        visual = self.visual_mask(inputs)  # [B, S]
        captured: dict[int, torch.Tensor] = {}
        final = self.n_layers - 1
        last = (inputs["attention_mask"].long() * torch.arange(visual.shape[1], device=visual.device)).argmax(dim=1)
        handles = []
        for idx in sorted(set(layers) | {final}):
            attn_module = self.decoder_layers()[idx].self_attn

            def hook(_module, _args, output, idx=idx):
                probs = output[1]
                if probs is None:
                    raise SapIndexError(f"{self.info.path}: decoder layer {idx} returned no attention probabilities")
                if idx in layers:
                    captured[idx] = in_degree_batch(probs, visual)  # [B, S]
                if idx == final:  # attention row of the last valid token, head mean  [B, S]
                    captured["eos"] = probs[torch.arange(probs.shape[0]), :, last].float().mean(dim=1)

            handles.append(attn_module.register_forward_hook(hook))
        try:
            emb = self.forward_embeddings(inputs)  # [B, S, dim]
        finally:
            for handle in handles:
                handle.remove()
        grids = self.page_grids(inputs)
        pages = []
        for b in range(emb.shape[0]):
            vis = visual[b]
            cent = torch.stack([captured[idx][b][vis] for idx in layers]) if layers else torch.empty(0, int(vis.sum()))
            pages.append(
                ReferenceEncoding(
                    embeddings=emb[b][vis].float().cpu().numpy(),
                    centrality=cent.double().cpu().numpy(),
                    layers=layers,
                    grid=grids[b],
                    eos=captured["eos"][b][vis].double().cpu().numpy(),
                )
            )
        return pages

    @torch.no_grad()
    def encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        """Query multi-vectors ``[M_i, dim]`` with the model's prefix and augmentation tokens, padding dropped."""
        inputs = self.query_inputs(texts)
        emb = self.forward_embeddings(inputs)  # [B, M, dim]
        mask = inputs["attention_mask"].bool()
        return [emb[b][mask[b]].float().cpu().numpy() for b in range(emb.shape[0])]

