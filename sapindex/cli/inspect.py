"""``sapindex inspect``: a bundle (every file's sha256 verified) or an index (pages, vectors, failures)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sapindex.cli._options import json_option
from sapindex.cli._output import agreement, kv_table, quantized, size

INDEX_KEYS = ("path", "bundle_fingerprint", "dim", "vector_dtype", "mode", "method", "files", "pages", "vectors",
              "vectors_before_pruning", "failures")
BUNDLE_KEYS = ("path", "family", "attention", "n_layers", "window", "window_source", "dim", "dtype", "bytes",
               "format_version", "fingerprint", "replaces", "source_fingerprint")


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@json_option()
def inspect(target, as_json):
    """Describe a bundle (verifying every file's sha256) or an index (pages, vectors, failures).

    \b
    Example:
      sapindex inspect colqwen2.sap
      sapindex inspect myindex
    """
    from sapindex.artifacts import describe

    kind, summary = describe(target)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif kind == "index":
        kv_table([*((key, summary[key]) for key in INDEX_KEYS), ("bytes_on_disk", size(summary["bytes_on_disk"])),
                  ("version", summary["version"]),
                  ("sap_scores", _scores(summary)),
                  ("first_stage", _first_stage(summary["first_stage"]))], width=23)
        for failure in summary["failure_list"]:
            click.echo(f"  {failure}")
    else:
        v = summary["validation"]
        checked = ", ".join(filter(None, (f"max |diff| embeddings {v['max_abs_diff_embeddings']:.1e} over "
                                          f"{v['pages']} pages", agreement(v))))
        rows = [*((key, summary[key]) for key in BUNDLE_KEYS), ("validation", checked)]
        if summary["quantization"]:
            rows.append(("quantization", quantized(summary["quantization"])))
        kv_table(rows, width=19)


def _scores(summary: dict) -> str:
    """Whether ``prune`` can lower this index's keep ratio, and why not."""
    from sapindex.compression import PRUNABLE_METHODS

    if not summary["sap_scores"]:
        return "not stored (an older index: prune refuses it)"
    if summary["method"] and summary["method"] not in PRUNABLE_METHODS:
        return f"stored (prune refuses {summary['method']}: its vectors are not SAP's ranked tokens)"
    return "stored (prune can lower the keep ratio)"


def _first_stage(info: dict | None) -> str:
    from sapindex.search.searcher import TWO_STAGE_MIN_PAGES

    if info is None:
        return f"none: exact search (sapindex optimize builds one; used from {TWO_STAGE_MIN_PAGES} pages)"
    if info.get("outdated"):
        return "of an older format, ignored: exact search until sapindex optimize builds a new one"
    return (f"{info['kind']}, {info['n_lists']} lists, {info['bytes_per_vector']} bytes a vector in memory, over "
            f"{info['pages']} pages ({info['vectors']} vectors), built {info['built']} "
            f"(two-stage search from {TWO_STAGE_MIN_PAGES} pages)")
