"""``sapindex eval``: retrieval quality of SAP against the paper's baselines at matched vector counts (torch-free)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sapindex.cli._options import device_option, json_option
from sapindex.cli._output import ProgressBar
from sapindex.compression import METHODS
from sapindex.sap import EVAL_KEEP_RATIOS


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--keep-ratios", default=",".join(f"{r:g}" for r in EVAL_KEEP_RATIOS), show_default=True,
              help="Comma-separated keep ratios.")
@click.option("--methods", default=None,
              help=f"Comma-separated methods of {','.join(METHODS)} "
                   "(default: all but sap-fast, which re-encodes every page per ratio; sap-poscorr only for "
                   "causal bundles).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--batch-size", default=8, show_default=True)
@device_option()
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads.")
@click.option("--seed", default=0, show_default=True)
@json_option("Print report.json.")
def eval_command(bundle, dataset, keep_ratios, methods, out_dir, batch_size, device, threads, seed, as_json):
    """Retrieval quality of SAP vs the paper's baselines at matched vector counts (torch-free).

    DATASET: a ViDoRe v1 QA parquet (query + image columns), a ViDoRe v2 / BEIR directory
    (corpus, queries, qrels parquet), or a calibrate-style JSONL pairs file. Page encodings are
    cached in OUT/cache: a re-run resumes. Writes OUT/report.json, report.md, retention.png.

    \b
    Example:
      sapindex eval colqwen2.sap vidore_v2/esg --keep-ratios 0.2,0.1,0.05 --out report/
    """
    from sapindex.eval.report import write_reports
    from sapindex.eval.runner import EvalConfig, parse_methods, parse_ratios, run_eval

    cfg = EvalConfig(bundle=str(bundle), dataset=str(dataset), out=str(out_dir), keep_ratios=parse_ratios(keep_ratios),
                     methods=parse_methods(methods) if methods is not None else None, batch_size=batch_size,
                     device=device, threads=threads, seed=seed, command=" ".join(["sapindex", *sys.argv[1:]]))
    with ProgressBar("encoding pages", "page", quiet=as_json) as bar:
        report = run_eval(cfg, progress=bar.reach)
    paths = write_reports(report, out_dir)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo((out_dir / "report.md").read_text())
        click.echo("wrote " + ", ".join(str(p) for p in paths))
