"""The demo's example pages: a few held-out rendered pages and one query read off each.

Why: ``sapindex demo`` must show retrieval on a fresh machine with nothing to download, so a
handful of pages ships as package data (``sapindex/assets/examples``). They come from the
synthetic test split with their own seed (never the benchmark's pages) at the micro model's
benchmark settings, so the shipped model has never seen them.

    python -m sapindex.benchdata.examples --out sapindex/assets/examples
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

EXAMPLE_SEED = 4242
PREFERRED_KINDS = ("title", "table", "chart-label", "body-span", "rare-word")


def write_examples(out_dir: str | Path, n_pages: int = 8, vocab_size: int = 1000, min_font_px: int = 22) -> list[dict]:
    """Write ``page-NN.png`` and ``queries.json`` (one query per page, of rotating kinds)."""
    import pyarrow.parquet as pq

    from sapindex.benchdata.synthetic import build_benchmark

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        build_benchmark(tmp, n_pages, 4 * n_pages, seed=EXAMPLE_SEED, vocab_size=vocab_size,
                        min_font_px=min_font_px, workers=1)
        corpus = pq.read_table(Path(tmp) / "corpus" / "test-00000-of-00001.parquet").to_pylist()
        queries = pq.read_table(Path(tmp) / "queries" / "test-00000-of-00001.parquet").to_pylist()
        qrels = pq.read_table(Path(tmp) / "qrels" / "test-00000-of-00001.parquet").to_pylist()
    page_of = {r["query-id"]: r["corpus-id"] for r in qrels}
    names = {}
    for i, row in enumerate(corpus):
        names[row["corpus-id"]] = f"page-{i + 1:02d}.png"
        Image.open(io.BytesIO(row["image"]["bytes"])).save(out / names[row["corpus-id"]], optimize=True)
    examples = []
    for i, row in enumerate(corpus):  # kinds rotate over the pages, so the demo shows each of them
        mine = [q for q in queries if page_of[q["query-id"]] == row["corpus-id"]]
        order = PREFERRED_KINDS[i % len(PREFERRED_KINDS):] + PREFERRED_KINDS[:i % len(PREFERRED_KINDS)]
        if mine:
            q = min(mine, key=lambda q: order.index(q["kind"]))
            examples.append({"query": q["query"], "page": names[row["corpus-id"]], "kind": q["kind"]})
    (out / "queries.json").write_text(json.dumps(examples, indent=1) + "\n")
    return examples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sapindex.benchdata.examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--pages", type=int, default=8)
    args = parser.parse_args(argv)
    for e in write_examples(args.out, args.pages):
        print(f"{e['page']}: {e['query']!r} ({e['kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
