"""``sapindex compact``: merge an index's small fragments and reclaim the space of old versions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from sapindex.cli._options import json_option
from sapindex.cli._output import size

GRACE_SECONDS = 60  # versions younger than this are kept: a service may be reading one right now


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--older-than", type=click.IntRange(min=0), default=GRACE_SECONDS, show_default=True,
              help="Delete table versions older than this many seconds (0: all but the latest). "
                   "A search reading a deleted version that moment fails, hence the default.")
@json_option("Print bytes before and after as JSON.")
def compact(index_dir, older_than, as_json):
    """Compact an index: fewer, larger fragments (faster loads) and old versions deleted
    (the space that `remove` and re-indexed files left).

    \b
    Example:
      sapindex compact myindex
    """
    from sapindex.index.store import IndexWriter

    with IndexWriter.open_writer(index_dir) as index:
        before = index.stats().bytes_on_disk
        index.compact(cleanup_older_than=dt.timedelta(seconds=older_than))
        after = index.stats().bytes_on_disk
    if as_json:
        click.echo(json.dumps({"bytes_before": before, "bytes_after": after}))
    else:
        click.echo(f"{index_dir}: {size(before)} -> {size(after)}")
