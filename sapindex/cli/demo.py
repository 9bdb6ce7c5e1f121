"""``sapindex demo``: the quickstart, the built-in micro model on its example pages (torch-free), or
with ``--pipeline`` every step from checkpoint to search on a tiny random model (torch side)."""

from __future__ import annotations

from pathlib import Path

import click

from sapindex.cli._options import keep_ratio_option
from sapindex.cli._output import ProgressBar
from sapindex.testing.tiny import TINY_FAMILIES


@click.command()
@click.option("--out", "out_dir", default="sapindex-demo", show_default=True, type=click.Path(path_type=Path))
@keep_ratio_option()
@click.option("--pipeline", is_flag=True,
              help="Instead: calibrate, export, index and search a tiny random model (needs the export extra).")
@click.option("--family", default="colqwen2", show_default=True, type=click.Choice(list(TINY_FAMILIES)),
              help="With --pipeline: the tiny model's family.")
def demo(out_dir, keep_ratio, pipeline, family):
    """Index the bundled example pages with the built-in micro model and answer example queries.

    Torch-free. Writes OUT/index and OUT/kept-patches.png (over the page that answered the first
    query: the tokens the stored vectors sit at outlined, and the cells merged into them shown).
    With --pipeline, runs calibrate -> export -> index -> search on a tiny random-weight model
    instead (mechanics only, no retrieval quality).

    \b
    Example:
      sapindex demo --out demo/
    """
    if pipeline:
        _pipeline_demo(out_dir, family)
        return
    from sapindex.index.indexer import run_index
    from sapindex.runtime.defaults import default_bundle_path, example_pages, example_queries
    from sapindex.runtime.options import IndexOptions

    summary = run_index(default_bundle_path(), [str(p) for p in example_pages()], out_dir / "index",
                        IndexOptions(keep_ratio=keep_ratio))
    click.echo(f"index      {out_dir / 'index'}: {summary.index_pages} example pages, "
               f"{summary.vectors_kept} vectors stored for {summary.vectors_before} visual tokens "
               f"(keep ratio {keep_ratio})")
    examples = example_queries()
    from sapindex.search import Searcher

    with Searcher.open(out_dir / "index") as searcher:
        results = searcher.search_many([e["query"] for e in examples], k=3)
        found = 0
        for example, hits in zip(examples, results, strict=True):
            right = bool(hits) and Path(hits[0].path).name == example["page"]
            found += right
            click.echo(f"query      {example['query']!r}  (read off {example['page']})")
            for rank, hit in enumerate(hits, start=1):
                mark = "<- source page" if Path(hit.path).name == example["page"] else ""
                click.echo(f"  {rank}. {hit.score:8.3f}  {Path(hit.path).name}  {mark}")
        click.echo(f"top-1      {found} of {len(examples)} queries found the page they were read from")
        top = results[0][0]
        row = searcher.index.get(top.path, top.page)
    _draw_kept(out_dir, top.path, row)
    click.echo(f"next       sapindex serve {out_dir / 'index'}   then open http://127.0.0.1:8000/ (the search page)")


def _draw_kept(out_dir: Path, page_path: str, row: dict) -> None:
    """OUT/kept-patches.png: where ``row``'s vectors sit (and, merged, which cells they cover) over its page."""
    from PIL import Image

    from sapindex.search.overlay import global_cells, write_overlay

    grid, global_grid = (row["grid_rows"], row["grid_cols"]), (row["global_rows"], row["global_cols"])
    with Image.open(page_path) as page:
        picture = write_overlay(out_dir / "kept-patches.png", page, grid, row["positions"], global_grid,
                                cover=row.get("cover"))
    merged = "" if row.get("cover") is None else ", the cells merged into them shown, the rest dimmed"
    click.echo(f"picture    {picture}: {row['method']} vectors of {Path(page_path).name} at the outlined "
               f"tokens{merged}")
    extra = global_cells(grid, row["positions"], global_grid)
    if extra:
        click.echo(f"global     {len(extra)} kept global-tile tokens (not drawn), {global_grid[0]}x{global_grid[1]} "
                   f"cells: {', '.join(f'({r},{c})' for r, c in extra)}")


def _pipeline_demo(out_dir: Path, family: str) -> None:
    from sapindex.calibration.calibrate import summary_text
    from sapindex.testing.pipeline import run_pipeline

    bar = ProgressBar("calibrating", "pair")
    try:
        for stage, run in run_pipeline(out_dir, family, progress=bar.reach):
            if stage == "model":
                click.echo(f"tiny model {run.model_dir}\npairs      {run.pairs}")
                bar.open()
            elif stage == "calibrated":
                bar.close()
                click.echo(summary_text(run.record))
                click.echo(f"wrote      {run.calibration} and {run.curve}")
            elif stage == "exported":
                click.echo(f"bundle     {run.bundle} (validated: max |diff| "
                           f"{run.manifest['validation']['max_abs_diff_embeddings']:.1e})")
            elif stage == "indexed":
                s = run.summary
                click.echo(f"index      {run.index_dir}: {s.pages_indexed} pages indexed, {s.pages_skipped} present, "
                           f"{s.vectors_kept} of {s.vectors_before} vectors kept")
            elif stage == "searched":
                click.echo(f"search     {run.query!r}:")
                for rank, hit in enumerate(run.hits, start=1):
                    click.echo(f"  {rank}. {hit.score:8.4f}  {hit.path}  page {hit.page}")
    finally:
        bar.close()
