"""``sapindex dump``: an open copy of an index (Parquet) or an engine's feed file (Vespa, Elasticsearch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option
from sapindex.cli._output import ProgressBar, size


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory to write into.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "vespa-feed", "es-bulk"]), default="parquet",
              show_default=True, help="parquet: pages.parquet + dump.json; vespa-feed: vespa-feed.jsonl + "
              "vespa-schema.sd; es-bulk: es-bulk.ndjson + es-mapping.json.")
@click.option("--vespa-doctype", default="page", show_default=True, help="Document type of the Vespa feed.")
@click.option("--es-index", default="sapindex-pages", show_default=True, help="Index the bulk lines write to.")
@json_option("Print the files written and the counts as JSON.")
def dump(index_dir, out_dir, fmt, vespa_doctype, es_index, as_json):
    """Copy an index's pages out for another engine: path, page, content hash, positions and the
    kept vectors (float16), from one version of the index, a chunk of pages at a time.

    \b
    Examples:
      sapindex dump myindex --out export/                        # pages.parquet, any Arrow reader
      sapindex dump myindex --out feed/ --format vespa-feed      # then: vespa feed feed/vespa-feed.jsonl
      sapindex dump myindex --out bulk/ --format es-bulk         # then: curl ... --data-binary @bulk/es-bulk.ndjson
    """
    from sapindex.engines.dump import dump as write_dump
    from sapindex.index.store import Index

    with Index.open(index_dir) as index, ProgressBar("dumping", "page", quiet=as_json) as bar:
        report = write_dump(index, out_dir, fmt, vespa_doctype=vespa_doctype, es_index=es_index,
                            progress=bar.reach)
    if as_json:
        click.echo(json.dumps({"files": [str(f) for f in report.files], "pages": report.pages,
                               "vectors": report.vectors, "bytes": report.bytes}, indent=2))
        return
    click.echo(f"{report.files[0]}: {report.pages} pages, {report.vectors} vectors, {size(report.bytes)}; "
               f"also {', '.join(str(f) for f in report.files[1:])}")
