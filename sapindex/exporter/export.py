"""``sapindex export``: write a self-contained, parity-validated ONNX bundle.

The bundle is built in a temporary sibling directory and renamed into place only after ONNX
Runtime has matched PyTorch on pages of several sizes and batch sizes (``validate``), so a failed
export never leaves something that looks like a bundle. What is exported for a family comes from
its backbone's ``GraphSpec`` (``sapindex.exporter.graphs``). Layout and manifest:
``sapindex.runtime.bundle``.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sapindex import __version__
from sapindex.calibration.calibrate import CALIBRATION_FORMAT, CALIBRATION_VERSION
from sapindex.errors import SapIndexError
from sapindex.exporter.graphs import DTYPES, GRAPHS, graph_axes, graph_spec
from sapindex.exporter.preprocessing_params import write_tokenizer_json
from sapindex.exporter.quantize import DEFAULT_SCHEME, SCHEMES, quantization_record, quantize_graph
from sapindex.exporter.validate import (
    ValidationFailed,
    reference_outputs,
    replacement_record,
    validate,
    validation_pages,
)
from sapindex.families import FAMILIES, FORMAT_GRAPHS
from sapindex.formats import read_artifact
from sapindex.runtime.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, Bundle, is_bundle_dir, seal_manifest


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
    int8_scheme: str | None = None  # --dtype int8 only: a quantize.SCHEMES name (None: DEFAULT_SCHEME)
    bundle_format: int = BUNDLE_VERSION  # 1: one text graph (for runtimes that read only format 1)
    replaces: str | None = None  # an earlier bundle of the same weights whose indexes this one goes on with


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
    """The calibration record written by ``sapindex calibrate`` (see docs/how-to/calibrate.md, "calibration.json")."""
    return read_artifact(path, CALIBRATION_FORMAT, CALIBRATION_VERSION, "sapindex calibration file",
                         version_key="version",
                         missing="calibration file does not exist (run `sapindex calibrate` first)")


def export_bundle(cfg: ExportConfig, log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Export, validate and write the bundle; returns its manifest.

    ``log`` gets one line as each long step starts (loading, each graph, each validation batch,
    sealing), so a user exporting a real-size model never watches a silent terminal.
    """
    if cfg.dtype not in DTYPES:
        raise SapIndexError(f"--dtype {cfg.dtype}: choose {', '.join(DTYPES)}")
    if cfg.int8_scheme is not None and cfg.dtype != "int8":
        raise SapIndexError(f"--int8-scheme {cfg.int8_scheme}: applies to --dtype int8 only "
                            f"(this export is {cfg.dtype})")
    if cfg.bundle_format not in FORMAT_GRAPHS:
        raise SapIndexError(f"--bundle-format {cfg.bundle_format}: choose {', '.join(map(str, FORMAT_GRAPHS))}")
    replaced = Bundle.open(cfg.replaces) if cfg.replaces else None
    scheme = cfg.int8_scheme or DEFAULT_SCHEME
    if scheme not in SCHEMES:
        raise SapIndexError(f"--int8-scheme {scheme}: choose {', '.join(SCHEMES)}")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not cfg.overwrite:
            raise SapIndexError(f"{out}: already exists and is not empty (use --overwrite to replace a bundle)")
        if not is_bundle_dir(out):
            raise SapIndexError(f"{out}: --overwrite only replaces a sapindex bundle, and this is not one")
    calibration = load_calibration(cfg.calibration)
    # a bad --window is refused before minutes of loading (the calibration knows the layer count,
    # and the model is checked against the calibration once loaded)
    n_layers = (calibration.get("model") or {}).get("n_layers")
    if not isinstance(n_layers, int):
        raise SapIndexError(f"{cfg.calibration}: the calibration records no layer count (model.n_layers)")
    window, source = _window(cfg, calibration, n_layers)
    from sapindex.models.adapters import load_adapter

    log(f"loading    {cfg.model}")
    adapter = load_adapter(cfg.model, base_model=cfg.base_model)
    _check_calibration_matches(calibration, adapter, cfg.calibration)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # PyTorch's fp32 reference first: then the export may convert the weights in place (fp16)
        # and free them once written, so that ONNX Runtime and PyTorch are never resident together
        log("validating PyTorch reference outputs first (kept as numpy)")
        reference = reference_outputs(adapter, window, log)
        log(f"exporting {adapter.info.family.name} with SAP window [{window[0]}, {window[1]}) (from {source})")
        manifest = _write_graphs(adapter, window, staging, cfg.opset, cfg.dtype, log, cfg.bundle_format)
        manifest["window_source"] = source
        adapter = None
        gc.collect()
        if cfg.dtype == "int8":  # from the fp32 graphs just written, with PyTorch's weights freed
            for graph in manifest["graphs"].values():
                quantize_graph(staging / graph["file"], scheme, log)
            manifest["quantization"] = quantization_record(scheme)
        log("validating ONNX Runtime against the PyTorch reference")
        try:
            manifest["validation"] = validate(reference, Bundle(staging, manifest), cfg.dtype, log)
        except ValidationFailed as exc:
            if cfg.dtype != "int8" or scheme != "dynamic":
                raise
            raise ValidationFailed(f"{exc}; the blockwise scheme stays closer to fp32: try --int8-scheme blockwise",
                                   exc.report) from None
        if replaced is not None:
            manifest["replaces"] = replacement_record(replaced, Bundle(staging, manifest), reference, log)
        manifest["calibration"] = _calibration_summary(calibration)
        (staging / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
        log("sealing    hashing every file into the manifest")
        manifest = seal_manifest(staging, manifest)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_graphs(adapter, window: tuple[int, int], staging: Path, opset: int, dtype: str,
                  log: Callable[[str], None], version: int = BUNDLE_VERSION) -> dict:
    import torch

    from sapindex.exporter.graphs.decoder import TailGraph

    info = adapter.info
    family = info.family.name
    backbone = FAMILIES[family].backbone
    if backbone not in GRAPHS:
        raise SapIndexError(f"{info.path}: family {family!r} has no ONNX export in this sapindex")
    spec = graph_spec(backbone)
    if dtype == "fp16":  # in place: the fp32 reference outputs are already computed, and a copy would cost 0.5x
        adapter.model.half()
    vision, head = (graph.eval() for graph in spec.build(adapter, window))
    head.part = "head" if version >= 2 else "whole"
    io = FAMILIES[family].graph_io(version, head.tail_layers)
    # two pages: torch.export specialises any axis whose example size is 1
    example = adapter.graph_inputs(adapter.page_inputs(validation_pages(2)))
    vision_args = tuple(example[name] for name in io["vision"]["inputs"])
    with torch.no_grad():
        feats = vision(*vision_args)  # [B, T, hidden]
    text = "head" if version >= 2 else "text"
    head_args = tuple(feats if name == "image_embeds" else example[name] for name in io[text]["inputs"])
    log("tracing    the vision graph and writing vision.onnx")
    export_graph(vision, vision_args, staging / "vision.onnx", "vision", opset, family, io)
    if version < 2:
        log(f"tracing    the text graph ({adapter.n_layers} layers, SAP centrality in-graph) and writing text.onnx")
        export_graph(head, head_args, staging / "text.onnx", "text", opset, family, io)
    else:
        with torch.no_grad():
            states = dict(zip(io["head"]["outputs"], head(*head_args), strict=True))
        tail_args = tuple(example[name] if name == "attention_mask" else states[name]
                          for name in io["tail"]["inputs"])
        log(f"tracing    the head graph (layers 0-{window[1] - 1}, SAP centrality in-graph) and writing head.onnx")
        export_graph(head, head_args, staging / "head.onnx", "head", opset, family, io)
        log(f"tracing    the tail graph ({head.tail_layers} layer(s) after the window, the projection) "
            "and writing tail.onnx")
        export_graph(TailGraph(head).eval(), tail_args, staging / "tail.onnx", "tail", opset, family, io)
    write_tokenizer_json(adapter.processor, staging / "tokenizer.json")
    return {
        "format": BUNDLE_FORMAT,
        "format_version": version,
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


def export_graph(module, args, path: Path, name: str, opset: int, family: str, graph_io: dict) -> None:
    """Export one graph of a ``family`` bundle (``name``: a key of its ``graph_io``) with the dynamic
    axes its backbone's :class:`~sapindex.exporter.graphs.GraphSpec` declares, then check it."""
    import onnx
    import torch

    io = graph_io[name]
    dims: dict[str, object] = {}  # one torch Dim per axis name, shared across inputs
    dynamic_shapes = {
        tensor: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
        for tensor, axes in graph_axes(graph_spec(FAMILIES[family].backbone), name).items()
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
    del program
    _release_rewriter_graphs()
    onnx.checker.check_model(str(path))
    graph_inputs = onnx.load(str(path), load_external_data=False).graph.input
    static = [i.name for i in graph_inputs if any(d.dim_value for d in i.type.tensor_type.shape.dim[:1])]
    if static:
        raise SapIndexError(f"ONNX export of the {name} graph specialised the batch size of {static}")


def _release_rewriter_graphs() -> None:
    """Drop the graph that onnxscript's rewrite rules keep after ``optimize=True``.

    Why: onnxscript (0.7) rules are module-level objects whose matcher remembers the last graph it
    matched (``SimplePatternMatcher._graph``), and that graph holds every weight of the exported
    module: without this, the text graph's weights stayed resident through validation, beside
    ONNX Runtime's copy (bench/export_memory.py). The next match sets the attributes again, so
    clearing them changes nothing else.
    """
    from onnxscript.rewriter import _matcher

    for obj in gc.get_objects():
        if isinstance(obj, _matcher.SimplePatternMatcher):
            obj._init_match(0)  # a fresh match result: the last one binds the graph's nodes
            obj._graph = obj._tracer = None
    gc.collect()


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
