"""``sapindex export``: write a self-contained, parity-validated ONNX bundle.

The bundle is built in a temporary sibling directory and renamed into place only after ONNX
Runtime has matched PyTorch on pages of several sizes and batch sizes, so a failed export never
leaves something that looks like a bundle. Layout and manifest: ``sapindex.runtime.bundle``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sapindex import __version__, sap
from sapindex.errors import SapIndexError
from sapindex.exporter.preprocessing_params import (
    idefics3_params,
    paligemma_params,
    qwen2_vl_params,
    write_tokenizer_json,
)
from sapindex.families import FAMILIES
from sapindex.runtime.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, Bundle, seal_manifest

EMBED_TOL_FP32 = 1e-4
# fp16 bundles (for the CUDA Execution Provider): half-precision weights move embeddings by ~3e-4
# on the tiny models; centrality stays fp32 inside the graph, but near-ties may flip, so an fp16
# export must keep at least this share of the fp32 kept set at keep ratio 0.1 on every page.
EMBED_TOL_FP16 = 1e-2
KEPT_OVERLAP_FP16 = 0.95
VALIDATION_RATIOS = (0.05, 0.1, 0.2)
# which input axes vary at run time, per family and graph: batch size always, sequence length,
# and the page size where the family has dynamic resolution (Qwen2-VL); query text graphs get
# a one-token dummy image_embeds, so the token axis is dynamic everywhere
_TEXT_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
              "image_embeds": {0: "batch", 1: "tokens"}}
_QWEN2_VL_AXES = {
    "vision": {"pixel_values": {0: "batch", 1: "patches"}, "image_grid_thw": {0: "batch"}},
    "text": {**_TEXT_AXES, "image_grid_thw": {0: "batch"}},
}
_PALIGEMMA_AXES = {  # fixed image size: only the batch axis of the pixels varies
    "vision": {"pixel_values": {0: "batch"}},
    "text": {**_TEXT_AXES, "prefix_mask": {0: "batch", 1: "seq"}},
}
_IDEFICS3_AXES = {  # fixed tile size: the batch and the tile count (padded to the batch's largest page) vary
    "vision": {"pixel_values": {0: "batch", 1: "tiles"}},
    "text": _TEXT_AXES,
}


def _qwen2_vl_graphs(adapter, window):
    from sapindex.exporter.graphs.qwen2_vl import TextGraph, VisionGraph

    windowed = adapter.info.family.model_type == "qwen2_5_vl"
    return VisionGraph(adapter.model.visual, windowed=windowed), TextGraph(adapter.model, window)


def _paligemma_graphs(adapter, window):
    from sapindex.exporter.graphs.paligemma import TextGraph, VisionGraph

    backbone = adapter.backbone()
    return VisionGraph(backbone), TextGraph(backbone, adapter.projection(), window)


def _idefics3_graphs(adapter, window):
    from sapindex.exporter.graphs.idefics3 import TextGraph, VisionGraph

    return VisionGraph(adapter.model.model), TextGraph(adapter.model, window)


@dataclass(frozen=True)
class GraphFamily:
    """How one family's model becomes a bundle; graph input/output names: ``GRAPH_IO_BY_FAMILY``."""

    build: Callable  # (adapter, window) -> (vision graph, text graph) modules
    params: Callable[[object], dict]  # live processor -> the runtime preprocessor's params
    dynamic_axes: dict  # graph -> input -> {axis: name}


_QWEN2_VL = GraphFamily(_qwen2_vl_graphs, qwen2_vl_params, _QWEN2_VL_AXES)
_PALIGEMMA = GraphFamily(_paligemma_graphs, paligemma_params, _PALIGEMMA_AXES)
GRAPH_FAMILIES = {"colqwen2": _QWEN2_VL, "colqwen2_5": _QWEN2_VL, "jina_v4": _QWEN2_VL,
                  "colpali": _PALIGEMMA, "colpali_hf": _PALIGEMMA,
                  "colidefics3": GraphFamily(_idefics3_graphs, idefics3_params, _IDEFICS3_AXES)}
DYNAMIC_AXES = {family: spec.dynamic_axes for family, spec in GRAPH_FAMILIES.items()}
# (height, width) of validation pages: tall, wide, square-ish, a strip; three distinct visual grids at
# least (Idefics3 tiles 420x300, 360x360 and 150x210 alike as 3x3; 230x520 as 2x3, 600x150 as 3x1)
VALIDATION_SIZES = ((420, 300), (230, 520), (360, 360), (150, 210), (600, 150))


