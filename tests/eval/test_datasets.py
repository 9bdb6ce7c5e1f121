"""sapindex.eval.datasets: ViDoRe v1 QA, BEIR (ViDoRe v2) and JSONL pairs, in the exact layouts
the public datasets use, with every kind of bad row counted and skipped, never raised."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.eval.datasets import load_dataset

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature


def png(colour, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


BROKEN = png("red")[:40]  # a PNG signature and a bit: no format recognises it
TRUNCATED = png("red")[:60]  # open() reads the header, verify() finds the data cut short


def image_cell(data, path="page.png"):
    return {"bytes": data, "path": path}


def write_v1(path, rows):
    """ViDoRe v1 QA layout (e.g. vidore/docvqa_test_subsampled): query, image, plus extra columns."""
    table = pa.table({
        "query": pa.array([r[0] for r in rows], pa.string()),
        "image": pa.array([image_cell(r[1]) for r in rows], IMAGE_TYPE),
        "image_filename": pa.array([f"img{i}.png" for i in range(len(rows))], pa.string()),
        "answer": pa.array(["42"] * len(rows), pa.string()),
        "page": pa.array(["1"] * len(rows), pa.string()),
        "source": pa.array(["pdf"] * len(rows), pa.string()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_beir(root, corpus, queries, qrels, layout="hf"):
    """ViDoRe v2 layout: corpus(corpus-id int64, image), queries(query-id int64, query), qrels."""
    tables = {
        "corpus": pa.table({"corpus-id": pa.array([c[0] for c in corpus], pa.int64()),
                            "image": pa.array([image_cell(c[1]) for c in corpus], IMAGE_TYPE),
                            "doc-id": pa.array(["doc"] * len(corpus), pa.string())}),
        "queries": pa.table({"query-id": pa.array([q[0] for q in queries], pa.int64()),
                             "query": pa.array([q[1] for q in queries], pa.string()),
                             "language": pa.array(["english"] * len(queries), pa.string())}),
        "qrels": pa.table({"query-id": pa.array([r[0] for r in qrels], pa.int64()),
                           "corpus-id": pa.array([r[1] for r in qrels], pa.int64()),
                           "score": pa.array([r[2] for r in qrels], pa.int64())}),
    }
    for role, table in tables.items():
        if layout == "hf":  # corpus/test-00000-of-00001.parquet
            path = root / role / "test-00000-of-00001.parquet"
        elif layout == "flat":  # corpus.parquet
            path = root / f"{role}.parquet"
        else:  # corpus-00000.parquet shards
            path = root / f"{role}-00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return root


def by_id(items):
    return {item.id: item for item in items}


# --------------------------------------------------------------------------- ViDoRe v1 QA


def test_v1_dedups_queries_and_pages_and_skips_bad_rows(tmp_path):
    red, blue, green = png("red"), png("blue"), png("green")
    file = write_v1(tmp_path / "data" / "test-00000-of-00001.parquet", [
        ("what is red?", red),       # row 1: page 0
        ("what is blue?", blue),     # row 2: page 1
        ("what is red?", red),       # row 3: exact duplicate row
        ("what colour?", red),       # row 4: another query on page 0
        ("what colour?", blue),      # row 5: the same query, a second relevant page
        (None, green),               # row 6: page-only row (a distractor)
        ("what is broken?", BROKEN), # row 7: unreadable image -> query without relevant page
        ("  what is blue?  ", blue), # row 8: same text after stripping, same page: duplicate
        ("what is cut?", TRUNCATED), # row 9: header fine, data truncated -> unreadable
        ("what is cut?", TRUNCATED), # row 10: the same bytes again (checked once, still skipped)
    ])
    ds = load_dataset(tmp_path)  # a directory of non-BEIR parquet files
    assert ds.format == "vidore-v1-qa" and ds.source == str(tmp_path)
    assert [p.id for p in ds.pages] == ["0", "1", "5"]  # global row of first occurrence
    assert [p.sha256 for p in ds.pages] == [hashlib.sha256(b).hexdigest() for b in (red, blue, green)]
    texts = {q.text: q.id for q in ds.queries}
    assert set(texts) == {"what is red?", "what is blue?", "what colour?"}
    assert ds.qrels[texts["what is red?"]] == {"0": 1}
    assert ds.qrels[texts["what colour?"]] == {"0": 1, "1": 1}
    unreadable = ds.skipped["unreadable image"]
    assert [m.split(": ")[0] for m in unreadable] == [f"{file}:row 7", f"{file}:row 9", f"{file}:row 10"]
    assert "not a known image format" in unreadable[0] and "runcated" in unreadable[1]
    assert len(ds.skipped["query without relevant page"]) == 2
    assert "what is broken?" not in texts and "what is cut?" not in texts
    assert [m.split(": ")[0] for m in ds.skipped["duplicate"]] == [f"{file}:row 3", f"{file}:row 8"]
    image = ds.pages[1].load()
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (0, 0, 255)
    assert load_dataset(file).fingerprint == ds.fingerprint  # a file or its directory: same content


def test_v1_image_by_path_next_to_the_parquet(tmp_path):
    """A datasets Image cell may hold only a path (bytes null): it is read relative to the file."""
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "p.png").write_bytes(png("red"))
    file = tmp_path / "x.parquet"
    cells = [{"bytes": None, "path": "pages/p.png"}, {"bytes": png("red"), "path": None},
             {"bytes": None, "path": "pages/gone.png"}]
    pq.write_table(pa.table({"query": ["a", "b", "c"], "image": pa.array(cells, IMAGE_TYPE)}), file)
    ds = load_dataset(file)
    assert [p.id for p in ds.pages] == ["0"] and ds.pages[0].path == tmp_path / "pages" / "p.png"
    assert ds.qrels == {"0": {"0": 1}, "1": {"0": 1}}  # identical content: one page
    assert "image file not found" in ds.skipped["unreadable image"][0]


def test_v1_fingerprint_follows_content(tmp_path):
    rows = [("q1", png("red")), ("q2", png("blue"))]
    a = load_dataset(write_v1(tmp_path / "a.parquet", rows)).fingerprint
    assert load_dataset(write_v1(tmp_path / "b.parquet", rows)).fingerprint == a
    assert load_dataset(write_v1(tmp_path / "c.parquet", rows[:1])).fingerprint != a
    assert load_dataset(write_v1(tmp_path / "d.parquet", [("q1", png("red")), ("q2?", png("blue"))])).fingerprint != a


def test_v1_missing_column_names_file_and_columns(tmp_path):
    file = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["q"], "image": pa.array([image_cell(png("red"))], IMAGE_TYPE)}), file)
    with pytest.raises(SapIndexError) as err:
        load_dataset(file)
    assert str(file) in str(err.value) and "query" in str(err.value) and "question" in str(err.value)


def test_v1_nothing_usable_is_an_error(tmp_path):
    file = write_v1(tmp_path / "x.parquet", [("q", BROKEN), (None, png("red"))])
    with pytest.raises(SapIndexError, match="no usable query"):
        load_dataset(file)


# --------------------------------------------------------------------------- BEIR / ViDoRe v2


@pytest.mark.parametrize("layout", ["hf", "flat", "shards"])
def test_beir_layouts_and_bad_rows(tmp_path, layout):
    corpus = [(10, png("red")), (11, png("blue")), (12, BROKEN), (10, png("green")), (13, png("white"))]
    queries = [(1, "red?"), (2, "blue or red?"), (3, "only a broken page"), (4, "no qrel at all"), (1, "dup")]
    qrels = [(1, 10, 1), (2, 11, 1), (2, 10, 2), (2, 13, 0), (3, 12, 1), (1, 99, 1), (7, 10, 1), (1, 10, 1)]
    root = write_beir(tmp_path / layout, corpus, queries, qrels, layout)
    ds = load_dataset(root)
    assert ds.format == "beir"
    assert [p.id for p in ds.pages] == ["10", "11", "13"]  # 12 unreadable, second 10 a duplicate
    assert [(q.id, q.text) for q in ds.queries] == [("1", "red?"), ("2", "blue or red?")]
    assert ds.qrels == {"1": {"10": 1}, "2": {"11": 1, "10": 1}}  # score 0 is not relevant
    skipped = {k: len(v) for k, v in ds.skipped.items()}
    assert skipped == {"unreadable image": 1, "duplicate": 3, "qrel to unknown page": 2,
                       "qrel to unknown query": 1, "query without relevant page": 2}
    unknown = " | ".join(ds.skipped["qrel to unknown page"])
    assert "'12': its image was skipped" in unknown and "'99': it is not in the corpus" in unknown
    assert all("qrels" in m and ":row " in m for m in ds.skipped["qrel to unknown page"])
    assert ds.pages[0].load().getpixel((0, 0)) == (255, 0, 0)


def test_beir_string_ids_and_missing_parts(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    pq.write_table(pa.table({"corpus-id": ["a.pdf_1"], "image": pa.array([image_cell(png("red"))], IMAGE_TYPE)}),
                   root / "corpus.parquet")
    pq.write_table(pa.table({"query-id": ["q-1"], "query": ["x"]}), root / "queries.parquet")
    with pytest.raises(SapIndexError, match="without qrels"):
        load_dataset(root)
    pq.write_table(pa.table({"query-id": ["q-1"], "corpus-id": ["a.pdf_1"], "score": [1]}), root / "qrels.parquet")
    assert load_dataset(root).qrels == {"q-1": {"a.pdf_1": 1}}
    pq.write_table(pa.table({"query-id": ["q-1"], "corpus-id": ["a.pdf_1"]}), root / "qrels.parquet")
    with pytest.raises(SapIndexError) as err:
        load_dataset(root)
    message = str(err.value)
    assert "qrels.parquet" in message and "score" in message and "has query-id, corpus-id" in message


# --------------------------------------------------------------------------- JSONL pairs


def test_jsonl_pairs(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png("red"))
    (tmp_path / "img" / "a_copy.png").write_bytes(png("red"))  # same content: the same page
    (tmp_path / "img" / "b.png").write_bytes(png("blue"))
    (tmp_path / "img" / "broken.png").write_bytes(BROKEN)
    lines = [
        {"query": "red?", "image": "img/a.png"},
        {"query": "red?", "image": "img/a_copy.png"},     # duplicate pair once deduplicated
        {"query": "colour?", "image": "img/b.png"},
        {"query": "colour?", "image": "img/a.png"},
        {"query": "broken?", "image": "img/broken.png"},
        {"query": "missing?", "image": "img/nope.png"},
        {"image": "img/b.png"},
    ]
    file = tmp_path / "pairs.jsonl"
    file.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    ds = load_dataset(file)
    assert ds.format == "pairs-jsonl"
    assert [p.id for p in ds.pages] == ["img/a.png", "img/b.png"]
    assert ds.pages[0].path is not None and ds.pages[0].data is None
    assert {q.text: ds.qrels[q.id] for q in ds.queries} == {"red?": {"img/a.png": 1},
                                                           "colour?": {"img/b.png": 1, "img/a.png": 1}}
    assert [m.split(": ")[0] for m in ds.skipped["unreadable image"]] == [f"{file}:5", f"{file}:6"]
    assert "image file not found" in ds.skipped["unreadable image"][1]
    assert len(ds.skipped["invalid row"]) == 2 and len(ds.skipped["query without relevant page"]) == 2
    assert ds.skipped["duplicate"][0].startswith(f"{file}:2:")
    assert ds.pages[1].load().getpixel((0, 0)) == (0, 0, 255)


def test_unknown_inputs(tmp_path):
    with pytest.raises(SapIndexError, match="does not exist"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SapIndexError, match="unknown dataset format"):
        load_dataset(tmp_path / "x.csv")
    with pytest.raises(SapIndexError, match="no \\*.parquet"):
        load_dataset(tmp_path)
