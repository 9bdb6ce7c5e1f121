"""``sapindex push``: an index's pages into a Qdrant collection (torch-free; the ``qdrant`` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option, qdrant_options
from sapindex.cli._output import ProgressBar, warn


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@qdrant_options(required=True)
@click.option("--sync", is_flag=True, help="Also delete the points of pages the index no longer holds "
              "(removed files, changed files' old pages).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Points per upsert.")
@click.option("--quantization", type=click.Choice(["none", "scalar", "binary"]), default="none", show_default=True,
              help="Qdrant's in-RAM quantization of the vectors (int8 scalar or binary), set when the collection "
                   "is created; the float16 originals stay for rescoring.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Shards of a new collection, spread over the cluster's nodes (default: the server's).")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Copies of each shard of a new collection (default: the server's, 1).")
@json_option("Print what was pushed as JSON.")
def push(index_dir, qdrant, collection, api_key_file, sync, batch_size, quantization, shards, replicas, as_json):
    """Push an index's pages into a Qdrant collection: one point per page, its kept vectors as a
    multivector compared by MaxSim, its path, page and index fields as payload.

    The collection is created if needed (float16 vectors, dot product, MaxSim) and records the
    bundle: a collection of another bundle or dimension is refused. Point ids come from the page's
    content hash and number, so a rerun writes nothing twice and a killed push resumes; pages
    already in the collection unchanged are skipped. --qdrant takes a server URL or a directory
    (Qdrant's local mode, no server).

    \b
    Examples:
      sapindex push myindex --qdrant http://qdrant:6333 --collection archive --api-key-file qdrant.key
      sapindex push myindex --qdrant http://qdrant:6333 --collection archive --sync
      sapindex push myindex --qdrant ./qdrant-data --collection archive
    """
    from sapindex.engines import qdrant as engine
    from sapindex.index.store import Index

    with Index.open(index_dir) as index:
        client = engine.connect(qdrant, api_key_file, warn=warn)
        try:
            with ProgressBar("pushing", "page", quiet=as_json) as bar:
                report = engine.push(client, qdrant, collection, index, batch_size=batch_size, sync=sync,
                                     quantization=quantization, shards=shards, replicas=replicas,
                                     progress=bar.reach)
        finally:
            client.close()
    if as_json:
        click.echo(json.dumps({"collection": collection, "qdrant": qdrant, "pushed": report.pushed,
                               "skipped": report.skipped, "deleted": report.deleted, "pages": report.pages,
                               "seconds": round(report.seconds, 3)}, indent=2))
        return
    rate = report.pushed / report.seconds if report.seconds > 0 else 0.0
    click.echo(f"{collection} at {qdrant}: {report.pushed} pages pushed ({rate:.0f} pages/s), {report.skipped} "
               f"already there, {report.deleted} deleted; the index holds {report.pages}")
