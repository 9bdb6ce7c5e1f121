"""``sapindex calibrate``: the per-layer Score Retention analysis that picks a model's SAP window (torch side)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import base_model_option, device_option, json_option, keep_ratio_option
from sapindex.cli._output import ProgressBar
from sapindex.sap import WINDOW_RULES


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Local checkpoint directory (merged, or a LoRA adapter with --base-model).")
@base_model_option("Local base checkpoint of a LoRA adapter (never downloaded).")
@click.option("--pairs", required=True, type=click.Path(path_type=Path),
              help="(query, page) pairs: JSONL, a directory of JSONL/parquet, or a parquet file.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--limit", default=500, show_default=True, help="Use at most this many pairs (seeded sample).")
@click.option("--batch-size", type=int, default=None,
              help="Pages per forward pass.  [default: 1 on cpu (the bar moves per pair), 4 on cuda]")
@device_option()
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16 or float16.")
@click.option("--seed", default=0, show_default=True, help="Seed for the pair sample and the random floor.")
@keep_ratio_option("Calibration keep ratio gamma_cal.")
@click.option("--rho", default=0.2, show_default=True, help="Window width as a fraction of the layer count.")
@click.option("--window-rule", default="algorithm1", show_default=True, type=click.Choice(list(WINDOW_RULES)),
              help="algorithm1: the paper's rule; sr-peak: the same-width window of highest mean SR.")
@json_option("Print calibration.json instead of the summary.")
def calibrate(model_dir, base_model, pairs, out_dir, limit, batch_size, device, dtype, seed, keep_ratio, rho,
              window_rule, as_json):
    """Run the per-layer Score Retention analysis and pick the SAP layer window.

    Writes OUT/calibration.json and OUT/sr_curve.png.

    \b
    Example:
      sapindex calibrate --model /models/colqwen2-v1.0-merged --pairs calib.jsonl --out calib/
    """
    from sapindex.calibration.calibrate import CalibrationConfig, summary_text, write_calibration
    from sapindex.calibration.calibrate import calibrate as run_calibration

    cfg = CalibrationConfig(model=str(model_dir), pairs=str(pairs), base_model=str(base_model) if base_model else None,
                            limit=limit, batch_size=batch_size, device=device, dtype=dtype, seed=seed,
                            keep_ratio=keep_ratio, rho=rho, window_rule=window_rule)
    with ProgressBar("calibrating", "pair", quiet=as_json) as bar:
        record = run_calibration(cfg, progress=bar.reach, log=bar.note)
    json_path, png_path = write_calibration(record, out_dir)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(summary_text(record))
        click.echo(f"wrote      {json_path} and {png_path}")
        if record["pairs"]["skipped"]:
            click.echo(f"skipped    {record['pairs']['skipped']} bad row(s), e.g. {record['pairs']['skipped_rows'][0]}")
