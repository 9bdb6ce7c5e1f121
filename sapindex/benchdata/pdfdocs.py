"""A page-retrieval benchmark from real PDF manuals, in the BEIR layout of :mod:`.synthetic`.

Why: the synthetic benchmark's pages come from the same renderer the model is trained on, so it
cannot show whether the model reads real documents. This builder takes typeset pages nobody drew
for us (e.g. the PDF manuals of Debian ``*-doc`` packages, fetched by ``bench/debian_docs.py``)
and keeps the synthetic set's certainty about the answer: a query is 2-4 consecutive words of one
page's reading order (its text layer, as PDFium extracts it) that no other corpus page contains.

Words are normalised like the synthetic queries (:func:`~sapindex.benchdata.render.normalize`,
plus quotes and NFKC, so ligatures read as letters). Containment is a contiguous phrase match over
every corpus page's normalised word sequence. Query words are alphabetic; given a vocabulary (the
word list of the model to evaluate), every query word is in it. Phrases made only of very common
function words ("can be", "that the") are never queries. Near-empty pages (< ``MIN_WORDS`` words:
covers, blank and figure-only pages) and pages whose word sequence repeats an earlier page's are
not sampled.

Torch-free (numpy, PIL, pypdfium2, pyarrow only), like the indexer runtime: it builds on the
machines that run ``sapindex eval``. The same PDFs and arguments (and the same PDFium build, which
draws the pixels) give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium

from sapindex.benchdata.render import encode_png, normalize
from sapindex.benchdata.synthetic import write_parquet

__all__ = ["GENERATOR_VERSION", "MIN_WORDS", "FUNCTION_WORDS", "page_words", "build_pdf_benchmark", "main"]

GENERATOR_VERSION = "1"
MIN_WORDS = 30
PHRASE_LENGTHS = (2, 3, 4)
MAX_QUERIES_PER_PAGE = 2
FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for from with into onto about as and or but nor not no so if then than that "
    "this these those there here it its is are was were be been being am do does did has have had can could "
    "may might must shall should will would which who whom whose what when where why how all any each some "
    "such other only also very more most one two you your we our they their them he his she her".split())
_QUOTES = "\"'`\u2018\u2019\u201c\u201d"
_SPLIT = "test"


def page_words(text: str) -> list[str]:
    """A page's text as normalised words in reading order; tokens that are only punctuation vanish."""
    words = (normalize(t).strip(_QUOTES) for t in unicodedata.normalize("NFKC", text).split())
    return [w for w in words if w]


@dataclass
class _Pdf:
    path: Path
    sha256: str
    n_pages: int
    eligible: list[tuple[int, list[str]]]  # (1-based page number, words) of samplable pages


@dataclass
class _Page:
    pdf: int  # index into the read PDFs
    number: int  # 1-based
    words: list[str]


def _read_pdf(path: Path) -> tuple[int, list[tuple[int, list[str]]]]:
    doc = pdfium.PdfDocument(path)
    try:
        pages = []
        for i in range(len(doc)):
            page = doc[i]
            textpage = page.get_textpage()
            pages.append((i + 1, page_words(textpage.get_text_range())))
            textpage.close()
            page.close()
        return len(doc), pages
    finally:
        doc.close()


def _read_pdfs(paths: Sequence[Path], min_words: int) -> tuple[list[_Pdf], list[dict]]:
    """Readable PDFs (sorted by file name) with their samplable pages, and the skipped ones with why.

    A page is samplable with at least ``min_words`` words and a word sequence no earlier page (in
    file-name, then page order) has.
    """
    paths = sorted(paths, key=lambda p: (p.name, str(p)))
    stems = [p.stem for p in paths]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"PDF file names must be unique (they name the pages): {', '.join(clashes)}")
    docs: list[_Pdf] = []
    skipped: list[dict] = []
    by_sha: dict[str, str] = {}
    seen: set[tuple[str, ...]] = set()
    for path in paths:
        try:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            reason = f"same content as {by_sha[sha]}" if sha in by_sha else None
            if reason is None:
                n_pages, pages = _read_pdf(path)
        except (OSError, pdfium.PdfiumError) as exc:
            reason = f"cannot read: {exc}"
        if reason is not None:
            print(f"skipping {path}: {reason}", file=sys.stderr)
            skipped.append({"file": path.name, "reason": reason})
            continue
        by_sha[sha] = path.name
        eligible = []
        for number, words in pages:
            key = tuple(words)
            if len(words) >= min_words and key not in seen:
                seen.add(key)
                eligible.append((number, words))
        docs.append(_Pdf(path, sha, n_pages, eligible))
    return docs, skipped


