"""The real-PDF benchmark builder on small PDFs written here with matplotlib (which embeds real text)."""

import json
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from sapindex.benchdata.pdfdocs import (
    FUNCTION_WORDS,
    MAX_QUERIES_PER_PAGE,
    MIN_WORDS,
    _candidates,
    _Page,
    build_pdf_benchmark,
    main,
    page_words,
)
from sapindex.eval.datasets import load_dataset

POOL = ("river stone maple cloud amber delta falcon harbor lantern meadow orbit prism quartz saddle timber "
        "violet willow zephyr copper ember").split()


def _lines(rng: random.Random, n_lines: int = 6, per_line: int = 8) -> list[str]:
    """Random lines over a small pool (so many phrases repeat across pages), with some punctuation."""
    words = [rng.choice(POOL + ["the", "and"]) for _ in range(n_lines * per_line)]
    words = [w.capitalize() + "," if i % 11 == 5 else w for i, w in enumerate(words)]
    return [" ".join(words[i:i + per_line]) for i in range(0, len(words), per_line)]


def _write_pdf(path, pages: list[list[str]]) -> None:
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    with PdfPages(path, metadata={"CreationDate": None}) as pdf:
        for lines in pages:
            fig = Figure(figsize=(6, 8))
            for i, line in enumerate(lines):
                fig.text(0.05, 0.95 - 0.05 * i, line, fontsize=10)
            pdf.savefig(fig)


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory):
    """(directory, {(file, page): words as written}) for a.pdf (page 3 near-empty), b.pdf (page 2
    repeats a.pdf page 1), c.pdf, and a corrupt bad.pdf."""
    root = tmp_path_factory.mktemp("pdfs")
    rng = random.Random(7)
    a = [_lines(rng), _lines(rng), ["just a few words here"]]
    b = [_lines(rng), a[0]]
    c = [_lines(rng), _lines(rng)]
    text = {}
    for name, pages in (("a.pdf", a), ("b.pdf", b), ("c.pdf", c)):
        _write_pdf(root / name, pages)
        text.update({(name, i + 1): page_words("\n".join(lines)) for i, lines in enumerate(pages)})
    (root / "bad.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF\n")
    return root, text


def _build(root, out, **kw):
    files = sorted(root.glob("*.pdf"))
    return build_pdf_benchmark(files, out, **{"n_pages": 50, "n_queries": 100, "long_side": 200, **kw})


def _contains(words, phrase) -> bool:
    n = len(phrase)
    return any(words[i:i + n] == phrase for i in range(len(words) - n + 1))


def test_loads_and_every_query_has_exactly_one_page(pdfs, tmp_path, capsys):
    root, text = pdfs
    manifest = _build(root, tmp_path / "bench", sources={"a.pdf": {"package": "demo-doc", "version": "1.0"}})
    assert "skipping" in capsys.readouterr().err and manifest["skipped_pdfs"][0]["file"] == "bad.pdf"
    ds = load_dataset(tmp_path / "bench")
    assert ds.format == "beir" and ds.skipped == {}
    corpus = pq.read_table(tmp_path / "bench/corpus/test-00000-of-00001.parquet").to_pylist()
    pages = {row["corpus-id"]: (row["pdf"], row["page"]) for row in corpus}
    # near-empty a.pdf p3 and duplicate b.pdf p2 are not sampled
    assert sorted(pages.values()) == [("a.pdf", 1), ("a.pdf", 2), ("b.pdf", 1), ("c.pdf", 1), ("c.pdf", 2)]
    assert len(ds.pages) == 5 and len(ds.queries) == manifest["counts"]["queries"] > 5
    assert manifest["pdfs"][0]["source"] == {"package": "demo-doc", "version": "1.0"}
    for query in ds.queries:
        (relevant,) = ds.qrels[query.id]
        phrase = query.text.split()
        assert 2 <= len(phrase) <= 4
        holders = {key for key, words in text.items() if key in pages.values() and _contains(words, phrase)}
        assert holders == {pages[relevant]}, query.text
    per_page = Counter(page for q in ds.queries for page in ds.qrels[q.id])
    assert max(per_page.values()) <= MAX_QUERIES_PER_PAGE


def test_same_inputs_give_identical_files(pdfs, tmp_path):
    root, _ = pdfs
    _build(root, tmp_path / "one")
    _build(root, tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_vocabulary_limits_query_words(pdfs, tmp_path):
    root, _ = pdfs
    vocab = POOL[::2] + ["the", "and"]
    manifest = _build(root, tmp_path / "bench", vocabulary_words=vocab)
    queries = pq.read_table(tmp_path / "bench/queries/test-00000-of-00001.parquet").column("query").to_pylist()
    assert queries and len(queries) == manifest["counts"]["queries"]
    for q in queries:
        assert set(q.split()) <= set(vocab) and not FUNCTION_WORDS.issuperset(q.split()), q
    assert (tmp_path / "bench/vocabulary.txt").read_text().split() == vocab


def test_function_word_phrases_are_refused():
    filler = [f"w{i}" for i in range(MIN_WORDS)]  # not alphabetic: never in a query
    one = _Page(0, 1, filler + "which would have been".split())
    two = _Page(0, 2, filler + "river stone".split())
    assert _candidates([one, two], None) == [[], [(MIN_WORDS, 2)]]
    assert _candidates([one, two], frozenset({"river"})) == [[], []]


def test_cli_reports_bad_input(pdfs, tmp_path, capsys):
    root, _ = pdfs
    assert main(["--pdfs", str(root / "bad.pdf"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "skipping" in err and "error: no page" in err and "Traceback" not in err
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"c.pdf": {"package": "demo-doc", "version": "2"}}))
    assert main(["--pdfs", str(root / "c.pdf"), "--out", str(tmp_path / "y"), "--long-side", "200",
                 "--sources", str(sources)]) == 0
    assert json.loads((tmp_path / "y/manifest.json").read_text())["pdfs"][0]["source"]["version"] == "2"
