"""The page renderer and the synthetic benchmark: exact ground truth, unambiguous queries, disjoint splits."""

import hashlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sapindex.benchdata.render import FORMATS, LAYOUTS, ROLES, is_test_pair, normalize, vocabulary
from sapindex.benchdata.synthetic import QUERY_KINDS, build_benchmark, iter_training_pages, main
from sapindex.eval.datasets import load_dataset

SEED = 11
N_PAGES = 60


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-test")
    return out, build_benchmark(out, n_pages=N_PAGES, n_queries=N_PAGES, seed=SEED, split="test", workers=1)


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-train")
    return out, build_benchmark(out, n_pages=N_PAGES, n_queries=20, seed=SEED, split="train", workers=1)


def _rows(root: Path, role: str) -> list[dict]:
    (file,) = sorted((root / role).glob("*.parquet"))
    return pq.read_table(file).to_pylist()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tokens(page: dict) -> list[str]:
    return [normalize(w["text"]) for w in page["words"]]


def _contains_phrase(tokens: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(tokens[i:i + n] == phrase for i in range(len(tokens) - n + 1))


def test_same_seed_same_bytes_other_seed_other_pages(tmp_path):
    a = build_benchmark(tmp_path / "a", n_pages=10, n_queries=10, seed=3, workers=1)
    b = build_benchmark(tmp_path / "b", n_pages=10, n_queries=10, seed=3, workers=2)  # workers change speed only
    assert a == b
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(files_a) == {"corpus/test-00000-of-00001.parquet", "queries/test-00000-of-00001.parquet",
                            "qrels/test-00000-of-00001.parquet", "manifest.json", "vocabulary.txt"}
    assert files_a == files_b
    build_benchmark(tmp_path / "c", n_pages=10, n_queries=10, seed=4, workers=1)
    assert _files(tmp_path / "c")["corpus/test-00000-of-00001.parquet"] != files_a["corpus/test-00000-of-00001.parquet"]
    images = lambda root: {hashlib.sha256(p["image"]["bytes"]).hexdigest() for p in _rows(root, "corpus")}  # noqa: E731
    assert not images(tmp_path / "a") & images(tmp_path / "c")


def test_boxes_are_inside_the_image_and_tight_around_ink(test_split):
    root, _ = test_split
    roles = Counter()
    for page in _rows(root, "corpus"):
        img = Image.open(io.BytesIO(page["image"]["bytes"]))
        assert img.size == (page["width"], page["height"]) and max(img.size) <= 1000
        grey = np.asarray(img.convert("L"))
        assert page["words"], page["corpus-id"]
        for w in page["words"]:
            x0, y0, x1, y1 = w["x0"], w["y0"], w["x1"], w["y1"]
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height, (page["corpus-id"], w)
            ink = grey[y0:y1, x0:x1] < 128  # every text colour is dark, every background light
            assert ink.any(), (page["corpus-id"], w)
            ys, xs = np.nonzero(ink)
            slack = max(xs.min(), ys.min(), x1 - x0 - 1 - xs.max(), y1 - y0 - 1 - ys.max())
            assert slack <= 3, (page["corpus-id"], w, slack)  # antialiased edges only: the box is the ink's
            roles[w["role"]] += 1
    assert set(roles) == set(ROLES)


def test_each_query_is_read_off_its_page_and_no_other(test_split):
    root, manifest = test_split
    pages = {p["corpus-id"]: _tokens(p) for p in _rows(root, "corpus")}
    relevant = {r["query-id"]: r["corpus-id"] for r in _rows(root, "qrels")}
    queries = _rows(root, "queries")
    assert len(queries) == manifest["counts"]["queries"] == N_PAGES
    assert set(q["kind"] for q in queries) == set(QUERY_KINDS)
    for q in queries:
        words = q["query"].split()
        own = pages[relevant[q["query-id"]]]
        assert [own[i] for i in q["word-ids"]] == words, q
        if q["match"] == "phrase":
            assert q["word-ids"] == list(range(q["word-ids"][0], q["word-ids"][0] + len(words))), q
            others = [pid for pid, toks in pages.items() if _contains_phrase(toks, words)]
        else:
            others = [pid for pid, toks in pages.items() if set(words) <= set(toks)]
        assert others == [relevant[q["query-id"]]], q
        if q["kind"] == "rare-word":
            assert sum(q["query"] in toks for toks in pages.values()) == 1


def test_loads_as_beir_with_one_relevant_page_per_query(test_split):
    root, manifest = test_split
    ds = load_dataset(root)
    assert ds.format == "beir" and ds.skipped == {}
    assert len(ds.pages) == N_PAGES and len(ds.queries) == manifest["counts"]["queries"]
    assert all(len(ds.qrels[q.id]) == 1 for q in ds.queries)
    assert json.loads((root / "manifest.json").read_text())["vocabulary"]["size"] == len(vocabulary())


def test_train_and_test_never_share_pages_or_phrases(test_split, train_split):
    splits = {name: _rows(root, "corpus") for name, (root, _) in (("test", test_split), ("train", train_split))}
    digests = {name: {hashlib.sha256(p["image"]["bytes"]).hexdigest() for p in rows} for name, rows in splits.items()}
    assert len(digests["test"]) == len(digests["train"]) == N_PAGES
    assert not digests["test"] & digests["train"]
    sequences = {name: {tuple(_tokens(p)) for p in rows} for name, rows in splits.items()}
    assert not sequences["test"] & sequences["train"]
    vocab = set(vocabulary())
    for name, rows in splits.items():  # the mechanism: adjacent words of one phrase are a pair of the split
        pairs = [(normalize(a["text"]), normalize(b["text"])) for p in rows
                 for a, b in zip(p["words"], p["words"][1:], strict=False) if a["unit"] == b["unit"]]
        pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab]
        assert len(pairs) > 1000
        assert all(is_test_pair(a, b) == (name == "test") for a, b in pairs)


