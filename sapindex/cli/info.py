"""``sapindex info``: what a checkpoint is (read from its config, no weights loaded), what ONNX Runtime
offers on this machine, or which families sapindex supports."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import base_model_option, json_option
from sapindex.cli._output import kv_table

MODEL_KEYS = ("path", "family", "model_type", "n_layers", "n_heads", "n_kv_heads", "hidden_size", "parameters",
              "lora", "base_model", "image_token_scheme", "attention")


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path), required=False)
@base_model_option()
@click.option("--providers", is_flag=True, help="List the ONNX Runtime execution providers of this machine.")
@click.option("--families", is_flag=True, help="List the supported families, their checkpoints and bundle sizes.")
@json_option()
def info(model_dir, base_model, providers, families, as_json):
    """Describe a checkpoint (family, layers, heads, image-token scheme, parameters; no weights
    loaded), or with --providers what ONNX Runtime offers on this machine, or with --families
    every supported family.

    \b
    Example:
      sapindex info /models/colqwen2-v1.0-merged
      sapindex info --providers
      sapindex info --families
    """
    if families:
        _print_families(as_json)
        return
    if providers:
        _print_providers(as_json)
        return
    if model_dir is None:
        raise click.UsageError("give MODEL_DIR, --families or --providers")
    from sapindex.families import inspect_model_dir

    summary = inspect_model_dir(model_dir, base_model).summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    kv_table([*((key, summary[key]) for key in MODEL_KEYS), ("fingerprint", summary["fingerprint"]["sha256"][:16])],
             width=19)


def _print_providers(as_json: bool) -> None:
    import onnxruntime as ort

    from sapindex.runtime.session import available_providers

    found = available_providers()
    data = {"onnxruntime": ort.__version__, "providers": found, "cuda": "CUDAExecutionProvider" in found}
    click.echo(json.dumps(data, indent=2) if as_json else
               f"onnxruntime {data['onnxruntime']}\nproviders   {', '.join(found)}\ncuda        {data['cuda']}")


def _print_families(as_json: bool) -> None:
    from sapindex.families import FAMILIES

    rows = [{"family": f.name, "model_type": f.model_type, "class": f.colpali_class, "attention": f.attention,
             "checkpoints": list(f.checkpoints), "billion_parameters": list(f.billions),
             "bundle_gb_fp32": list(f.bundle_gb("fp32")), "bundle_gb_fp16": list(f.bundle_gb("fp16")),
             "image_token_scheme": f.image_token_scheme} for f in FAMILIES.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['family']}  ({row['class']}, model_type {row['model_type']}, {row['attention']} attention)")
        for name, b, fp32, fp16 in zip(row["checkpoints"], row["billion_parameters"], row["bundle_gb_fp32"],
                                       row["bundle_gb_fp16"], strict=True):
            click.echo(f"    {name:<30} {b:.2f} B parameters, bundle ~{fp32} GB fp32 / ~{fp16} GB fp16")
        click.echo(f"    image tokens: {row['image_token_scheme']}")
