"""Calibration on tiny ColQwen2 and ColQwen2.5 models: centrality, SR, window, files, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sapindex import sap
from sapindex.calibration.calibrate import CalibrationConfig, calibrate, pair_retention, write_calibration
from sapindex.calibration.pairs import load_pairs
from sapindex.calibration.record import CalibrationRecord
from sapindex.errors import SapIndexError

FAMILIES = ["colqwen2", "colqwen2_5"]


def _pages(seed=0):
    """Three pages of different sizes, so one batch mixes padding lengths and grids."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for h, w in
            [(200, 150), (330, 300), (120, 420)]]


@pytest.mark.parametrize("family", FAMILIES)
def test_centrality_equals_in_degree_on_raw_attention(adapters, family):
    adapter = adapters[family]
    raw = {}
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out, i=i: raw.__setitem__(i, out[1].detach().clone()))
             for i, layer in enumerate(adapter.decoder_layers())]
    try:
        pages = adapter.encode_pages(_pages())
        inputs = adapter.page_inputs(_pages())
    finally:
        for h in hooks:
            h.remove()
    visual = adapter.visual_mask(inputs).numpy()
    assert len({p.embeddings.shape[0] for p in pages}) == 3, "pages should differ in visual-token count"
    for b, page in enumerate(pages):
        assert page.grid[0] * page.grid[1] == page.embeddings.shape[0] == visual[b].sum()
        for layer in range(adapter.n_layers):
            expected = sap.in_degree(raw[layer][b].double().numpy(), visual[b])
            np.testing.assert_allclose(page.centrality[layer], expected, rtol=1e-5, atol=1e-6)
        last = int(np.flatnonzero(inputs["attention_mask"][b].numpy())[-1])
        eos = raw[adapter.n_layers - 1][b][:, last, :].double().mean(dim=0).numpy()[visual[b]]
        np.testing.assert_allclose(page.eos, eos, rtol=1e-5, atol=1e-7)
        window = sap.in_degree(np.stack([raw[i][b].double().numpy() for i in (1, 2)]), visual[b])
        np.testing.assert_allclose(page.centrality[[1, 2]].mean(axis=0), window, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_pass_matches_one_page_at_a_time(adapters, family):
    adapter = adapters[family]
    batched = adapter.encode_pages(_pages())
    for image, page in zip(_pages(), batched, strict=True):
        single = adapter.encode_pages([image])[0]
        np.testing.assert_allclose(page.embeddings, single.embeddings, atol=1e-5)
        np.testing.assert_allclose(page.centrality, single.centrality, rtol=1e-4, atol=1e-5)
    # the embeddings are colpali-engine's own forward output at the image-token positions
    inputs = adapter.page_inputs(_pages()[:1])
    with torch.no_grad():
        ref = adapter.model(**inputs)[0][adapter.visual_mask(inputs)[0]].numpy()
    np.testing.assert_allclose(batched[0].embeddings, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_end_to_end(tiny_models, adapters, pairs_file, tmp_path, family):
    cfg = CalibrationConfig(model=str(tiny_models[family]), pairs=str(pairs_file), batch_size=4, limit=500)
    seen = []
    record = calibrate(cfg, progress=lambda done, total: seen.append((done, total)))
    n_layers = adapters[family].n_layers
    assert seen == [(0, 6), (4, 6), (6, 6)] and record["pairs"]["used"] == 6 and record["pairs"]["skipped"] == 0
    assert record["model"]["family"] == family and record["model"]["n_layers"] == n_layers
    assert len(record["sr"]["mean"]) == len(record["sr"]["std"]) == n_layers
    start, end = sap.select_window(record["sr"]["mean"], record["settings"]["rho"])
    assert (record["window"]["start"], record["window"]["end"]) == (start, end)
    assert record["window"]["median"] == pytest.approx(float(np.median(record["sr"]["mean"])))
    assert record["window"]["rule"] == "algorithm1"
    assert record["window"]["candidates"] == {"algorithm1": [start, end],
                                              "sr-peak": list(sap.peak_window(record["sr"]["mean"], 0.2))}
    assert len(record["random_floor"]["per_seed"]) == 5
    assert len(record["model"]["fingerprint"]["sha256"]) == 64

    # the stored curve is the mean of per-pair SR recomputed independently
    pairs = load_pairs(pairs_file).pairs
    adapter = adapters[family]
    rows = []
    for pair in pairs:
        page = adapter.encode_pages([pair.load_image()])[0]
        query = adapter.encode_queries([pair.query])[0]
        rows.append([sap.score_retention(query, page.embeddings, sap.top_k(c, 0.1)) for c in page.centrality])
    np.testing.assert_allclose(record["sr"]["mean"], np.mean(rows, axis=0), rtol=1e-4, atol=1e-5)

    json_path, png_path = write_calibration(record, tmp_path / "calib")
    written = json.loads(json_path.read_text())
    assert written == record and list(written) == list(record) and written["window"] == record["window"]
    assert CalibrationRecord.from_json(written).to_json() == record
    with Image.open(png_path) as img:
        assert img.format == "PNG" and img.size[0] >= 600


def test_pair_retention_uses_each_layer_ranking():
    """A page whose layers rank different tokens: SR follows each layer's own top-k."""
    emb = np.zeros((10, 4))
    emb[np.arange(10), np.arange(10) % 4] = 1.0
    query = np.array([[1.0, 0, 0, 0]])

    class Page:
        embeddings = emb
        centrality = np.array([np.arange(10.0), -np.arange(10.0)])  # layer 0 keeps token 9, layer 1 token 0

    per_layer, rand = pair_retention(query, Page, 0.1, seed=0, pair_index=0)
    # token 9 has direction 1 (score 0), token 0 direction 0 (score 1)
    np.testing.assert_allclose(per_layer, [0.0, 1.0])
    assert rand.shape == (5,) and set(np.round(rand, 6)) <= {0.0, 1.0}


def test_bad_rows_are_skipped_and_counted(tiny_models, pairs_file, tmp_path):
    good = pairs_file.read_text().splitlines()[:2]
    image = json.loads(good[0])["image"]
    (tmp_path / "pages").symlink_to(pairs_file.parent / "pages")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = good + ["{not json", json.dumps({"query": "x", "image": "pages/missing.png"}),
                    json.dumps({"image": image}), json.dumps({"query": "y", "image": "broken.png"})]
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    record = calibrate(CalibrationConfig(model=str(tiny_models["colqwen2"]), pairs=str(bad)))
    assert record["pairs"]["used"] == 2 and record["pairs"]["skipped"] == 4
    reasons = "\n".join(record["pairs"]["skipped_rows"])
    assert f"{bad}:3: invalid JSON" in reasons
    assert f"{bad}:4: pages/missing.png: image file not found" in reasons
    assert f"{bad}:5: missing or empty 'query'" in reasons
    assert f"{bad}:6: broken.png: unreadable image" in reasons


def test_no_usable_pair_is_an_error(tiny_models, tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"query": "x", "image": "nope.png"}) + "\n")
    with pytest.raises(SapIndexError, match=r"0 usable .*nope.png: image file not found"):
        calibrate(CalibrationConfig(model=str(tiny_models["colqwen2"]), pairs=str(bad)))


