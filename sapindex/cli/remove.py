"""``sapindex remove``: forget documents (and their pages and failures) by path or directory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True)
@json_option("Print {target: [paths removed]} as JSON.")
def remove(index_dir, paths, as_json):
    """Remove documents from an index: each PATH as `index` was given it, or a directory prefix.

    All pages go in one commit; a PATH that matches nothing is an error and nothing is removed.
    The space is reclaimed by `sapindex compact`.

    \b
    Example:
      sapindex remove myindex /archive/finance/2019-report.pdf /archive/old/
    """
    from sapindex.index.store import IndexWriter

    with IndexWriter.open_writer(index_dir) as index:
        removed = index.remove_paths(paths)
    if as_json:
        click.echo(json.dumps(removed, indent=2))
        return
    for target, gone in removed.items():
        click.echo(f"{target}: {len(gone)} document{'s' if len(gone) != 1 else ''} removed")