def _sample(docs: list[_Pdf], n_pages: int, rng: np.random.Generator) -> list[_Page]:
    """Up to ``n_pages`` pages, an equal share of each PDF (all of a short one), in document order."""
    queues = [[_Page(d, *doc.eligible[int(i)]) for i in rng.permutation(len(doc.eligible))]
              for d, doc in enumerate(docs)]
    chosen: list[_Page] = []
    while len(chosen) < n_pages and any(queues):
        for queue in queues:
            if queue and len(chosen) < n_pages:
                chosen.append(queue.pop())
    return sorted(chosen, key=lambda p: (p.pdf, p.number))


def _candidates(pages: list[_Page], vocabulary: frozenset[str] | None) -> list[list[tuple[int, int]]]:
    """Per page, the (start, length) of each phrase of acceptable words that no other page contains.

    Only phrases of acceptable words are indexed: a page containing such a phrase has the same
    words, so it is indexed too, and the owner test is exact.
    """
    def ok(word: str) -> bool:
        return word.isalpha() and (vocabulary is None or word in vocabulary)

    owner: dict[tuple[str, ...], int] = {}  # phrase -> the one page holding it, -1 if several
    spans: list[list[tuple[tuple[str, ...], tuple[int, int]]]] = []  # per page: (phrase, (start, length))
    for p, page in enumerate(pages):
        good = [ok(w) for w in page.words]
        mine: dict[tuple[str, ...], tuple[int, int]] = {}  # first occurrence on this page
        for n in PHRASE_LENGTHS:
            for start in range(len(page.words) - n + 1):
                phrase = tuple(page.words[start:start + n])
                if all(good[start:start + n]) and not FUNCTION_WORDS.issuperset(phrase):
                    mine.setdefault(phrase, (start, n))
        for phrase in mine:
            owner[phrase] = p if owner.get(phrase, p) == p else -1
        spans.append(list(mine.items()))
    return [[span for phrase, span in page_spans if owner[phrase] == p] for p, page_spans in enumerate(spans)]


def _select(pages: list[_Page], n_queries: int, rng: np.random.Generator,
            vocabulary: frozenset[str] | None) -> list[tuple[int, int, int]]:
    """(page, start, length) of up to ``n_queries`` queries: pages in a seeded order, one query per
    page per round, at most ``MAX_QUERIES_PER_PAGE`` rounds; a page's queries do not overlap. The
    length is drawn from ``PHRASE_LENGTHS`` (the nearest available one if the page has none)."""
    candidates = _candidates(pages, vocabulary)
    order = [int(i) for i in rng.permutation(len(pages))]
    taken: dict[int, list[tuple[int, int]]] = {}
    chosen: list[tuple[int, int, int]] = []
    for _ in range(MAX_QUERIES_PER_PAGE):
        for p in order:
            if len(chosen) == n_queries:
                return chosen
            free = [(s, n) for s, n in candidates[p]
                    if all(s + n <= s2 or s2 + n2 <= s for s2, n2 in taken.get(p, ()))]
            if not free:
                continue
            want = int(rng.choice(PHRASE_LENGTHS))
            length = min({n for _, n in free}, key=lambda n: (abs(n - want), n))
            pool = [c for c in free if c[1] == length]
            start, n = pool[int(rng.integers(len(pool)))]
            taken.setdefault(p, []).append((start, n))
            chosen.append((p, start, n))
    return chosen


