"""Queries, a BEIR-layout benchmark and an endless training stream from rendered pages.

Why: the retriever trained on rendered pages needs a held-out test whose answer is certain. Every
query here is a short phrase read off one page, of five kinds (:data:`QUERY_KINDS`):

- ``title``: 2-4 consecutive words of the page title or a section heading;
- ``table``: a column header, a row label and the value in that cell ("revenue 2023 4.2");
- ``chart-label``: a bar's category label (or the label and the bar's value);
- ``rare-word``: a word found on this page only (document frequency 1 in the corpus);
- ``body-span``: 3-5 consecutive words of one body sentence.

Query words are the page's words normalised (:func:`~sapindex.benchdata.render.normalize`). A
query is kept only if no other page of the corpus "contains" it, so each has exactly one relevant
page however many near-distractors share its words. ``match`` says what containing means: a
``phrase`` query's words appear contiguously in a page's reading order; a ``words`` query (table,
label+value: their words are not adjacent on the page) has all its words somewhere on a page.

**What is disjoint between splits** (``train`` and ``test``, for any seeds):

- page random streams, seeded by ``SeedSequence(seed, spawn_key=(split, index))``;
- text: every phrase (title, heading, sentence, caption, header, label) only chains word pairs of
  its own split, a fixed hash partition of all ordered word pairs (20 % test);
- so no two adjacent vocabulary words of one phrase on a test page are ever adjacent in a train
  phrase, and no test title, heading, sentence or multi-word label can occur in training text;
- hence, every page having a title and sentences of several words, no two pages of different
  splits have the same word sequence or the same image.

**Shared, on purpose**: single words (one vocabulary), numbers and years, "Table N:" /
"Figure N:" prefixes, units, fonts, formats and layouts.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from sapindex.benchdata.render import (
    FORMATS,
    LAYOUTS,
    SPLITS,
    VOCABULARY_SOURCE,
    Page,
    PhraseSampler,
    RenderOptions,
    Word,
    encode_png,
    page_rng,
    render_page,
    vocabulary,
)

__all__ = ["QUERY_KINDS", "GENERATOR_VERSION", "Query", "TrainingPage", "page_queries", "iter_training_pages",
           "build_benchmark", "write_parquet", "main"]

GENERATOR_VERSION = "1"
QUERY_KINDS = ("title", "table", "chart-label", "rare-word", "body-span")
CANDIDATES_PER_KIND = 3


@dataclass(frozen=True)
class Query:
    """A query, the indices of the page words it was read from, and how a page "contains" it."""

    text: str
    kind: str
    word_ids: tuple[int, ...]
    match: str  # "phrase" or "words"


class TrainingPage(NamedTuple):
    """What the trainer consumes: the page, every word with its box and role, its queries."""

    image: Image.Image
    words: list[Word]
    queries: list[Query]


def _query(page_tokens: Sequence[str], ids: Sequence[int], kind: str, match: str) -> Query | None:
    ids = tuple(i for i in ids if page_tokens[i])
    return Query(" ".join(page_tokens[i] for i in ids), kind, ids, match) if ids else None


def page_queries(page: Page, rng: np.random.Generator, rare: set[str] | frozenset = frozenset()) -> list[Query]:
    """Candidate queries of one page, up to 3 per kind, in kind order. ``rare``: the words that
    count as rare (the benchmark passes the corpus's document-frequency-1 words)."""
    tokens = page.tokens()
    out: list[Query | None] = []

    def spans(units, lo, hi, kind):
        units = [u for u in units if len(u) >= lo]
        for u in (units[int(i)] for i in rng.permutation(len(units))[:CANDIDATES_PER_KIND]):
            n = int(rng.integers(lo, min(hi, len(u)) + 1))
            start = int(rng.integers(0, len(u) - n + 1))
            out.append(_query(tokens, u[start:start + n], kind, "phrase"))

    spans(page.units("title"), 2, 4, "title")
    cells = [(t, c, r) for t in page.tables for c in range(1, len(t.headers)) if t.headers[c]
             for r in range(len(t.cells))]
    for i in rng.permutation(len(cells))[:CANDIDATES_PER_KIND]:
        t, c, r = cells[int(i)]
        out.append(_query(tokens, t.headers[c] + t.cells[r][0] + t.cells[r][c], "table", "words"))
    bars = [(ch, i) for ch in page.charts for i in range(len(ch.labels))]
    for j in rng.permutation(len(bars))[:CANDIDATES_PER_KIND]:
        chart, i = bars[int(j)]
        out.append(_query(tokens, chart.labels[i], "chart-label", "phrase"))
        if chart.values[i] >= 0:
            out.append(_query(tokens, chart.labels[i] + (chart.values[i],), "chart-label", "words"))
    out += _rare_queries(tokens, rare, rng)
    spans(page.units("body"), 3, 5, "body-span")
    return [q for q in out if q is not None]


def _rare_queries(tokens: Sequence[str], rare: set[str] | frozenset, rng: np.random.Generator) -> list[Query]:
    counts = Counter(tokens)
    singles = [i for i, t in enumerate(tokens) if t in rare and counts[t] == 1]
    return [Query(tokens[singles[int(i)]], "rare-word", (singles[int(i)],), "phrase")
            for i in rng.permutation(len(singles))[:CANDIDATES_PER_KIND]]


def iter_training_pages(seed: int, vocab_size: int | None = None, min_font_px: int = 10,
                        layouts: Sequence[str] = LAYOUTS, formats: Sequence[str] = FORMATS, *,
                        vocabulary_words: Sequence[str] | None = None, start: int = 0) -> Iterator[TrainingPage]:
    """Endless train-split pages (index ``start``, ``start`` + 1, ...) with their words and queries.

    Page ``i`` is the same page ``build_benchmark(split="train", seed=seed)`` writes as row ``i``
    (same options), so a run can resume at ``start``. Without a corpus, ``rare-word`` queries are
    the page's least common vocabulary word (largest rank) when it occurs once on the page.
    """
    words = tuple(vocabulary_words) if vocabulary_words is not None else vocabulary()
    options = RenderOptions(vocab_size, min_font_px, tuple(layouts), tuple(formats))
    sampler = PhraseSampler(words, vocab_size, "train")
    rank = {w: i for i, w in enumerate(sampler.words)}
    for index in itertools.count(start):
        rng = page_rng(seed, "train", index)
        page = render_page(rng, sampler, options)
        tokens = [t for t in page.tokens() if t in rank]
        rarest = frozenset([max(tokens, key=rank.__getitem__)]) if tokens else frozenset()
        yield TrainingPage(page.image, page.words, page_queries(page, rng, rarest))


# --------------------------------------------------------------------------- benchmark


@dataclass
class _Record:
    """A rendered page as the builder keeps it: encoded image, ground truth, candidate queries."""

    png: bytes
    words: list[Word]
    format: str
    layouts: tuple[str, ...]
    size: tuple[int, int]
    candidates: list[Query]  # without rare-word ones (they need the whole corpus)
    query_seed: int = 0
    tokens: list[str] = field(default_factory=list)


_WORKER: dict = {}


def _init_worker(words: tuple[str, ...], options: RenderOptions, split: str) -> None:
    _WORKER["sampler"] = PhraseSampler(words, options.vocab_size, split)
    _WORKER["options"] = options


def _render_record(args: tuple[int, str, int]) -> _Record:
    seed, split, index = args
    rng = page_rng(seed, split, index)
    page = render_page(rng, _WORKER["sampler"], _WORKER["options"])
    candidates = page_queries(page, rng)
    return _Record(encode_png(page.image), page.words, page.format, page.layouts, page.image.size, candidates,
                   int(rng.integers(2 ** 63)), page.tokens())


def _render_all(seed: int, split: str, n_pages: int, words: tuple[str, ...], options: RenderOptions,
                workers: int) -> list[_Record]:
    tasks = [(seed, split, i) for i in range(n_pages)]
    if workers <= 1 or n_pages < 8:
        _init_worker(words, options, split)
        return [_render_record(t) for t in tasks]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(words, options, split)) as pool:
        return list(pool.map(_render_record, tasks, chunksize=max(1, n_pages // (workers * 8))))


class _Containment:
    """Which pages contain a query: n-gram index for ``phrase`` queries, word index for ``words`` ones."""

    def __init__(self, records: list[_Record], phrases: set[tuple[str, ...]]):
        self.word_pages: dict[str, set[int]] = defaultdict(set)
        self.phrase_pages: dict[tuple[str, ...], set[int]] = defaultdict(set)
        lengths = sorted({len(p) for p in phrases})
        for p, rec in enumerate(records):
            toks = rec.tokens
            for t in toks:
                self.word_pages[t].add(p)
            for n in lengths:
                for i in range(len(toks) - n + 1):
                    gram = tuple(toks[i:i + n])
                    if gram in phrases:
                        self.phrase_pages[gram].add(p)

    def pages(self, query: Query) -> set[int]:
        toks = tuple(query.text.split())
        if query.match == "phrase":
            return self.phrase_pages.get(toks, set())
        return set.intersection(*(self.word_pages.get(t, set()) for t in toks))


def _select(records: list[_Record], n_queries: int, rng: np.random.Generator,
            words: set[str]) -> list[tuple[int, Query]]:
    """Unambiguous queries, balanced over kinds, at most ceil(n_queries / pages) per page; rare
    words are vocabulary words (not units or numbers) on exactly one page."""
    df = Counter(t for rec in records for t in set(rec.tokens))
    rare = {t for t, n in df.items() if n == 1 and t in words}
    pools: list[dict[str, list[Query]]] = []
    for rec in records:
        by_kind: dict[str, list[Query]] = defaultdict(list)
        for q in rec.candidates + _rare_queries(rec.tokens, rare, np.random.default_rng(rec.query_seed)):
            by_kind[q.kind].append(q)
        pools.append(by_kind)
    phrases = {tuple(q.text.split()) for pool in pools for qs in pool.values() for q in qs if q.match == "phrase"}
    index = _Containment(records, phrases)
    per_page = math.ceil(n_queries / len(records))
    counts = Counter({k: 0 for k in QUERY_KINDS})
    chosen: list[tuple[int, Query]] = []
    seen_texts: set[str] = set()
    order = [int(i) for i in rng.permutation(len(records))]
    for _ in range(per_page):
        for p in order:
            if len(chosen) >= n_queries:
                return chosen
            for kind in sorted(QUERY_KINDS, key=lambda k: (counts[k], QUERY_KINDS.index(k))):
                picked = None
                while pools[p][kind] and picked is None:
                    q = pools[p][kind].pop(0)
                    if q.text not in seen_texts and index.pages(q) == {p}:
                        picked = q
                if picked is not None:
                    chosen.append((p, picked))
                    seen_texts.add(picked.text)
                    counts[kind] += 1
                    break
    return chosen


def write_parquet(table, path: Path) -> None:
    """One benchmark table, written the same way by every builder (byte-identical for equal inputs)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy", write_statistics=False)


def build_benchmark(out_dir: str | Path, n_pages: int = 500, n_queries: int = 500, seed: int = 1234,
                    split: str = "test", *, vocab_size: int | None = None, min_font_px: int = 10,
                    layouts: Sequence[str] = LAYOUTS, formats: Sequence[str] = FORMATS,
                    vocabulary_words: Sequence[str] | None = None, workers: int | None = None) -> dict:
    """Write a ViDoRe v2 / BEIR benchmark under ``out_dir`` and return its manifest.

    Files: ``corpus/``, ``queries/``, ``qrels/`` as ``{split}-00000-of-00001.parquet`` each,
    ``manifest.json`` and ``vocabulary.txt``. The corpus carries, besides ``corpus-id`` and
    ``image``, the layout ground truth (``words``: text, box, role, unit per word), ``format`` and
    ``layouts``; queries carry ``kind``, ``match`` and ``word-ids`` (indices into the page's words).
    The same arguments give byte-identical files (``workers`` changes only the speed).
    """
    import pyarrow as pa

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n_pages < 1 or n_queries < 1:
        raise ValueError("n_pages and n_queries must be positive")
    words = tuple(vocabulary_words) if vocabulary_words is not None else vocabulary()
    options = RenderOptions(vocab_size, min_font_px, tuple(layouts), tuple(formats))
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(4, cores)
    records = _render_all(seed, split, n_pages, words, options, workers)
    select_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
    chosen = _select(records, n_queries, select_rng, set(words))

    out = Path(out_dir)
    name = f"{split}-00000-of-00001.parquet"
    page_ids = [f"{split}-{i:05d}" for i in range(n_pages)]
    word_type = pa.struct([("text", pa.string()), ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()),
                           ("y1", pa.int32()), ("role", pa.string()), ("unit", pa.int32())])
    corpus = pa.table({
        "corpus-id": pa.array(page_ids, pa.string()),
        "image": pa.array([{"bytes": r.png, "path": f"{pid}.png"} for r, pid in zip(records, page_ids, strict=True)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "width": pa.array([r.size[0] for r in records], pa.int32()),
        "height": pa.array([r.size[1] for r in records], pa.int32()),
        "format": pa.array([r.format for r in records], pa.string()),
        "layouts": pa.array([list(r.layouts) for r in records], pa.list_(pa.string())),
        "words": pa.array([[{"text": w.text, "x0": w.box[0], "y0": w.box[1], "x1": w.box[2], "y1": w.box[3],
                             "role": w.role, "unit": w.unit} for w in r.words] for r in records],
                          pa.list_(word_type)),
    })
    query_ids = [f"q{i:05d}" for i in range(len(chosen))]
    queries = pa.table({
        "query-id": pa.array(query_ids, pa.string()),
        "query": pa.array([q.text for _, q in chosen], pa.string()),
        "kind": pa.array([q.kind for _, q in chosen], pa.string()),
        "match": pa.array([q.match for _, q in chosen], pa.string()),
        "word-ids": pa.array([list(q.word_ids) for _, q in chosen], pa.list_(pa.int32())),
    })
    qrels = pa.table({
        "query-id": pa.array(query_ids, pa.string()),
        "corpus-id": pa.array([page_ids[p] for p, _ in chosen], pa.string()),
        "score": pa.array([1] * len(chosen), pa.int64()),
    })
    for role, table in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        write_parquet(table, out / role / name)
    vocab_used = words[:vocab_size] if vocab_size else words
    vocab_text = "".join(w + "\n" for w in words)
    (out / "vocabulary.txt").write_text(vocab_text, encoding="utf-8")
    manifest = {
        "generator": "sapindex.benchdata.synthetic",
        "generator_version": GENERATOR_VERSION,
        "layout": "beir",
        "split": split,
        "seed": seed,
        "counts": {"pages": n_pages, "queries": len(chosen), "queries_requested": n_queries,
                   "qrels": len(chosen), "words": sum(len(r.words) for r in records)},
        "render": {"vocab_size": vocab_size, "min_font_px": min_font_px, "layouts": list(layouts),
                   "formats": list(formats)},
        "vocabulary": {"source": VOCABULARY_SOURCE if vocabulary_words is None else "given by the caller",
                       "python": platform.python_version(), "size": len(words), "used": len(vocab_used),
                       "sha256": hashlib.sha256(vocab_text.encode()).hexdigest(), "file": "vocabulary.txt"},
        "layout_counts": dict(sorted(Counter(k for r in records for k in set(r.layouts)).items())),
        "format_counts": dict(sorted(Counter(r.format for r in records).items())),
        "query_kind_counts": {k: sum(q.kind == k for _, q in chosen) for k in QUERY_KINDS},
        "disjointness": ("train and test differ in page seeds (SeedSequence(seed, spawn_key=(split, index))) "
                         "and in text: phrases chain only word pairs of their own split (a fixed hash partition "
                         "of ordered word pairs, 20% test), so no multi-word title, heading, sentence, header or "
                         "label is shared; single words, numbers, fonts and layouts are shared"),
        "files": {role: f"{role}/{name}" for role in ("corpus", "queries", "qrels")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sapindex.benchdata.synthetic",
        description="Write a synthetic BEIR-layout retrieval benchmark of rendered pages (readable by "
                    "sapindex eval). Example: --out bench/ --pages 500 --queries 500 --seed 1234")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--vocab-size", type=int, default=None, help="draw words from the first N (default: all)")
    parser.add_argument("--min-font-px", type=int, default=10)
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {LAYOUTS}")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: up to 4 cores)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = build_benchmark(args.out, args.pages, args.queries, args.seed, args.split,
                                   vocab_size=args.vocab_size, min_font_px=args.min_font_px,
                                   layouts=tuple(s.strip() for s in args.layouts.split(",") if s.strip()),
                                   workers=args.workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    print(f"{args.out}: {c['pages']} pages, {c['queries']} queries ({c['queries_requested']} requested), "
          f"{manifest['query_kind_counts']}, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
