"""The torch modules exported as ONNX graphs: a shared decoder and one module per backbone.

Each backbone module (``qwen2_vl``, ``paligemma``, ``idefics3``) declares its ``SPEC``, a
:class:`GraphSpec`: how a loaded adapter becomes the vision and text graphs, which preprocessing
parameters the torch-free runtime needs, which input axes vary at run time and how close ONNX
Runtime must come to PyTorch before a bundle is written. ``export`` reads it through
:data:`GRAPHS`, keyed by ``FamilySpec.backbone``, so the exporter names no family.

This package's own module imports no torch: :func:`graph_spec` imports a backbone's module
(and torch with it) only when that backbone is exported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

# backbone -> the module that declares its SPEC
GRAPHS: dict[str, str] = {
    "qwen2_vl": "sapindex.exporter.graphs.qwen2_vl",
    "paligemma": "sapindex.exporter.graphs.paligemma",
    "idefics3": "sapindex.exporter.graphs.idefics3",
}

# Text-graph inputs every backbone has. Batch size and sequence length vary; query text graphs
# get a one-token dummy image_embeds, so the token axis is dynamic everywhere.
TEXT_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
             "image_embeds": {0: "batch", 1: "tokens"}}
# A format-2 tail's inputs (the head's outputs), the same for every backbone.
TAIL_AXES = {"states": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
             "attention_bias": {0: "batch", 2: "seq", 3: "seq"}, "rope_cos": {0: "batch", 2: "seq"},
             "rope_sin": {0: "batch", 2: "seq"}}


@dataclass(frozen=True)
class Tolerance:
    """How close ONNX Runtime must come to PyTorch (fp32) on the validation pages and queries.

    Kept sets are compared at keep ratio 0.1 by Jaccard index (|ours & theirs| / |ours | theirs|),
    on every page (``kept_jaccard``) and on average (``kept_jaccard_mean``).
    """

    embeddings: float | None  # max |ORT - PyTorch| of page and query embeddings; None: not bounded
    kept_jaccard: float  # smallest kept-set Jaccard on any page
    kept_jaccard_mean: float  # smallest mean kept-set Jaccard over the pages
    cosine: float = -1.0  # smallest cosine between ORT's and PyTorch's embedding of the same token or query token


# fp32: identical kept sets. fp16 bundles (for the CUDA Execution Provider): half-precision
# weights move embeddings well past fp32 rounding; centrality stays fp32 inside the graph, but
# near-ties may flip. int8 bundles (CPU speed, ``sapindex.exporter.quantize``): quantized weights
# move every embedding a little, so they are judged by direction (cosine) and by how much of
# PyTorch's kept set survives (docs/how-to/export.md). Every backbone uses
# these today; one that needs others declares its own in its SPEC.
TOLERANCES = {"fp32": Tolerance(embeddings=1e-4, kept_jaccard=1.0, kept_jaccard_mean=1.0),
              "fp16": Tolerance(embeddings=1e-2, kept_jaccard=0.9, kept_jaccard_mean=0.95),
              "int8": Tolerance(embeddings=None, kept_jaccard=0.9, kept_jaccard_mean=0.95, cosine=0.98)}
# The dtypes a bundle can be exported in (``sapindex export --dtype``): those with a tolerance.
DTYPES = tuple(TOLERANCES)


@dataclass(frozen=True)
class GraphSpec:
    """How one backbone's model becomes a bundle; graph input/output names: ``FamilySpec.graph_io``."""

    build: Callable  # (adapter, window) -> (vision graph, text graph) modules
    params: Callable[[object], dict]  # live processor -> the runtime preprocessor's manifest params
    dynamic_axes: dict  # graph -> input -> {axis: name}
    tolerances: dict[str, Tolerance]  # bundle dtype ("fp32", "fp16", "int8") -> validation tolerance


def graph_axes(spec: GraphSpec, name: str) -> dict:
    """The dynamic axes of graph ``name`` of a bundle: a head takes the text graph's inputs."""
    return {"head": spec.dynamic_axes["text"], "tail": TAIL_AXES}.get(name) or spec.dynamic_axes[name]


def graph_spec(backbone: str) -> GraphSpec:
    """The :class:`GraphSpec` of a backbone (a key of :data:`GRAPHS`), importing its module."""
    return importlib.import_module(GRAPHS[backbone]).SPEC
