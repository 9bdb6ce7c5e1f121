"""End to end through the CLI: export -> index (PDFs, images, broken files) -> search, resume, kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import run_cli as cli
from PIL import Image

from sapindex import sap
from sapindex.index.store import Index
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.encoder import Encoder
from sapindex.testing.toy_pages import write_pairs

# every test here exports a tiny bundle and indexes through the CLI
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tiny_models, pairs_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    calib = root / "calib"
    assert cli("calibrate", "--model", tiny_models["colqwen2"], "--pairs", pairs_file, "--out", calib).returncode == 0
    out = cli("export", "--model", tiny_models["colqwen2"], "--calibration", calib / "calibration.json",
              "--out", root / "tiny.sap")
    assert out.returncode == 0, out.stderr
    assert "validated  5 pages" in out.stdout
    return root / "tiny.sap"


@pytest.fixture()
def docs(tmp_path):
    """5 page images, one 3-page PDF, and broken inputs."""
    write_pairs(tmp_path / "docs", n=5, seed=11)
    pages = tmp_path / "docs" / "pages"
    images = [Image.open(pages / f"page-000{i}.png").convert("RGB") for i in range(3)]
    images[0].save(tmp_path / "docs" / "report.pdf", save_all=True, append_images=images[1:])
    (tmp_path / "docs" / "truncated.pdf").write_bytes((tmp_path / "docs" / "report.pdf").read_bytes()[:300])
    (tmp_path / "docs" / "empty.png").write_bytes(b"")
    (tmp_path / "docs" / "pairs.jsonl").unlink()
    return tmp_path / "docs"


def _search_matches_exact_maxsim(bundle, index_dir, query, k):
    """``search --json`` returns the k best pages by exact MaxSim of the bundle's query vectors; the hits."""
    hits = json.loads(cli("search", index_dir, query, "-k", k, "--json").stdout)
    vectors = Encoder(Bundle.open(bundle)).encode_queries([query])[0]
    with Index.open(index_dir) as idx:
        expected = sorted(((sap.maxsim(vectors, r["vectors"]), r["path"], r["page"]) for r in idx.iter_rows()),
                          key=lambda t: (-t[0], t[1], t[2]))[:k]
    assert len(hits) == k and [(h["path"], h["page"]) for h in hits] == [(p, pg) for _s, p, pg in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [s for s, _p, _pg in expected], rtol=1e-5)
    return hits


def _rows(index_dir):
    with Index.open(index_dir) as idx:
        return [(r["path"], r["page"]) for r in idx.iter_rows()]


