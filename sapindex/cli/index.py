"""``sapindex index``: PDFs and images into a SAP-pruned index with an exported bundle (torch-free)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sapindex.cli._options import device_option, json_option, keep_ratio_option
from sapindex.cli._output import ProgressBar, size
from sapindex.compression import DEFAULT_METHOD, INDEX_METHODS
from sapindex.errors import EXIT_PARTIAL, SapIndexError
from sapindex.runtime.options import DEFAULT_DPI


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Index directory (LanceDB).")
@click.option("--bundle", "bundle_option", type=click.Path(path_type=Path), default=None,
              help="Bundle to index with (or give it as the first argument; default: the built-in micro model).")
@keep_ratio_option()
@device_option()
@click.option("--batch-size", type=int, default=None,
              help="Pages per ONNX Runtime call (and per commit).  [default: 1 for a bundle over 1 GB on cpu, "
                   "so the bar moves per page; else 8]")
@click.option("--dpi", default=DEFAULT_DPI, show_default=True, help="PDF rendering resolution.")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--position-correction", is_flag=True,
              help="Rank by in-degree per attending row (causal decoders only: refused for prefix-LM "
                   "bundles such as ColPali; experimental, off by default).")
@click.option("--mode", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
              help="exact: the decoder on every token. fast: the layers after the SAP window on the prompt and the "
                   "kept tokens only (format-2 bundles; an approximation that pays when the window ends early: see "
                   "docs/how-to/index-pages.md). An index holds one mode.")
@click.option("--method", type=click.Choice(list(INDEX_METHODS)), default=None,
              help="What is stored of each page. sap: SAP's kept tokens (the paper). Beyond the paper, at the same "
                   "vector count: sap-merge (each kept token averaged with the dropped tokens most like it), "
                   "sap-kmeans (centrality-weighted k-means), sap-budget (SAP with per-page counts spread by content; "
                   "needs --budget-from); exact mode only. `sapindex eval` measures them on your pages and "
                   "recommends one. An index holds one method.  "
                   f"[default: the index's own when resuming, else {DEFAULT_METHOD}]")
@click.option("--budget-from", type=click.Path(path_type=Path), default=None, metavar="REPORT.json",
              help="With --method sap-budget: the eval report (`sapindex eval BUNDLE CALIBRATION --methods sap-budget "
                   "--keep-ratios R`) whose budget scale at --keep-ratio to use.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Encode on a Ray cluster: 'local' (a private one on this machine), 'auto' (the cluster this "
                   "machine joined with `ray start`) or an address (head:6379, ray://head:10001). Needs the ray "
                   "extra on every node, the bundle and the inputs at the same paths there.")
@click.option("--encoders", type=int, default=None, help="With --ray: encoder actors, one bundle each.  [default: 1]")
@click.option("--gpus-per-encoder", type=float, default=None,
              help="With --ray: GPUs each encoder reserves (0.5: two share one); above 0 encodes on CUDA.  "
                   "[default: 1 with --device cuda, else 0]")
@json_option("Print the summary as JSON.")
def index(inputs, out_dir, bundle_option, keep_ratio, device, batch_size, dpi, threads, position_correction, mode,
          method, budget_from, ray_address, encoders, gpus_per_encoder, as_json):
    """Index PDFs and images into a SAP-pruned index (torch-free). Re-runs resume.

    [BUNDLE] INPUTS...: a first argument that is a bundle directory is the bundle (as is
    --bundle); without one the built-in micro model is used. INPUTS are files, directories
    (walked recursively), @list.txt files of paths, or - to read paths from stdin. Pages
    already indexed (same content hash and page) are skipped; changed files are re-indexed.
    Exit code 3 means some inputs failed (listed in the summary and stored in the index), the
    rest was indexed.

    \b
    Example:
      sapindex index colqwen2.sap ./pdfs ./scans --out myindex --keep-ratio 0.1
      sapindex index ./scans --out myindex        # the built-in micro model
      sapindex index colqwen2.sap ./pdfs --out fastindex --mode fast
      sapindex index colqwen2.sap ./pdfs --out papers-index --method sap   # the paper's selection: prune can cut it
      sapindex index colqwen2.sap /mnt/archive --out /mnt/index --ray auto --encoders 8 --gpus-per-encoder 1
    """
    from sapindex.runtime.defaults import resolve_bundle

    bundle, inputs = resolve_bundle(inputs, bundle_option)
    from sapindex.runtime.options import IndexOptions, method_with_correction

    options = IndexOptions(keep_ratio=keep_ratio, method=method_with_correction(method, position_correction), mode=mode,
                           budget_scale=_budget_scale(bundle, budget_from, keep_ratio), device=device,
                           batch_size=batch_size, dpi=dpi, threads=threads)
    if ray_address is None:
        if encoders is not None or gpus_per_encoder is not None:
            raise SapIndexError("--encoders and --gpus-per-encoder spread the run over a Ray cluster: give --ray too")
        from sapindex.index.indexer import run_index as run
    else:
        from functools import partial

        from sapindex.cluster import run_index_on_ray

        run = partial(run_index_on_ray, address=ray_address, encoders=1 if encoders is None else encoders,
                      gpus_per_encoder=gpus_per_encoder or 0.0)
    with ProgressBar("indexing", "page", quiet=as_json) as bar:
        summary = run(bundle, inputs, out_dir, options, progress=bar.reach)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        rate = summary.to_dict()["pages_per_second"]
        click.echo(f"files      {summary.files}")
        click.echo(f"pages      {summary.pages_indexed} indexed, {summary.pages_skipped} already present"
                   + (f" ({rate:.2f} pages/s)" if rate else ""))
        click.echo(f"vectors    {summary.vectors_before} before pruning, {summary.vectors_kept} kept")
        click.echo(f"index      {out_dir}: {summary.index_pages} pages, {size(summary.index_bytes)}")
        click.echo(f"failures   {len(summary.failures)}")
        for failure in summary.failures:
            click.echo(f"  {failure}")
    if summary.failures:
        sys.exit(EXIT_PARTIAL)


def _budget_scale(bundle, report, keep_ratio: float) -> float | None:
    """``--budget-from``'s scale (the run refuses it for a method other than sap-budget)."""
    if report is None:
        return None
    from sapindex.compression import budget_scale_from
    from sapindex.runtime.bundle import Bundle

    return budget_scale_from(report, Bundle.open(bundle, verify=False).fingerprints, keep_ratio)  # run_index verifies
