"""``sapindex search``: exact MaxSim over an index's kept vectors, the query encoded by its bundle (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import device_option, json_option


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "k", default=5, show_default=True, help="Results per query.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle to encode the query (default: the one the index was built with).")
@device_option()
@json_option("Print a JSON array of {path, page, score}, best first.")
def search(index_dir, query, k, bundle, device, as_json):
    """Search an index with exact MaxSim over the kept vectors.

    \b
    Example:
      sapindex search myindex "what was the 2023 revenue?" -k 5
    """
    from sapindex.index.indexer import open_for_search
    from sapindex.index.indexer import search as run_search

    text = " ".join(query)
    idx, encoder = open_for_search(index_dir, bundle, device)
    with idx:
        hits = run_search(idx, encoder, [text], k=k)[0]
    if as_json:
        click.echo(json.dumps([{"path": h.path, "page": h.page, "score": h.score} for h in hits], indent=2))
        return
    for rank, h in enumerate(hits, start=1):
        click.echo(f"{rank:>3}. {h.score:9.4f}  {h.path}  page {h.page}")
