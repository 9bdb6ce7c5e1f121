"""``sapindex prune``: a smaller index from an existing one at a lower keep ratio, without re-encoding."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option
from sapindex.cli._output import ProgressBar, kv_table, size


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--keep-ratio", required=True, type=float, help="The new keep ratio, at most the index's own.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="The new index directory.")
@json_option("Print the summary as JSON.")
def prune(index_dir, keep_ratio, out_dir, as_json):
    """Write a smaller index keeping each page's most central tokens at a lower ratio.

    Exact: the kept tokens equal what `index --keep-ratio` at that ratio keeps, taken from the
    SAP scores the index stores (indexes from before sapindex stored them are refused). The
    source is not changed; a killed prune leaves no output.

    \b
    Example:
      sapindex prune myindex --keep-ratio 0.05 --out myindex-005
    """
    from sapindex.index.prune import prune_index

    with ProgressBar("pruning", "page", quiet=as_json) as bar:
        summary = prune_index(index_dir, out_dir, keep_ratio, progress=bar.reach)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    kv_table([("pages", summary.pages),
              ("vectors", f"{summary.vectors_before} -> {summary.vectors_after}"),
              ("bytes", f"{size(summary.source_bytes)} -> {size(summary.out_bytes)}"),
              ("index", out_dir)], width=8)