def _render(docs: list[_Pdf], pages: list[_Page], long_side: int) -> list[tuple[bytes, int, int]]:
    """(PNG, width, height) per page, scaled so that its long side is ``long_side`` px."""
    out = []
    for d, doc in enumerate(docs):
        numbers = [p.number for p in pages if p.pdf == d]
        if not numbers:
            continue
        pdf = pdfium.PdfDocument(doc.path)
        try:
            for number in numbers:
                page = pdf[number - 1]
                image = page.render(scale=long_side / max(page.get_size())).to_pil().convert("RGB")
                page.close()
                out.append((encode_png(image), *image.size))
        finally:
            pdf.close()
    return out  # pages are sorted by PDF, so this is their order


def build_pdf_benchmark(pdfs: Sequence[str | Path], out_dir: str | Path, n_pages: int = 500, n_queries: int = 500,
                        seed: int = 1234, long_side: int = 1000, vocabulary_words: Sequence[str] | None = None,
                        sources: dict | None = None) -> dict:
    """Write a BEIR-layout benchmark of real PDF pages under ``out_dir`` and return its manifest.

    Files, as :func:`~sapindex.benchdata.synthetic.build_benchmark` writes them: ``corpus/``,
    ``queries/``, ``qrels/`` (``test-00000-of-00001.parquet`` each) and ``manifest.json``, plus
    ``vocabulary.txt`` when a vocabulary is given. The corpus has ``corpus-id``, ``image`` (PNG),
    ``width``, ``height``, ``pdf`` (file name), ``page`` (1-based) and ``words`` (the normalised
    words phrases are matched against); queries have ``query``, ``match`` ("phrase") and
    ``word-ids`` (indices into the page's ``words``). ``sources``: what each PDF came from (e.g.
    ``{"R-intro.pdf": {"package": "r-doc-pdf", "version": "4.2.2..."}}``), copied to the manifest.
    Unreadable PDFs (corrupt, encrypted) are skipped with a message on stderr; fewer pages or
    queries than asked are written when no more qualify (the manifest says how many).
    """
    import pyarrow as pa

    if n_pages < 1 or n_queries < 1 or long_side < 1:
        raise ValueError("n_pages, n_queries and long_side must be positive")
    vocabulary = frozenset(vocabulary_words) if vocabulary_words is not None else None
    # key order of an entry is not content: sorted, so that equal sources write equal manifests
    sources = {name: dict(sorted(s.items())) if isinstance(s, dict) else s for name, s in (sources or {}).items()}
    docs, skipped = _read_pdfs([Path(p) for p in pdfs], MIN_WORDS)
    rng = np.random.default_rng(seed)
    pages = _sample(docs, n_pages, rng)
    if not pages:
        raise ValueError(f"no page with at least {MIN_WORDS} words in {len(docs)} readable PDF(s)")
    chosen = _select(pages, n_queries, rng, vocabulary)
    if not chosen:
        raise ValueError("no phrase occurs on exactly one page: no query can be formed")
    images = _render(docs, pages, long_side)

    page_ids = [f"{docs[p.pdf].path.stem}-p{p.number:04d}" for p in pages]
    corpus = pa.table({
        "corpus-id": pa.array(page_ids, pa.string()),
        "image": pa.array([{"bytes": png, "path": f"{pid}.png"}
                           for (png, _, _), pid in zip(images, page_ids, strict=True)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "width": pa.array([w for _, w, _ in images], pa.int32()),
        "height": pa.array([h for _, _, h in images], pa.int32()),
        "pdf": pa.array([docs[p.pdf].path.name for p in pages], pa.string()),
        "page": pa.array([p.number for p in pages], pa.int32()),
        "words": pa.array([p.words for p in pages], pa.list_(pa.string())),
    })
    query_ids = [f"q{i:05d}" for i in range(len(chosen))]
    queries = pa.table({
        "query-id": pa.array(query_ids, pa.string()),
        "query": pa.array([" ".join(pages[p].words[s:s + n]) for p, s, n in chosen], pa.string()),
        "match": pa.array(["phrase"] * len(chosen), pa.string()),
        "word-ids": pa.array([list(range(s, s + n)) for _, s, n in chosen], pa.list_(pa.int32())),
    })
    qrels = pa.table({
        "query-id": pa.array(query_ids, pa.string()),
        "corpus-id": pa.array([page_ids[p] for p, _, _ in chosen], pa.string()),
        "score": pa.array([1] * len(chosen), pa.int64()),
    })
    out = Path(out_dir)
    name = f"{_SPLIT}-00000-of-00001.parquet"
    for role, table in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        write_parquet(table, out / role / name)
    vocab_entry = None
    if vocabulary_words is not None:
        vocab_text = "".join(w + "\n" for w in vocabulary_words)
        (out / "vocabulary.txt").write_text(vocab_text, encoding="utf-8")
        vocab_entry = {"size": len(vocabulary), "sha256": hashlib.sha256(vocab_text.encode()).hexdigest(),
                       "file": "vocabulary.txt"}

    corpus_pdfs = [docs[p.pdf].path.name for p in pages]
    query_pdfs = [docs[pages[p].pdf].path.name for p, _, _ in chosen]
    manifest = {
        "generator": "sapindex.benchdata.pdfdocs",
        "generator_version": GENERATOR_VERSION,
        "layout": "beir",
        "split": _SPLIT,
        "seed": seed,
        "parameters": {"n_pages": n_pages, "n_queries": n_queries, "long_side": long_side, "min_words": MIN_WORDS,
                       "phrase_lengths": list(PHRASE_LENGTHS), "max_queries_per_page": MAX_QUERIES_PER_PAGE},
        "renderer": {"pypdfium2": str(pdfium.PYPDFIUM_INFO), "pdfium": str(pdfium.PDFIUM_INFO)},
        "counts": {"pdfs": len(docs), "pdfs_skipped": len(skipped),
                   "eligible_pages": sum(len(d.eligible) for d in docs),
                   "pages": len(pages), "pages_requested": n_pages, "queries": len(chosen),
                   "queries_requested": n_queries, "qrels": len(chosen)},
        "pdfs": [{"file": d.path.name, "sha256": d.sha256, "pages": d.n_pages, "eligible_pages": len(d.eligible),
                  "corpus_pages": corpus_pdfs.count(d.path.name), "queries": query_pdfs.count(d.path.name),
                  "source": sources.get(d.path.name)} for d in docs],
        "skipped_pdfs": [dict(s, source=sources.get(s["file"])) for s in skipped],
        "query_length_counts": {str(n): k for n, k in sorted(Counter(n for _, _, n in chosen).items())},
        "vocabulary": vocab_entry,
        "files": {role: f"{role}/{name}" for role in ("corpus", "queries", "qrels")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _pdf_paths(items: Sequence[str]) -> list[Path]:
    """Files as given, directories searched recursively for ``*.pdf``."""
    paths: list[Path] = []
    for item in map(Path, items):
        paths += sorted(p for p in item.rglob("*") if p.suffix.lower() == ".pdf" and p.is_file()) \
            if item.is_dir() else [item]
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sapindex.benchdata.pdfdocs",
        description="Write a BEIR-layout page-retrieval benchmark from real PDFs (readable by sapindex eval). "
                    "Example: --pdfs manuals/ --out bench-data/pdf-test --vocabulary vocab.txt")
    parser.add_argument("--pdfs", nargs="+", required=True, help="PDF files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--long-side", type=int, default=1000, help="rendered page's long side in px")
    parser.add_argument("--vocabulary", help="file of allowed query words, one per line")
    parser.add_argument("--sources", help="JSON file: {pdf file name: {package, version, ...}}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        words = None
        if args.vocabulary:
            words = [w.strip() for w in Path(args.vocabulary).read_text(encoding="utf-8").splitlines() if w.strip()]
        sources = json.loads(Path(args.sources).read_text(encoding="utf-8")) if args.sources else None
        manifest = build_pdf_benchmark(_pdf_paths(args.pdfs), args.out, args.pages, args.queries, args.seed,
                                       args.long_side, words, sources)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    print(f"{args.out}: {c['pages']} pages ({c['pages_requested']} requested) from {c['pdfs']} PDFs "
          f"({c['pdfs_skipped']} skipped), {c['queries']} queries ({c['queries_requested']} requested), "
          f"lengths {manifest['query_length_counts']}, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