def test_index_search_resume(bundle, docs, tmp_path):
    out = cli("index", bundle, docs, "--out", tmp_path / "idx", "--batch-size", "3", "--json")
    assert out.returncode == 3, out.stderr  # partial: two broken inputs
    summary = json.loads(out.stdout)
    assert summary["pages_indexed"] == 8 and summary["files"] >= 6
    assert any("truncated.pdf" in f for f in summary["failures"]) and any("empty.png" in f for f in summary["failures"])
    rows = _rows(tmp_path / "idx")
    assert sorted(p for path, p in rows if path.endswith("report.pdf")) == [1, 2, 3]
    assert len(rows) == len(set(rows)) == 8
    with Index.open(tmp_path / "idx") as idx:
        assert {f.path for f in idx.failures()} == {str(docs / "truncated.pdf"), str(docs / "empty.png")}
        stats = idx.stats()
        for r in idx.iter_rows():
            assert len(r["positions"]) == sap.keep_count(r["n_visual"], 0.1) == r["vectors"].shape[0]
    assert stats.vectors_before_pruning == summary["vectors_before"]

    again = json.loads(cli("index", bundle, docs, "--out", tmp_path / "idx", "--json").stdout)
    assert again["pages_indexed"] == 0 and again["pages_skipped"] == 8

    hits = _search_matches_exact_maxsim(bundle, tmp_path / "idx", "north river", 4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    shown = json.loads(cli("inspect", tmp_path / "idx", "--json").stdout)
    assert shown["pages"] == 8 and shown["failures"] == 2 and shown["vectors"] == summary["vectors_kept"]
    assert shown["bundle_fingerprint"] == Bundle.open(bundle).fingerprint
    out = cli("inspect", bundle)
    assert out.returncode == 0 and "family              colqwen2" in out.stdout


def test_changed_file_is_reindexed_and_stdin_lists(bundle, docs, tmp_path):
    target = docs / "pages" / "page-0001.png"
    listing = f"{target}\n{docs / 'pages' / 'page-0002.png'}\n"
    assert cli("index", bundle, "-", "--out", tmp_path / "idx", stdin=listing).returncode == 0
    with Index.open(tmp_path / "idx") as idx:
        before = {r["path"]: r["content_hash"] for r in idx.iter_rows()}
    Image.new("RGB", (300, 200), "navy").save(target)
    assert cli("index", bundle, "-", "--out", tmp_path / "idx", stdin=listing).returncode == 0
    with Index.open(tmp_path / "idx") as idx:
        after = {r["path"]: r["content_hash"] for r in idx.iter_rows()}
    assert len(after) == 2 and after[str(target)] != before[str(target)]


def test_index_refuses_another_bundle(bundle, docs, tmp_path, tiny_models):
    other = tmp_path / "other.sap"
    import shutil

    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert cli("index", bundle, docs / "pages", "--out", tmp_path / "idx").returncode == 0
    out = cli("index", other, docs / "pages", "--out", tmp_path / "idx")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "fingerprint" in out.stderr and out.stderr.count("\n") == 1


def test_kill_9_then_rerun_gives_every_page_once(bundle, tmp_path):
    write_pairs(tmp_path / "many", n=120, seed=5)  # enough that the run cannot end while we poll
    proc = subprocess.Popen([sys.executable, "-m", "sapindex.cli", "index", str(bundle),
                             str(tmp_path / "many" / "pages"), "--out", str(tmp_path / "idx"), "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (tmp_path / "idx" / "pages.lance").exists() and len(_rows(tmp_path / "idx")) >= 3:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _rows(tmp_path / "idx")
    assert 3 <= len(partial) < 120, "the kill should land mid-run"
    out = cli("index", bundle, tmp_path / "many" / "pages", "--out", tmp_path / "idx", "--json")
    assert out.returncode == 0, out.stderr
    rows = _rows(tmp_path / "idx")
    assert len(rows) == len(set(rows)) == 120
    assert json.loads(out.stdout)["pages_skipped"] == len(partial)


def test_cuda_without_the_cuda_provider_is_a_clear_error(bundle, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the error path cannot be shown here")
    out = cli("index", bundle, tmp_path, "--out", tmp_path / "idx", "--device", "cuda")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--device cuda" in out.stderr and "onnxruntime-gpu" in out.stderr
    info = json.loads(cli("info", "--providers", "--json").stdout)
    assert info["cuda"] is False and "CPUExecutionProvider" in info["providers"]


@pytest.mark.parametrize("family", ["colpali", "colpali_hf"])
def test_colpali_through_the_cli(tiny_models, pairs_file, tmp_path, family):
    """ColPali (prefix-LM; colpali-engine and transformers' -hf flavour) end to end: info, calibrate,
    export, index, search, eval; and the causal position correction refused with exit 2 before
    anything is written."""
    model = tiny_models[family]
    out = cli("info", model)
    assert out.returncode == 0, out.stderr
    assert f"family              {family}\n" in out.stdout and "n_layers            6" in out.stdout
    assert "1024 image tokens" in out.stdout and "attention           prefix-lm" in out.stdout

    assert cli("calibrate", "--model", model, "--pairs", pairs_file, "--out", tmp_path / "calib").returncode == 0
    bundle = tmp_path / "colpali.sap"
    out = cli("export", "--model", model, "--calibration", tmp_path / "calib" / "calibration.json", "--out", bundle)
    assert out.returncode == 0, out.stderr
    assert "validated  5 pages" in out.stdout and "mismatches 0" in out.stdout and "Jaccard at 0.1 1.000" in out.stdout
    assert Bundle.open(bundle).attention == "prefix-lm"

    write_pairs(tmp_path / "docs", n=5, seed=11)
    pages = tmp_path / "docs" / "pages"
    out = cli("index", bundle, pages, "--out", tmp_path / "idx", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["pages_indexed"] == 5 and summary["vectors_before"] == 5 * 64
    assert summary["vectors_kept"] == 5 * sap.keep_count(64, 0.1)

    _search_matches_exact_maxsim(bundle, tmp_path / "idx", "north river", 3)

    for args in (("index", bundle, pages, "--out", tmp_path / "idx2", "--position-correction"),
                 ("eval", bundle, pairs_file, "--out", tmp_path / "rep", "--methods", "sap,sap-poscorr")):
        out = cli(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert "--position-correction" in out.stderr and "prefix-lm" in out.stderr
    assert not (tmp_path / "idx2").exists() and not (tmp_path / "rep").exists()
    out = cli("eval", bundle, pairs_file, "--out", tmp_path / "rep", "--keep-ratios", "0.1", "--json")
    assert out.returncode == 0, out.stderr
    assert "sap-poscorr" not in json.loads(out.stdout)["methods"]  # the default skips what does not apply


def test_colidefics3_through_the_cli(tiny_models, pairs_file, tmp_path):
    """ColIdefics3 (tiles + a global tile, causal) end to end: info shows the scheme; calibrate,
    export, index, search; rows record the global grid and spatial positions; the position
    correction (which needs each token's sequence rank) runs and keeps what the encoder keeps."""
    from PIL import Image

    from sapindex.runtime.encoder import prune

    model = tiny_models["colidefics3"]
    out = cli("info", model)
    assert out.returncode == 0, out.stderr
    assert "family              colidefics3" in out.stdout and "attention           causal" in out.stdout
    assert "global tile last" in out.stdout

    assert cli("calibrate", "--model", model, "--pairs", pairs_file, "--out", tmp_path / "calib").returncode == 0
    bundle = tmp_path / "colidefics3.sap"
    out = cli("export", "--model", model, "--calibration", tmp_path / "calib" / "calibration.json", "--out", bundle)
    assert out.returncode == 0, out.stderr
    assert "validated  5 pages" in out.stdout and "mismatches 0" in out.stdout and "Jaccard at 0.1 1.000" in out.stdout

    write_pairs(tmp_path / "docs", n=5, seed=11)
    pages = sorted((tmp_path / "docs" / "pages").glob("*.png"))
    encoder = Encoder(Bundle.open(bundle))
    encoded = {str(p): encoder.encode_pages([Image.open(p)])[0] for p in pages}
    for flag, idx in (((), tmp_path / "idx"), (("--position-correction",), tmp_path / "idx-poscorr")):  # () : sap
        out = cli("index", bundle, tmp_path / "docs" / "pages", "--out", idx, "--json", *flag)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["pages_indexed"] == 5
        assert summary["vectors_before"] == sum(p.n_visual for p in encoded.values())
        with Index.open(idx) as index:
            for row in index.iter_rows():
                page = encoded[row["path"]]
                assert (row["grid_rows"], row["grid_cols"]) == page.grid
                assert (row["global_rows"], row["global_cols"]) == page.layout.global_grid == (4, 4)
                assert row["n_visual"] == page.grid[0] * page.grid[1] + 16
                kept = prune(page, 0.1, position_correction="--position-correction" in flag)
                assert row["positions"].tolist() == kept.positions.tolist()
    # sap-kmeans clusters the global tile's tokens with the page's: each is covered
    out = cli("index", bundle, tmp_path / "docs" / "pages", "--out", tmp_path / "idx-km", "--json",
              "--method", "sap-kmeans")
    assert out.returncode == 0, out.stderr
    with Index.open(tmp_path / "idx-km") as index:
        for row in index.iter_rows():
            assert row["method"] == "sap-kmeans" and row["n_kept"] == sap.keep_count(row["n_visual"], 0.1)
            assert row["cover"].shape == (row["n_visual"],) and row["cover"].min() == 0
            np.testing.assert_array_equal(row["cover"][row["positions"]], np.arange(row["n_kept"]))
    _search_matches_exact_maxsim(bundle, tmp_path / "idx", "north river", 3)