def test_every_layout_and_format_appears_in_60_pages(test_split):
    root, manifest = test_split
    rows = _rows(root, "corpus")
    assert {k for p in rows for k in p["layouts"]} == set(LAYOUTS) == set(manifest["layout_counts"])
    assert {p["format"] for p in rows} == set(FORMATS) == set(manifest["format_counts"])
    sizes = {(p["width"] > p["height"], round(p["width"] / p["height"], 1)) for p in rows}
    assert len(sizes) >= 4  # portrait, landscape, 16:9 and narrow receipts


def test_training_stream_matches_the_train_split_and_obeys_the_knobs(train_split):
    root, _ = train_split
    first = next(iter_training_pages(SEED))
    row0 = _rows(root, "corpus")[0]
    assert [(w.text, list(w.box), w.role) for w in first.words] == \
        [(w["text"], [w["x0"], w["y0"], w["x1"], w["y1"]], w["role"]) for w in row0["words"]]
    assert first.queries
    stream = iter_training_pages(SEED + 1, vocab_size=200, min_font_px=20, layouts=("table",))
    allowed = set(vocabulary()[:200])
    for _, (_image, words, queries) in zip(range(4), stream, strict=False):
        assert {w.role for w in words} <= {"title", "table-header", "table-cell", "caption"}
        assert all(normalize(w.text) in allowed for w in words if w.role == "title")
        assert min(w.box[3] - w.box[1] for w in words) >= 10  # x-height of 20 px DejaVu is 11 px
        tokens = [normalize(w.text) for w in words]
        for q in queries:
            assert [tokens[i] for i in q.word_ids] == q.text.split()


def test_command_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "b"), "--pages", "6", "--queries", "6", "--seed", "5",
                 "--split", "train", "--workers", "1"]) == 0
    assert (tmp_path / "b" / "corpus" / "train-00000-of-00001.parquet").is_file()
    assert "6 pages" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "c"), "--layouts", "poster"]) == 2


def test_benchdata_imports_no_torch():
    code = ("import sys, sapindex.benchdata.synthetic; "
            "print(','.join(m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_benchmark_directory_is_a_calibration_pairs_source(test_split):
    """`sapindex calibrate --pairs BENCH_DIR`: each query with its relevant page, images decodable."""
    from sapindex.calibration.pairs import load_pairs

    out, manifest = test_split
    pairs = load_pairs(out)
    assert len(pairs.pairs) == manifest["counts"]["qrels"] and not pairs.skipped
    queries = pq.read_table(out / "queries" / "test-00000-of-00001.parquet").column("query").to_pylist()
    assert sorted(p.query for p in pairs.pairs) == sorted(queries)
    assert pairs.pairs[0].load_image().mode == "RGB"
