"""``sapindex optimize``: build (or rebuild) an index's first stage for two-stage search."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option
from sapindex.cli._output import ProgressBar


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--code-bytes", type=click.Choice(["16", "32"]), default="16", show_default=True,
              help="Bytes of residual code a vector: 16 (~24 bytes a vector in memory) or 32 (~40; higher recall "
                   "where many pages nearly tie: bench/RESULTS.md 'First-stage codecs').")
@json_option("Print the first stage's description as JSON.")
def optimize(index_dir, code_bytes, as_json):
    """Build the first stage of two-stage search: every kept vector compressed (an inverted list
    and a 16-byte residual code) in a memory-mapped token index, and the float16 vectors copied
    beside it for exact rescoring.

    Searches of an index with a first stage of at least 5,000 pages retrieve each query token's
    best vectors from the codes, estimate every page hit, and rescore the best 256 exactly
    (every returned score is the exact MaxSim; recall and speed in bench/RESULTS.md). Memory stays
    ~26 bytes a vector, so an index larger than RAM is searched from disk; `search --exact` scans
    anyway. Pages indexed later are coded with the same codebook when a searcher sees them; run
    optimize again after large additions. Killed at any moment, the previous first stage stays.

    \b
    Example:
      sapindex optimize myindex
      sapindex optimize myindex --code-bytes 32
    """
    from sapindex.index.store import IndexWriter
    from sapindex.search import first_stage

    bars: dict[str, ProgressBar] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            bars[phase] = ProgressBar(phase, "vector", quiet=as_json)
            bars[phase].open()
        bars[phase].reach(done, total)

    try:
        with IndexWriter.open_writer(index_dir) as index:
            info = first_stage.build(index, progress=progress, pq_bytes=int(code_bytes))
    finally:
        for bar in bars.values():
            bar.close()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{index_dir}: first stage of {info['n_lists']} lists over {info['pages']} pages "
                   f"({info['vectors']} vectors, {info['bytes_per_vector']} bytes each in memory) in "
                   f"{info['seconds']:.1f} s")
