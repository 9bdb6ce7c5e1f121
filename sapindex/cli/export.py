"""``sapindex export``: the model as a self-contained ONNX bundle with in-graph SAP centrality (torch side)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import base_model_option, json_option
from sapindex.cli._output import agreement, quantized, size
from sapindex.exporter.graphs import DTYPES
from sapindex.exporter.quantize import SCHEMES
from sapindex.runtime.bundle import manifest_bytes


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Local checkpoint directory.")
@base_model_option()
@click.option("--calibration", required=True, type=click.Path(path_type=Path), help="calibration.json of this model.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(DTYPES),
              help="fp32: exact; fp16: half the size, for the CUDA provider; int8: quantized weights, "
                   "faster on a CPU (an approximation, validated by its own rules, see docs/how-to/export.md).")
@click.option("--int8-scheme", type=click.Choice(SCHEMES), default=None,
              help="With --dtype int8: blockwise (default: one scale per block of weights and of activations, "
                   "keeps SAP's selection) or dynamic (one scale per activation tensor: faster, further from "
                   "fp32; see docs/how-to/export.md).")
@click.option("--opset", default=18, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--window", "window_text", default=None, metavar="START:END",
              help="SAP layers to export instead of the calibrated window (0-indexed, END exclusive).")
@click.option("--bundle-format", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="2: the text decoder as head (through the SAP window) and tail, needed by `index --mode fast`; "
                   "1: one text graph, for sapindex runtimes that read format 1 only.")
@click.option("--replaces", type=click.Path(path_type=Path), default=None,
              help="An earlier bundle of the same weights and window: once both give the same vectors and kept "
                   "sets on the validation pages, indexes built with it go on with this one.")
@json_option("Print the manifest.")
def export(model_dir, base_model, calibration, out_dir, dtype, int8_scheme, opset, overwrite, window_text,
           bundle_format, replaces, as_json):
    """Export the model to a self-contained ONNX bundle with in-graph SAP centrality.

    The bundle is validated against PyTorch (pages of several sizes, batch sizes 1 and 4)
    before it is written; a failed validation writes nothing and exits 2 (with --json, its
    figures are printed as {"error": ..., "validation": ...}).

    \b
    Example:
      sapindex export --model /models/colqwen2 --calibration calib/calibration.json --out colqwen2.sap
      sapindex export --model /models/colqwen2 --calibration calib/calibration.json --out w.sap --window 12:17
      sapindex export --model /models/colqwen2 --calibration calib/calibration.json --out q.sap --dtype int8
      sapindex export --model /models/colqwen2 --calibration c.json --out q.sap --dtype int8 --int8-scheme dynamic
      sapindex export --model /models/colqwen2 --calibration c.json --out new.sap --replaces old.sap
    """
    from sapindex.exporter.export import ExportConfig, export_bundle, parse_window
    from sapindex.exporter.validate import ValidationFailed

    cfg = ExportConfig(model=str(model_dir), calibration=str(calibration), out=str(out_dir),
                       base_model=str(base_model) if base_model else None, dtype=dtype, opset=opset,
                       overwrite=overwrite, window=parse_window(window_text) if window_text else None,
                       int8_scheme=int8_scheme, bundle_format=int(bundle_format),
                       replaces=str(replaces) if replaces else None)
    try:
        manifest = export_bundle(cfg, log=lambda msg: None if as_json else click.echo(msg, err=True))
    except ValidationFailed as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc), "validation": exc.report}, indent=2))
        raise
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    v = manifest["validation"]
    total = manifest_bytes(manifest)
    click.echo(f"bundle     {out_dir} ({size(total)}, fingerprint {manifest['fingerprint'][:16]})")
    click.echo(f"window     layers [{manifest['window'][0]}, {manifest['window'][1]}) of {manifest['n_layers']} "
               f"(from {manifest['window_source']})")
    click.echo(f"validated  {v['pages']} pages, batch sizes {v['batch_sizes']}: max |diff| embeddings "
               f"{v['max_abs_diff_embeddings']:.1e}, centrality {v['max_abs_diff_centrality']:.1e}, "
               f"{agreement(v)}, mismatches {len(v['kept_set_mismatches'])}")
    for old in manifest.get("replaces", [])[:1]:
        click.echo(f"replaces   {old['fingerprint'][:16]} (format {old['format_version']}; max |diff| "
                   f"{old['max_abs_diff_embeddings']:.1e}): its indexes go on with this bundle")
    if "quantization" in manifest:
        click.echo(f"quantized  {quantized(manifest['quantization'])}")
