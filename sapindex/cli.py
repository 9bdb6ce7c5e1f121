"""The ``sapindex`` command line.

Exit codes: 0 success; 1 internal error (a bug: please report it, rerun with
``SAPINDEX_DEBUG=1`` for the traceback); 2 bad input or environment (the message names the
file or row and the reason).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from sapindex import __version__
from sapindex.sap import WINDOW_RULES
from sapindex.errors import EXIT_INTERNAL, SapIndexError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sapindex")
def cli() -> None:
    """sapindex: Structural Anchor Pruning for ColPali-family visual document retrievers.

    \b
    Example:
      sapindex demo --out demo/
      sapindex calibrate --model /models/colqwen2-v1.0-merged --pairs calib.jsonl --out calib/
    """


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Local checkpoint directory (merged, or a LoRA adapter with --base-model).")
@click.option("--base-model", type=click.Path(path_type=Path), default=None,
              help="Local base checkpoint of a LoRA adapter (never downloaded).")
@click.option("--pairs", required=True, type=click.Path(path_type=Path),
              help="(query, page) pairs: JSONL, a directory of JSONL/parquet, or a parquet file.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--limit", default=500, show_default=True, help="Use at most this many pairs (seeded sample).")
@click.option("--batch-size", default=4, show_default=True, help="Pages per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16 or float16.")
@click.option("--seed", default=0, show_default=True, help="Seed for the pair sample and the random floor.")
@click.option("--keep-ratio", default=0.10, show_default=True, help="Calibration keep ratio gamma_cal.")
@click.option("--rho", default=0.2, show_default=True, help="Window width as a fraction of the layer count.")
@click.option("--window-rule", default="algorithm1", show_default=True, type=click.Choice(list(WINDOW_RULES)),
              help="algorithm1: the paper's rule; sr-peak: the same-width window of highest mean SR.")
@click.option("--json", "as_json", is_flag=True, help="Print calibration.json instead of the summary.")
def calibrate(model_dir, base_model, pairs, out_dir, limit, batch_size, device, dtype, seed, keep_ratio, rho,
              window_rule, as_json):
    """Run the per-layer Score Retention analysis and pick the SAP layer window.

    Writes OUT/calibration.json and OUT/sr_curve.png.

    \b
    Example:
      sapindex calibrate --model /models/colqwen2-v1.0-merged --pairs calib.jsonl --out calib/
    """
    from sapindex.calibration.calibrate import CalibrationConfig, summary_text

    cfg = CalibrationConfig(model=str(model_dir), pairs=str(pairs), base_model=str(base_model) if base_model else None,
                            limit=limit, batch_size=batch_size, device=device, dtype=dtype, seed=seed,
                            keep_ratio=keep_ratio, rho=rho, window_rule=window_rule)
    record, json_path, png_path = _calibrate_and_write(cfg, out_dir, quiet=as_json)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(summary_text(record))
        click.echo(f"wrote      {json_path} and {png_path}")
        if record["pairs"]["skipped"]:
            click.echo(f"skipped    {record['pairs']['skipped']} bad row(s), e.g. {record['pairs']['skipped_rows'][0]}")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path), required=False)
@click.option("--base-model", type=click.Path(path_type=Path), default=None, help="Local base of a LoRA adapter.")
@click.option("--providers", is_flag=True, help="List the ONNX Runtime execution providers of this machine.")
@click.option("--families", is_flag=True, help="List the supported families, their checkpoints and bundle sizes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
        import onnxruntime as ort

        from sapindex.runtime.session import available_providers

        found = available_providers()
        data = {"onnxruntime": ort.__version__, "providers": found, "cuda": "CUDAExecutionProvider" in found}
        click.echo(json.dumps(data, indent=2) if as_json else
                   f"onnxruntime {data['onnxruntime']}\nproviders   {', '.join(found)}\ncuda        {data['cuda']}")
        return
    if model_dir is None:
        raise click.UsageError("give MODEL_DIR, --families or --providers")
    from sapindex.families import inspect_model_dir

    summary = inspect_model_dir(model_dir, base_model).summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key in ("path", "family", "model_type", "n_layers", "n_heads", "n_kv_heads", "hidden_size", "parameters",
                "lora", "base_model", "image_token_scheme", "attention"):
        click.echo(f"{key:<19} {summary[key]}")
    click.echo(f"{'fingerprint':<19} {summary['fingerprint']['sha256'][:16]}")


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
                                       row["bundle_gb_fp16"]):
            click.echo(f"    {name:<30} {b:.2f} B parameters, bundle ~{fp32} GB fp32 / ~{fp16} GB fp16")
        click.echo(f"    image tokens: {row['image_token_scheme']}")


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local checkpoint directory.")
@click.option("--base-model", type=click.Path(path_type=Path), default=None, help="Local base of a LoRA adapter.")
@click.option("--calibration", required=True, type=click.Path(path_type=Path), help="calibration.json of this model.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16"]))
@click.option("--opset", default=18, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--window", "window_text", default=None, metavar="START:END",
              help="SAP layers to export instead of the calibrated window (0-indexed, END exclusive).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest.")
def export(model_dir, base_model, calibration, out_dir, dtype, opset, overwrite, window_text, as_json):
    """Export the model to a self-contained ONNX bundle with in-graph SAP centrality.

    The bundle is validated against PyTorch (pages of several sizes, batch sizes 1 and 4)
    before it is written; a failed validation writes nothing and exits 2.

    \b
    Example:
      sapindex export --model /models/colqwen2 --calibration calib/calibration.json --out colqwen2.sap
      sapindex export --model /models/colqwen2 --calibration calib/calibration.json --out w.sap --window 12:17
    """
    from sapindex.exporter.export import ExportConfig, export_bundle, parse_window

    cfg = ExportConfig(model=str(model_dir), calibration=str(calibration), out=str(out_dir),
                       base_model=str(base_model) if base_model else None, dtype=dtype, opset=opset,
                       overwrite=overwrite, window=parse_window(window_text) if window_text else None)
    manifest = export_bundle(cfg, log=lambda msg: None if as_json else click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    v = manifest["validation"]
    size = sum(f["size"] for f in manifest["files"].values())
    click.echo(f"bundle     {out_dir} ({_size(size)}, fingerprint {manifest['fingerprint'][:16]})")
    click.echo(f"window     layers [{manifest['window'][0]}, {manifest['window'][1]}) of {manifest['n_layers']} "
               f"(from {manifest['window_source']})")
    click.echo(f"validated  {v['pages']} pages, batch sizes {v['batch_sizes']}: max |diff| embeddings "
               f"{v['max_abs_diff_embeddings']:.1e}, centrality {v['max_abs_diff_centrality']:.1e}, "
               f"kept-set mismatches {len(v['kept_set_mismatches'])}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Index directory (LanceDB).")
@click.option("--bundle", "bundle_option", type=click.Path(path_type=Path), default=None,
              help="Bundle to index with (or give it as the first argument; default: the built-in micro model).")
@click.option("--keep-ratio", default=0.10, show_default=True, help="Fraction of visual tokens kept per page.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--batch-size", default=8, show_default=True, help="Pages per ONNX Runtime call (and per commit).")
@click.option("--dpi", default=144, show_default=True, help="PDF rendering resolution.")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--position-correction", is_flag=True,
              help="Rank by in-degree per attending row (causal decoders only: refused for prefix-LM "
                   "bundles such as ColPali; experimental, off by default).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index(inputs, out_dir, bundle_option, keep_ratio, device, batch_size, dpi, threads, position_correction, as_json):
    """Index PDFs and images into a SAP-pruned index (torch-free). Re-runs resume.

    [BUNDLE] INPUTS...: a first argument that is a bundle directory is the bundle (as is
    --bundle); without one the built-in micro model is used. INPUTS are files, directories
    (walked recursively), @list.txt files of paths, or - to read paths from stdin. Pages already indexed (same content hash and page) are skipped;
    changed files are re-indexed. Exit code 3 means some inputs failed (listed in the
    summary and stored in the index), the rest was indexed.

    \b
    Example:
      sapindex index colqwen2.sap ./pdfs ./scans --out myindex --keep-ratio 0.1
      sapindex index ./scans --out myindex        # the built-in micro model
    """
    from tqdm import tqdm

    from sapindex.runtime.bundle import is_bundle_dir
    from sapindex.runtime.defaults import default_bundle_path
    from sapindex.index.indexer import EXIT_PARTIAL, run_index

    inputs = list(inputs)
    if bundle_option is not None:
        bundle = bundle_option
    elif len(inputs) > 1 and is_bundle_dir(inputs[0]):
        bundle = Path(inputs.pop(0))
    else:
        bundle = default_bundle_path()

    bar = tqdm(unit="page", disable=as_json or None, file=sys.stderr, dynamic_ncols=True, desc="indexing")

    def progress(done, known):
        bar.total = max(known, done)
        bar.n = done
        bar.refresh()

    try:
        summary = run_index(bundle, inputs, out_dir, keep_ratio=keep_ratio, device=device,
                            batch_size=batch_size, dpi=dpi, threads=threads,
                            position_correction=position_correction, progress=progress)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        rate = summary.to_dict()["pages_per_second"]
        click.echo(f"files      {summary.files}")
        click.echo(f"pages      {summary.pages_indexed} indexed, {summary.pages_skipped} already present"
                   + (f" ({rate:.2f} pages/s)" if rate else ""))
        click.echo(f"vectors    {summary.vectors_before} before pruning, {summary.vectors_kept} kept")
        click.echo(f"index      {out_dir}: {summary.index_pages} pages, {_size(summary.index_bytes)}")
        click.echo(f"failures   {len(summary.failures)}")
        for failure in summary.failures:
            click.echo(f"  {failure}")
    if summary.failures:
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "k", default=5, show_default=True, help="Results per query.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle to encode the query (default: the one the index was built with).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {path, page, score}, best first.")
def search(index_dir, query, k, bundle, device, as_json):
    """Search an index with exact MaxSim over the kept vectors.

    \b
    Example:
      sapindex search myindex "what was the 2023 revenue?" -k 5
    """
    from sapindex.index.indexer import open_for_search, search as run_search

    text = " ".join(query)
    idx, encoder = open_for_search(index_dir, bundle, device)
    with idx:
        hits = run_search(idx, encoder, [text], k=k)[0]
    if as_json:
        click.echo(json.dumps([{"path": h.path, "page": h.page, "score": h.score} for h in hits], indent=2))
        return
    for rank, h in enumerate(hits, start=1):
        click.echo(f"{rank:>3}. {h.score:9.4f}  {h.path}  page {h.page}")


@cli.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--keep-ratios", default="0.2,0.1,0.05", show_default=True, help="Comma-separated keep ratios.")
@click.option("--methods", default=None,
              help="Comma-separated methods of full,sap,sap-poscorr,random,eos,adaptive-eos,pooling,cluster "
                   "(default: all; sap-poscorr only for causal bundles).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print report.json.")
def eval_command(bundle, dataset, keep_ratios, methods, out_dir, batch_size, device, threads, seed, as_json):
    """Retrieval quality of SAP vs the paper's baselines at matched vector counts (torch-free).

    DATASET: a ViDoRe v1 QA parquet (query + image columns), a ViDoRe v2 / BEIR directory
    (corpus, queries, qrels parquet), or a calibrate-style JSONL pairs file. Page encodings are
    cached in OUT/cache: a re-run resumes. Writes OUT/report.json, report.md, retention.png.

    \b
    Example:
      sapindex eval colqwen2.sap vidore_v2/esg --keep-ratios 0.2,0.1,0.05 --out report/
    """
    from sapindex.eval.runner import EvalConfig, parse_methods, parse_ratios, run_eval, write_reports

    cfg = EvalConfig(bundle=str(bundle), dataset=str(dataset), out=str(out_dir), keep_ratios=parse_ratios(keep_ratios),
                     methods=parse_methods(methods) if methods is not None else None, batch_size=batch_size,
                     device=device, threads=threads, seed=seed, command=" ".join(["sapindex", *sys.argv[1:]]))
    report = _with_progress("encoding pages", lambda progress, total: run_eval(cfg, progress=progress,
                                                                                on_total=total),
                            quiet=as_json, unit="page")
    paths = write_reports(report, out_dir)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo((out_dir / "report.md").read_text())
        click.echo("wrote " + ", ".join(str(p) for p in paths))


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(target, as_json):
    """Describe a bundle (verifying every file's sha256) or an index (pages, vectors, failures).

    \b
    Example:
      sapindex inspect colqwen2.sap
      sapindex inspect myindex
    """
    from sapindex.index.store import META_FILE, Index

    if (Path(target) / META_FILE).is_file():
        with Index.open(target) as idx:
            summary = {"path": str(target), "bundle_fingerprint": idx.bundle_fingerprint, "dim": idx.dim,
                       "vector_dtype": idx.vector_dtype, "meta": idx.meta, **idx.stats().to_dict(),
                       "failure_list": [str(f) for f in idx.failures()]}
        if as_json:
            click.echo(json.dumps(summary, indent=2, default=str))
            return
        for key in ("path", "bundle_fingerprint", "dim", "vector_dtype", "files", "pages", "vectors",
                    "vectors_before_pruning", "failures"):
            click.echo(f"{key:<23} {summary[key]}")
        click.echo(f"{'bytes_on_disk':<23} {_size(summary['bytes_on_disk'])}")
        for failure in summary["failure_list"]:
            click.echo(f"  {failure}")
        return
    from sapindex.runtime.bundle import Bundle

    summary = Bundle.open(target).summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key in ("path", "family", "attention", "n_layers", "window", "window_source", "dim", "dtype", "bytes",
                "fingerprint", "source_fingerprint"):
        click.echo(f"{key:<19} {summary[key]}")
    v = summary["validation"]
    click.echo(f"{'validation':<19} max |diff| embeddings {v['max_abs_diff_embeddings']:.1e} over {v['pages']} pages")


@cli.command()
@click.option("--out", "out_dir", default="sapindex-demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--keep-ratio", default=0.10, show_default=True, help="Fraction of visual tokens kept per page.")
@click.option("--pipeline", is_flag=True,
              help="Instead: calibrate, export, index and search a tiny random model (needs the export extra).")
@click.option("--family", default="colqwen2", show_default=True,
              type=click.Choice(["colqwen2", "colqwen2_5", "colpali", "colpali_hf", "colidefics3"]),
              help="With --pipeline: the tiny model's family.")
def demo(out_dir, keep_ratio, pipeline, family):
    """Index the bundled example pages with the built-in micro model and answer example queries.

    Torch-free. Writes OUT/index and OUT/kept-patches.png (the kept visual tokens over the page
    that answered the first query). With --pipeline, runs calibrate -> export -> index -> search
    on a tiny random-weight model instead (mechanics only, no retrieval quality).

    \b
    Example:
      sapindex demo --out demo/
    """
    if pipeline:
        _pipeline_demo(out_dir, family)
        return
    from sapindex.runtime.defaults import default_bundle_path, example_pages, example_queries
    from sapindex.index.indexer import open_for_search, run_index, search as run_search
    from sapindex.index.overlay import global_cells, write_overlay

    bundle = default_bundle_path()
    summary = run_index(bundle, [str(p) for p in example_pages()], out_dir / "index", keep_ratio=keep_ratio)
    click.echo(f"index      {out_dir / 'index'}: {summary.index_pages} example pages, "
               f"{summary.vectors_kept} of {summary.vectors_before} vectors kept (keep ratio {keep_ratio})")
    examples = example_queries()
    index, encoder = open_for_search(out_dir / "index")
    with index:
        results = run_search(index, encoder, [e["query"] for e in examples], k=3)
        found = 0
        for example, hits in zip(examples, results):
            right = bool(hits) and Path(hits[0].path).name == example["page"]
            found += right
            click.echo(f"query      {example['query']!r}  (read off {example['page']})")
            for rank, hit in enumerate(hits, start=1):
                mark = "<- source page" if Path(hit.path).name == example["page"] else ""
                click.echo(f"  {rank}. {hit.score:8.3f}  {Path(hit.path).name}  {mark}")
        click.echo(f"top-1      {found} of {len(examples)} queries found the page they were read from")
        top = results[0][0]
        row = next(r for r in index.iter_rows() if r["path"] == top.path and r["page"] == top.page)
    from PIL import Image

    grid, global_grid = (row["grid_rows"], row["grid_cols"]), (row["global_rows"], row["global_cols"])
    with Image.open(top.path) as page:
        picture = write_overlay(out_dir / "kept-patches.png", page, grid, row["positions"], global_grid)
    click.echo(f"picture    {picture}: kept visual tokens of {Path(top.path).name} outlined")
    extra = global_cells(grid, row["positions"], global_grid)
    if extra:
        click.echo(f"global     {len(extra)} kept global-tile tokens (not drawn), {global_grid[0]}x{global_grid[1]} "
                   f"cells: {', '.join(f'({r},{c})' for r, c in extra)}")


def _pipeline_demo(out_dir: Path, family: str) -> None:
    from sapindex.calibration.calibrate import CalibrationConfig, summary_text
    from sapindex.exporter.export import ExportConfig, export_bundle
    from sapindex.testing.tiny import build_tiny
    from sapindex.index.indexer import open_for_search, run_index, search as run_search
    from sapindex.testing.toy_pages import write_pairs

    model_dir = build_tiny(out_dir / f"tiny-{family}", family)
    pairs = write_pairs(out_dir / "pairs", n=16)
    click.echo(f"tiny model {model_dir}\npairs      {pairs}")
    record, json_path, png_path = _calibrate_and_write(CalibrationConfig(model=str(model_dir), pairs=str(pairs)),
                                                       out_dir / "calib")
    click.echo(summary_text(record))
    click.echo(f"wrote      {json_path} and {png_path}")
    bundle = out_dir / f"tiny-{family}.sap"
    manifest = export_bundle(ExportConfig(model=str(model_dir), calibration=str(json_path), out=str(bundle),
                                          overwrite=True))
    click.echo(f"bundle     {bundle} (validated: max |diff| {manifest['validation']['max_abs_diff_embeddings']:.1e})")
    summary = run_index(bundle, [str(pairs.parent / "pages")], out_dir / "index")
    click.echo(f"index      {out_dir / 'index'}: {summary.pages_indexed} pages indexed, {summary.pages_skipped} present, "
               f"{summary.vectors_kept} of {summary.vectors_before} vectors kept")
    query = json.loads(pairs.read_text().splitlines()[0])["query"]
    index, encoder = open_for_search(out_dir / "index")
    with index:
        hits = run_search(index, encoder, [query], k=3)[0]
    click.echo(f"search     {query!r}:")
    for rank, hit in enumerate(hits, start=1):
        click.echo(f"  {rank}. {hit.score:8.4f}  {hit.path}  page {hit.page}")


def _size(n: float) -> str:
    """Bytes for people: 1000-based units."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def _calibrate_and_write(cfg, out_dir: Path, quiet: bool = False):
    """Calibrate under a progress bar and write calibration.json + sr_curve.png; (record, json, png)."""
    from sapindex.calibration.calibrate import calibrate, write_calibration

    record = _with_progress("calibrating", lambda progress, total: calibrate(cfg, progress=progress, on_total=total),
                            quiet=quiet)
    return (record, *write_calibration(record, out_dir))


def _with_progress(label: str, work, quiet: bool = False, unit: str = "pair"):
    """Run ``work(progress, on_total)`` under a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(desc=label, unit=unit, disable=quiet or None, file=sys.stderr, dynamic_ncols=True)
    try:
        def on_total(n):
            bar.reset(total=n)

        return work(bar.update, on_total)
    finally:
        bar.close()


def main() -> None:
    """Console entry point: user errors are one line and exit 2, never a traceback."""
    try:
        rc = cli.main(standalone_mode=False)
        if isinstance(rc, int):
            sys.exit(rc)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SapIndexError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: keep the user's terminal clean unless asked
        if os.environ.get("SAPINDEX_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with SAPINDEX_DEBUG=1 for details)", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