@dataclass
class ExportConfig:
    model: str
    calibration: str
    out: str
    base_model: str | None = None
    dtype: str = "fp32"
    opset: int = 18
    overwrite: bool = False
    window: tuple[int, int] | None = None  # (start, end) overriding the calibrated window


def parse_window(text: str) -> tuple[int, int]:
    """``START:END`` (0-indexed decoder layers, end exclusive) -> (start, end)."""
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise SapIndexError(f"--window {text}: write it as START:END, e.g. 1:3 (layers 1 and 2)") from None
    return start, end


def _window(cfg: ExportConfig, calibration: dict, n_layers: int) -> tuple[tuple[int, int], str]:
    """The window to export and where it came from ("calibration" or "--window").

    The calibrated window is the pick of the calibration's window rule; an override lets a user
    export another window (the other rule's pick, one their eval favours) without re-calibrating.
    """
    if cfg.window is None:
        return (int(calibration["window"]["start"]), int(calibration["window"]["end"])), "calibration"
    start, end = cfg.window
    if not 0 <= start < end <= n_layers:
        raise SapIndexError(f"--window {start}:{end}: need 0 <= START < END <= {n_layers} (the model's layers)")
    return (start, end), "--window"


def load_calibration(path: str | Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SapIndexError(f"{path}: calibration file does not exist (run `sapindex calibrate` first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SapIndexError(f"{path}: not a readable calibration.json: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != "sapindex-calibration":
        raise SapIndexError(f"{path}: not a sapindex calibration file")
    return record


def export_bundle(cfg: ExportConfig, log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Export, validate and write the bundle; returns its manifest."""
    if cfg.dtype not in ("fp32", "fp16"):
        raise SapIndexError(f"--dtype {cfg.dtype}: choose fp32 or fp16")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not cfg.overwrite:
            raise SapIndexError(f"{out}: already exists and is not empty (use --overwrite to replace a bundle)")
        if not _is_bundle(out):
            raise SapIndexError(f"{out}: --overwrite only replaces a sapindex bundle, and this is not one")
    calibration = load_calibration(cfg.calibration)
    from sapindex.models.base import load_adapter

    adapter = load_adapter(cfg.model, base_model=cfg.base_model)
    _check_calibration_matches(calibration, adapter, cfg.calibration)
    window, source = _window(cfg, calibration, adapter.n_layers)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        log(f"exporting {adapter.info.family.name} with SAP window [{window[0]}, {window[1]}) (from {source})")
        manifest = _write_graphs(adapter, window, staging, cfg.opset, cfg.dtype)
        manifest["window_source"] = source
        log("validating ONNX Runtime against PyTorch")
        manifest["validation"] = validate(adapter, window, Bundle(staging, manifest), cfg.dtype)
        manifest["calibration"] = _calibration_summary(calibration)
        (staging / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
        manifest = seal_manifest(staging, manifest)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_graphs(adapter, window: tuple[int, int], staging: Path, opset: int, dtype: str) -> dict:
    import copy

    import torch

    info = adapter.info
    family = info.family.name
    spec = GRAPH_FAMILIES.get(family)
    if spec is None:
        raise SapIndexError(f"{info.path}: family {family!r} has no ONNX export in this sapindex")
    io = FAMILIES[family].graph_io
    exported = adapter
    if dtype == "fp16":  # a half-precision copy is exported; the fp32 adapter stays the validation reference
        exported = copy.copy(adapter)
        exported.model = copy.deepcopy(adapter.model).half()
    vision, text = (graph.eval() for graph in spec.build(exported, window))
    # two pages: torch.export specialises any axis whose example size is 1
    example = adapter.graph_inputs(adapter.page_inputs(_validation_pages(adapter, VALIDATION_SIZES[:2])))
    vision_args = tuple(example[name] for name in io["vision"]["inputs"])
    with torch.no_grad():
        feats = vision(*vision_args)  # [B, T, hidden]
    text_args = tuple(feats if name == "image_embeds" else example[name] for name in io["text"]["inputs"])
    export_graph(vision, vision_args, staging / "vision.onnx", "vision", opset, family)
    export_graph(text, text_args, staging / "text.onnx", "text", opset, family)
    write_tokenizer_json(adapter.processor, staging / "tokenizer.json")
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "sapindex_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "family": family,
        "model_type": info.family.model_type,
        "attention": info.family.attention,
        "n_layers": adapter.n_layers,
        "n_heads": info.n_heads,
        "hidden_size": int(feats.shape[-1]),  # the text decoder's width, which image features have
        "window": list(window),
        "dim": int(adapter.projection().out_features),
        "image_token_id": adapter.image_token_id,
        "image_token_scheme": info.family.image_token_scheme,
        "preprocessing": spec.params(adapter.processor),
        "dtype": dtype,
        "opset": opset,
        "graphs": {name: {"file": f"{name}.onnx", **graph_io} for name, graph_io in io.items()},
        "source_model": {"path": str(info.path), "base_model": str(info.base_path) if info.base_path else None,
                         "fingerprint": info.fingerprint["sha256"]},
    }


def export_graph(module, args, path: Path, name: str, opset: int, family: str) -> None:
    """Export one graph of a ``family`` bundle (``name`` in its GRAPH_IO_BY_FAMILY entry) with its
    DYNAMIC_AXES, then check it."""
    import onnx
    import torch

    io = FAMILIES[family].graph_io[name]
    dims: dict[str, object] = {}  # one torch Dim per axis name, shared across inputs
    dynamic_shapes = {
        tensor: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
        for tensor, axes in DYNAMIC_AXES[family][name].items()
    }
    os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")  # a check with no ONNX translation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, verbose=False, input_names=io["inputs"],
                                        output_names=io["outputs"], dynamic_shapes=dynamic_shapes,
                                        opset_version=opset, optimize=True)
    except Exception as exc:  # torch.export raises many types; the user needs the graph name and the reason
        raise SapIndexError(f"ONNX export of the {name} graph failed: {type(exc).__name__}: {exc}") from None
    program.save(str(path), external_data=True)
    onnx.checker.check_model(str(path))
    graph_inputs = onnx.load(str(path), load_external_data=False).graph.input
    static = [i.name for i in graph_inputs if any(d.dim_value for d in i.type.tensor_type.shape.dim[:1])]
    if static:
        raise SapIndexError(f"ONNX export of the {name} graph specialised the batch size of {static}")


def validate(adapter, window: tuple[int, int], bundle: Bundle, dtype: str = "fp32") -> dict:
    """Run ORT and PyTorch (fp32) on the same inputs; raise with the numbers if they disagree.

    fp32: embeddings within 1e-4 and identical kept sets at keep ratio 0.1. fp16: embeddings within
    1e-2 and at least 95 % of the fp32 kept set at 0.1 on every page (overlaps are recorded).
    The graphs get the processor's tensors (``adapter.graph_inputs``), so any difference is the
    graphs'; the bundle's own torch-free preprocessing must produce the same ids and masks from
    the same pages and queries (pixels differ by the resampler, recorded).
    """
    import torch

    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(bundle, device="cpu")  # the runtime's preprocessing and sessions, from the staged bundle
    sessions, runtime = encoder.sessions, encoder.preprocessor
    pages = _validation_pages(adapter, VALIDATION_SIZES)
    batches = [pages[:1], pages[1:]]  # batch sizes 1 and 4, mixed sizes in one batch
    worst_emb = worst_cent = worst_eos = worst_pixels = 0.0
    mismatched = []
    overlap_at_01 = []
    n_pages = 0
    for batch in batches:
        inputs = adapter.page_inputs(batch)
        reference = adapter.encode_pages(batch, layers=tuple(range(*window)))
        feed = _numpy(adapter.graph_inputs(inputs))
        worst_pixels = max(worst_pixels, _compare_inputs(feed, runtime.pages(batch), "pages"))
        emb, cent, eos = sessions.run_pages(feed)  # [B, S, dim], [B, S], [B, S]
        visual = adapter.visual_mask(inputs).cpu().numpy()
        for b, ref in enumerate(reference):
            n_pages += 1
            ort_emb, ort_cent = emb[b][visual[b]], cent[b][visual[b]]
            ref_cent = ref.centrality.mean(axis=0)
            worst_emb = max(worst_emb, float(np.abs(ort_emb - ref.embeddings).max()))
            worst_cent = max(worst_cent, float(np.abs(ort_cent - ref_cent).max()))
            worst_eos = max(worst_eos, float(np.abs(eos[b][visual[b]] - ref.eos).max()))
            for ratio in VALIDATION_RATIOS:
                ours, theirs = sap.top_k(ort_cent, ratio), sap.top_k(ref_cent, ratio)
                if ratio == 0.1:
                    overlap_at_01.append(len(np.intersect1d(ours, theirs)) / len(theirs))
                if not np.array_equal(ours, theirs):
                    mismatched.append({"page": n_pages, "grid": list(ref.grid), "keep_ratio": ratio})
    tolerance = EMBED_TOL_FP16 if dtype == "fp16" else EMBED_TOL_FP32
    queries = ["what was the total revenue", "chart"]
    q_inputs = adapter.query_inputs(queries)
    q_ref = adapter.encode_queries(queries)
    q_feed = _numpy(adapter.graph_inputs(q_inputs))
    _compare_inputs(q_feed, runtime.queries(queries), "queries")
    q_emb = sessions.run_queries({**q_feed, **runtime.query_extras(q_feed, sessions.hidden)})
    q_mask = q_feed["attention_mask"].astype(bool)
    worst_query = max(float(np.abs(q_emb[i][q_mask[i]] - q_ref[i]).max()) for i in range(len(queries)))
    report = {
        "pages": n_pages,
        "visual_grids": sorted({tuple(g) for g in adapter.page_grids(adapter.page_inputs(pages))}),
        "batch_sizes": [len(b) for b in batches],
        "max_abs_diff_embeddings": worst_emb,
        "max_abs_diff_centrality": worst_cent,
        "max_abs_diff_query_embeddings": worst_query,
        "max_abs_diff_eos_attention": worst_eos,
        "kept_set_mismatches": mismatched,
        "min_kept_overlap_at_0.1": min(overlap_at_01),
        "runtime_preprocessing_max_abs_diff_pixels": worst_pixels,
        "dtype": dtype,
        "tolerance": tolerance,
        "torch_version": torch.__version__,
    }
    kept_ok = min(overlap_at_01) >= (KEPT_OVERLAP_FP16 if dtype == "fp16" else 1.0)
    if worst_emb > tolerance or worst_query > tolerance or not kept_ok:
        raise SapIndexError(
            f"export validation failed ({dtype}): ONNX Runtime vs PyTorch max |diff| embeddings "
            f"{worst_emb:.2e}, queries {worst_query:.2e} (tolerance {tolerance:.0e}), centrality {worst_cent:.2e}; "
            f"smallest kept-set overlap at 0.1: {min(overlap_at_01):.3f}; mismatches: {mismatched or 'none'}"
        )
    report["visual_grids"] = [list(g) for g in report["visual_grids"]]
    return report


def _numpy(inputs: dict) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in inputs.items()}


def _compare_inputs(feed: dict[str, np.ndarray], runtime: dict[str, np.ndarray], what: str) -> float:
    """Raise unless the runtime preprocessor's integer inputs (ids, masks, grids) equal the
    processor's; return the largest pixel difference (resamplers differ by a level or two)."""
    for key, value in runtime.items():
        if key not in feed:
            continue
        same_shape = value.shape == feed[key].shape
        if not same_shape or (np.issubdtype(value.dtype, np.integer) and not np.array_equal(value, feed[key])):
            raise SapIndexError(
                f"export validation failed: the bundle's torch-free preprocessing gives other {key} than the "
                f"model's processor for the validation {what} (shapes {value.shape} vs {feed[key].shape}); "
                "this processor configuration is not reproduced by the runtime"
            )
    if "pixel_values" not in runtime:
        return 0.0
    return float(np.abs(runtime["pixel_values"] - feed["pixel_values"]).max())


def _validation_pages(adapter, sizes):
    """Deterministic text-like pages (stripes and blocks) of the given sizes."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    pages = []
    for h, w in sizes:
        img = np.full((h, w, 3), 255, dtype=np.uint8)
        for _ in range(12):
            y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 40))
            img[y:y + int(rng.integers(4, 10)), x:x + int(rng.integers(20, 120))] = rng.integers(0, 160, size=3)
        pages.append(Image.fromarray(img))
    return pages


def _check_calibration_matches(calibration: dict, adapter, path) -> None:
    calibrated = calibration.get("model", {}).get("fingerprint", {}).get("sha256")
    actual = adapter.info.fingerprint["sha256"]
    if calibrated != actual:
        raise SapIndexError(
            f"{path}: calibration was made on another model (fingerprint {str(calibrated)[:12]}, "
            f"this model {actual[:12]}); calibrate this model first"
        )
    n_layers = calibration["model"].get("n_layers")
    if n_layers != adapter.n_layers:
        raise SapIndexError(f"{path}: calibration has {n_layers} layers, the model {adapter.n_layers}")


def _calibration_summary(calibration: dict) -> dict:
    return {
        "window": calibration["window"],
        "sr_mean": calibration["sr"]["mean"],
        "random_floor": calibration["random_floor"]["mean"],
        "keep_ratio": calibration["settings"]["keep_ratio"],
        "pairs_used": calibration["pairs"]["used"],
        "created": calibration.get("created"),
    }