def test_parquet_pairs_in_vidore_layout(tmp_path, pairs_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    images = [{"bytes": (pairs_file.parent / r["image"]).read_bytes(), "path": None} for r in rows]
    images[1] = {"bytes": b"garbage", "path": None}
    table = pa.table({"query": [r["query"] for r in rows], "image": images})
    pq.write_table(table, tmp_path / "train.parquet")
    loaded = load_pairs(tmp_path)  # a directory of parquet files
    assert len(loaded.pairs) == len(rows) - 1
    assert loaded.skipped == [f"{tmp_path / 'train.parquet'}:row 2: " + loaded.skipped[0].split(": ", 1)[1]]
    assert loaded.pairs[0].load_image().size == Image.open(pairs_file.parent / rows[0]["image"]).size
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "bad.parquet")
    with pytest.raises(SapIndexError, match=r"bad.parquet: parquet lacks column\(s\) query, image"):
        load_pairs(tmp_path / "bad.parquet")


def test_limit_takes_a_seeded_sample(tiny_models, tmp_path):
    from sapindex.testing.toy_pages import write_pairs

    many = write_pairs(tmp_path, n=9, seed=3)
    cfg = CalibrationConfig(model=str(tiny_models["colqwen2"]), pairs=str(many), limit=4, seed=7)
    first, second = calibrate(cfg), calibrate(cfg)
    assert first["pairs"]["used"] == 4 and first["pairs"]["available"] == 9
    assert first["sr"] == second["sr"] and first["random_floor"] == second["random_floor"]


def test_progress_moves_per_pair_on_a_cpu_and_per_batch_when_asked(tiny_models, pairs_file):
    """A real-size pair takes about a minute on a CPU: the default moves the bar after every pair,
    after a line announcing the model load; an explicit batch size moves it per batch."""
    events = []
    cfg = CalibrationConfig(model=str(tiny_models["colqwen2"]), pairs=str(pairs_file))
    record = calibrate(cfg, progress=lambda done, total: events.append((done, total)), log=events.append)
    assert events[0].startswith("loading    ") and "6 pairs, 1 per pass" in events[0]
    assert events[1:] == [(i, 6) for i in range(7)] and record["settings"]["batch_size"] == 1
    steps = []
    calibrate(CalibrationConfig(model=str(tiny_models["colqwen2"]), pairs=str(pairs_file), batch_size=4),
              progress=lambda done, total: steps.append(done))
    assert steps == [0, 4, 6]
