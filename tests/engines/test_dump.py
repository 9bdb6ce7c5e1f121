"""``sapindex dump``: the Parquet copy holds every page's stored vectors and positions exactly, from
float16 and float32 indexes; the Vespa feed and the Elasticsearch bulk lines have the shapes of those
engines' documented examples, and a killed dump leaves nothing under the final name."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DIM, h, make_row, run_cli

from sapindex.engines import dump as dumping
from sapindex.engines.qdrant import point_id
from sapindex.index.store import Index, IndexWriter

# Vespa's document JSON format (docs.vespa.ai/en/reference/document-json-format.html): a put, and a mixed
# tensor with one mapped dimension in short form.
VESPA_PUT = {"put": "id:mynamespace:music::123", "fields": {"title": "Best of Bob Dylan"}}
VESPA_MIXED = {"x1": [2.0, 3.0], "x2": [4.0, 5.0]}
# Elasticsearch's bulk API (an action line, then the source) and a rank_vectors value
# (elastic.co/docs/reference/elasticsearch/mapping-reference/rank-vectors).
ES_ACTION = {"index": {"_index": "test", "_id": "1"}}
ES_RANK_VECTORS = {"my_vector": [[0.5, 10, 6], [-0.5, 10, 10]]}


def shape(x):
    """The JSON shape of ``x``: types all the way down, a list by the shape of its items."""
    if isinstance(x, dict):
        return {k: shape(v) for k, v in x.items()}
    if isinstance(x, list):
        shapes = {json.dumps(shape(v), sort_keys=True) for v in x}
        assert len(shapes) == 1, f"mixed list {x!r}"
        return [json.loads(shapes.pop())]
    return "number" if isinstance(x, (int, float)) and not isinstance(x, bool) else type(x).__name__


def _index(path, dtype="float16", n=12):
    with IndexWriter.create_or_open(path, "fp" * 32, DIM, vector_dtype=dtype) as idx:
        idx.add_pages([make_row(f"/a/d{i // 3}.pdf", h(i // 3), i % 3 + 1, 3 + i % 5, seed=i) for i in range(n)])
    return path


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_parquet_holds_the_index_exactly(tmp_path, dtype):
    idx = _index(tmp_path / "idx", dtype)
    result = run_cli("dump", idx, "--out", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pages"] == 12
    table = pq.read_table(tmp_path / "out" / "pages.parquet")
    meta = json.loads((tmp_path / "out" / "dump.json").read_text())
    assert meta["format"] == "sapindex-dump" and meta["dim"] == DIM and meta["vector_dtype"] == "float16"
    vtype = table.schema.field("vectors").type
    assert vtype.value_type.list_size == DIM and vtype.value_type.value_type == pa.float16()
    got = {(r["path"], r["page"]): r for r in table.to_pylist()}
    with Index.open(idx) as index:
        rows = list(index.iter_rows())
    assert len(got) == len(rows) == meta["pages"]
    for row in rows:
        mine = got[(row["path"], row["page"])]
        assert mine["positions"] == row["positions"].tolist() and mine["content_hash"] == row["content_hash"]
        assert np.array_equal(np.asarray(mine["vectors"], np.float32), row["vectors"].astype(np.float16))
    assert meta["vectors"] == sum(len(r["positions"]) for r in rows)


def test_vespa_feed_has_the_documented_shape(tmp_path):
    idx = _index(tmp_path / "idx")
    assert run_cli("dump", idx, "--out", tmp_path / "out", "--format", "vespa-feed").returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "vespa-feed.jsonl").read_text().splitlines()]
    with Index.open(idx) as index:
        rows = {point_id(r["content_hash"], r["page"]): r for r in index.iter_rows()}
    assert len(lines) == len(rows)
    for put in lines:
        assert shape(put).keys() == shape(VESPA_PUT).keys() and re.fullmatch(r"id:sapindex:page::[0-9a-f-]{36}",
                                                                             put["put"])
        embedding = put["fields"].pop("embedding")
        row = rows[put["put"].rsplit("::", 1)[1]]
        assert shape(embedding) == {label: ["number"] for label in embedding}  # the mixed short form's shape
        assert {k: shape(v) for k, v in embedding.items()} == {k: shape(VESPA_MIXED["x1"]) for k in embedding}
        assert list(embedding) == [str(p) for p in row["positions"]]
        assert np.allclose(np.array(list(embedding.values())), row["vectors"], atol=1e-3)
        assert put["fields"]["path"] == row["path"] and put["fields"]["page"] == row["page"]
    schema = (tmp_path / "out" / "vespa-schema.sd").read_text()
    assert f"tensor<bfloat16>(patch{{}}, v[{DIM}])" in schema and "reduce(" in schema


def test_es_bulk_has_the_documented_shape(tmp_path):
    idx = _index(tmp_path / "idx")
    assert run_cli("dump", idx, "--out", tmp_path / "out", "--format", "es-bulk", "--es-index", "pages").returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "es-bulk.ndjson").read_text().splitlines()]
    assert len(lines) == 24
    for action, doc in zip(lines[::2], lines[1::2], strict=True):
        assert shape(action) == shape(ES_ACTION) and action["index"]["_index"] == "pages"
        assert shape({"my_vector": doc["vectors"]}) == shape(ES_RANK_VECTORS)
        assert all(len(v) == DIM for v in doc["vectors"])
    mapping = json.loads((tmp_path / "out" / "es-mapping.json").read_text())
    assert mapping["mappings"]["properties"]["vectors"] == {"type": "rank_vectors", "dims": DIM,
                                                             "element_type": "bfloat16"}


def test_a_killed_dump_leaves_no_file(tmp_path):
    idx = _index(tmp_path / "idx", n=40)

    def die(done, total):
        raise KeyboardInterrupt

    with Index.open(idx) as index, pytest.raises(KeyboardInterrupt):
        dumping.dump(index, tmp_path / "out", "parquet", progress=die)
    assert list((tmp_path / "out").iterdir()) == []
    bad = run_cli("dump", idx, "--out", tmp_path / "out", "--format", "csv")
    assert bad.returncode == 2 and "csv" in bad.stderr
