"""``sapindex search``: rank an index's pages for one query or a file of them (torch-free)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from sapindex.cli._options import device_option, json_option, qdrant_options, two_stage_options
from sapindex.cli._output import ProgressBar, warn
from sapindex.errors import EXIT_PARTIAL

QUERIES_PER_STEP = 32  # queries searched between progress-bar updates (one text-graph batch)


@click.command()
@click.argument("index_dir", type=click.Path(), required=False)
@click.argument("query", nargs=-1)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), default=None,
              help="A file of queries: one per line, or JSONL objects with \"id\" and \"query\".")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl", "trec"]), default=None,
              help="Output: text (people), jsonl (one object per query) or trec (qid Q0 doc rank score run). "
                   "Default: text for one query, jsonl with --queries.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None,
              help="Write the results to this file instead of stdout.")
@click.option("--run-name", default="sapindex", show_default=True, help="The run column of a TREC run.")
@click.option("--where", default=None, help="SQL filter on page columns, e.g. \"path LIKE '/archive/finance/%'\".")
@click.option("--path-prefix", default=None, help="Only pages of paths starting with this.")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path), default=None,
              help="Write a PNG per hit to this directory: kept patches outlined, the matched ones filled.")
@click.option("--exact", is_flag=True, help="Scan every page even where two-stage search applies (see optimize).")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle to encode the queries (default: the one the index was built with).")
@two_stage_options()
@qdrant_options(required=False)
@device_option()
@json_option("Print a JSON array of {path, page, score}, best first (one query).")
def search(index_dir, query, k, queries_file, fmt, out_file, run_name, where, path_prefix, explain_dir, exact, bundle,
           nprobe, kprime, depth, qdrant, collection, api_key_file, device, as_json):
    """Search an index: exact MaxSim over the kept vectors of every page, or of the first stage's
    best candidates on a large optimized index (see `sapindex optimize`; --exact scans anyway).

    The bundle is loaded once for all queries of a --queries file.

    \b
    Examples:
      sapindex search myindex "what was the 2023 revenue?" -k 5
      sapindex search myindex --queries questions.jsonl --format trec --out run.trec
      sapindex search myindex "travel policy" --where "path LIKE '/archive/hr/%'"
      sapindex search myindex "2023 revenue" -k 3 --explain why/
      sapindex search --qdrant http://qdrant:6333 --collection archive "2023 revenue"

    With --qdrant and --collection (a collection filled by `sapindex push`) there is no INDEX_DIR:
    every argument is the query; queries are encoded here and Qdrant ranks (its HNSW graph on a
    server, an approximation; --exact asks it to scan).

    Exit code 3: the results were written but some --explain pictures could not be drawn
    (their files gone or changed since indexing; each is named on stderr).
    """
    from sapindex.errors import SapIndexError
    from sapindex.search.runs import Query, read_queries

    if qdrant or collection:
        if not (qdrant and collection):
            raise SapIndexError("--qdrant and --collection go together")
        if where or path_prefix or explain_dir:
            raise SapIndexError("--where, --path-prefix and --explain need the index; not with --qdrant")
        query = (index_dir, *query) if index_dir else query  # no index: every argument is the query
    if bool(query) == bool(queries_file):
        raise SapIndexError("give one QUERY or --queries FILE (not both, not neither)")
    if as_json and (queries_file or fmt):
        raise SapIndexError("--json prints one query's hits; with --queries use --format jsonl")
    queries = read_queries(queries_file) if queries_file else [Query("q1", " ".join(query), "the query")]
    fmt = fmt or ("jsonl" if queries_file else "text")
    if qdrant:
        from sapindex.engines.qdrant import QdrantSearcher

        with QdrantSearcher.open(qdrant, collection, bundle, api_key_file=api_key_file, device=device,
                                 warn=warn) as engine:
            engine.check_queries([q.text for q in queries], [q.where for q in queries])
            _write(queries, lambda part: engine.search_many([q.text for q in part], k, exact=exact),
                   fmt, out_file, run_name, as_json, bool(queries_file))
        return
    from sapindex.search import Searcher

    if not index_dir:
        raise SapIndexError("give INDEX_DIR, or --qdrant and --collection")
    failed = 0
    with Searcher.open(index_dir, bundle, device, nprobe=nprobe, kprime=kprime, depth=depth) as searcher:
        searcher.check_queries([q.text for q in queries], [q.where for q in queries])
        if searcher.two_stage(exact):  # an approximation: say so where it is used
            click.echo(f"two-stage search: pages estimated from the first stage's compressed codes, the "
                       f"{searcher.depth} best rescored exactly (recall in bench/RESULTS.md); --exact scans every page",
                       err=True)
        with contextlib.ExitStack() as closing:
            scan = None
            if searcher.holding() != "resident" and not searcher.two_stage(exact):  # a scan from disk: say how far
                scan = closing.enter_context(ProgressBar("scanning", "vector", quiet=as_json))

            def run(part):
                nonlocal failed
                results = searcher.search_many([q.text for q in part], k, where=where, path_prefix=path_prefix,
                                               exact=exact, progress=scan.reach if scan else None)
                if explain_dir:
                    failed += _explain(searcher, explain_dir, part, results)
                return results

            _write(queries, run, fmt, out_file, run_name, as_json, bool(queries_file))
    if failed:
        sys.exit(EXIT_PARTIAL)


def _write(queries, run, fmt: str, out_file: Path | None, run_name: str, as_json: bool, many: bool) -> None:
    """Search ``queries`` a step at a time with ``run(part) -> hits per query`` and write the results."""
    from sapindex.search.runs import write_run

    with contextlib.ExitStack() as closing:
        out = closing.enter_context(open(out_file, "w", encoding="utf-8")) if out_file else sys.stdout
        with ProgressBar("searching", "query", quiet=not many) as bar:
            for i in range(0, len(queries), QUERIES_PER_STEP):
                part = queries[i:i + QUERIES_PER_STEP]
                results = run(part)
                if as_json:
                    click.echo(json.dumps([h._asdict() for h in results[0]], indent=2))
                elif fmt == "text" and not many:
                    for rank, h in enumerate(results[0], start=1):
                        out.write(f"{rank:>3}. {h.score:9.4f}  {h.path}  page {h.page}\n")
                else:
                    write_run(out, part, results, fmt, run_name)
                bar.reach(i + len(part), len(queries))


def _explain(searcher, directory: Path, queries, results) -> int:
    """``DIR/<query id>-<rank>.png`` for every hit; return how many could not be drawn."""
    from sapindex.errors import SapIndexError
    from sapindex.search import explain

    directory.mkdir(parents=True, exist_ok=True)
    failed = 0
    for q, hits in zip(queries, results, strict=True):
        vectors = searcher.encode([q.text], [q.where])[0]
        for rank, hit in enumerate(hits, start=1):
            ex = explain.explain_encoded(searcher.index, q.text, vectors, hit.path, hit.page)
            try:
                explain.picture(ex).save(directory / f"{q.id}-{rank}.png")
            except SapIndexError as exc:
                warn(f"no picture for {q.id} rank {rank}: {exc}")
                failed += 1
    return failed
