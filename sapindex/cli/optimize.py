"""``sapindex optimize``: build (or rebuild) an index's first stage for two-stage search."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option
from sapindex.cli._output import ProgressBar


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@json_option("Print the first stage's description as JSON.")
def optimize(index_dir, as_json):
    """Build the first stage of two-stage search: token centroids, every page's codes, and the
    vectors' principal axes.

    Searches of an index with a first stage and at least 5,000 pages take the first stage's 4,096
    best candidates, rescore them on projections and the best 256 exactly, instead of scanning
    every page (recall and speed measured in bench/RESULTS.md); `search --exact` scans anyway.
    Pages indexed later are coded when a searcher loads them; run optimize again after large
    additions to retrain the centroids.

    \b
    Example:
      sapindex optimize myindex
    """
    from sapindex.index.store import Index
    from sapindex.search import first_stage

    with Index.open_writer(index_dir) as index, ProgressBar("coding", "block", quiet=as_json) as bar:
        info = first_stage.build(index, progress=bar.reach)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{index_dir}: first stage of {info['n_centroids']} centroids over {info['pages']} pages "
                   f"({info['vectors']} vectors) in {info['seconds']:.1f} s")
