"""The pieces of a Ray run without a cluster: waves and chunks, rendering rows, the encoder actor's
batches and the driver's decoding, the resource check and the refusals (fast)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sapindex.cluster.connect import Resources
from sapindex.cluster.listing import Lister, plan_waves
from sapindex.cluster.workers import PageEncoder, decode, render_chunk
from sapindex.errors import SapIndexError
from sapindex.index.documents import describe, render_listed, render_page
from sapindex.index.records import Failure
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.runtime.encoder import Encoder
from sapindex.runtime.options import IndexOptions


def _pdf(path, n, size=(120, 160)):
    pages = [Image.new("RGB", size, (10 * i, 255 - 10 * i, 128)) for i in range(n)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return str(path)


def test_waves_chunk_pending_pages_by_batch_and_grow(tmp_path):
    """Chunks are one batch of one file's pending pages; a page stored before or planned by an earlier
    copy of the same file is neither planned again nor lost from the counts; waves grow 4x."""
    a, b = _pdf(tmp_path / "a.pdf", 5), _pdf(tmp_path / "b.pdf", 9, (130, 170))
    copy = tmp_path / "copy.pdf"
    copy.write_bytes(Path(a).read_bytes())
    stored = {(describe(a).content_hash, 2)}
    sources = [a, Failure("gone.pdf", "no such file or directory"), b, str(copy), str(tmp_path / "x.pdf")]
    waves = list(plan_waves(sources, stored, chunk_pages=2, first_pages=3, max_pages=100))
    assert [w.pages for w in waves] == [4, 9]  # a: 4 pending >= 3, then limit 12: b's 9, copy's 0
    first, second = waves
    assert [c["pages"] for c in first.chunks] == [[1, 3], [4, 5]]
    assert [c["pages"] for c in second.chunks] == [[1, 2], [3, 4], [5, 6], [7, 8], [9]]
    assert first.files[0][1] == [False, True, False, False, False]
    assert second.files[1][1] == [True] * 5  # the copy: every page planned by a.pdf
    assert first.failures == [] and [str(f) for f in second.failures] == [
        "gone.pdf: no such file or directory", f"{tmp_path / 'x.pdf'}: no such file or directory"]
    assert stored == {(describe(a).content_hash, 2)}  # the driver's set is read, never changed


def test_lister_hands_over_waves_and_the_listing_thread_s_errors():
    def boom():
        yield from plan_waves([], set(), chunk_pages=1, first_pages=1)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(Lister(boom()))
    lister = Lister(iter([1, 2, 3]))
    assert next(iter(lister)) == 1
    lister.stop()  # ends a thread blocked on a full queue


def test_rendering_refuses_a_file_changed_since_it_was_listed(tmp_path):
    path = _pdf(tmp_path / "a.pdf", 3)
    listed = describe(path)
    rows = render_chunk({**listed.__dict__, "pages": [1, 3]}, dpi=72)
    assert [(r["page"], r["width"], r["height"], r["error"]) for r in rows] == [(1, 120, 160, ""), (3, 120, 160, "")]
    assert rows[1]["image"] == render_page(path, 3, dpi=72)[0].tobytes()  # what a local run renders
    time.sleep(0.01)
    _pdf(tmp_path / "a.pdf", 3, (121, 160))  # rewritten: a new modification time
    [failure] = render_listed(listed, [1, 2])
    assert failure.path == path and "changed since it was listed" in failure.reason
    _pdf(tmp_path / "a.pdf", 4)
    assert os.path.getsize(path) != listed.n_bytes
    os.utime(path, ns=(listed.mtime_ns, listed.mtime_ns))  # the listed time, another size: still refused
    assert "changed since it was listed" in next(iter(render_listed(listed, [1]))).reason


def _as_ray_batch(rows):
    """Rows as Ray Data hands them to a numpy-format batch: one array per column."""
    return {key: np.array([r[key] for r in rows], dtype=object if isinstance(rows[0][key], (str, bytes)) else None)
            for key in rows[0]}


@pytest.mark.parametrize("mode,method", [("exact", "sap"), ("fast", "sap"), ("exact", "sap-merge")])
def test_the_encoder_actor_keeps_what_a_local_run_keeps_and_passes_failures(tmp_path, mode, method):
    bundle = Bundle.open(default_bundle_path())
    pages = [str(p) for p in example_pages()[:2]]
    Image.new("RGB", (1, 500), "white").save(tmp_path / "strip.png")
    rows = [row for path in [*pages, str(tmp_path / "strip.png")]
            for row in render_chunk({**describe(path).__dict__, "pages": [1]})]
    rows.append({**rows[0], "page": 0, "image": b"", "error": "not a valid PDF", "path": "bad.pdf"})
    options = IndexOptions(keep_ratio=0.1, method=method, mode=mode, threads=1)
    actor = PageEncoder(str(bundle.path), bundle.fingerprint, options)
    stored, failures = decode(actor(_as_ray_batch(rows)))
    assert [str(f) for f in failures] == [
        f"{tmp_path / 'strip.png'} page 1: image aspect ratio 500.0 exceeds 200 (1x500); Qwen2-VL cannot take it",
        "bad.pdf: not a valid PDF"]
    encoder = Encoder(bundle, threads=1)
    for (page, kept), path in zip(stored, pages, strict=True):
        with Image.open(path) as image:
            [local] = encoder.encode_pages_pruned([image.convert("RGB")], options)
        listed = describe(path)
        assert (page.path, page.page, page.size, page.content_hash) == (path, 1, image.size, listed.content_hash)
        assert np.array_equal(kept.positions, local.positions) and kept.grid == local.grid
        assert np.allclose(kept.vectors, local.vectors, atol=1e-5) and np.allclose(kept.scores, local.scores)
        assert kept.n_visual == local.n_visual and kept.global_grid == local.global_grid
        assert (kept.cover is None) == (method == "sap")  # a merged page's cover crosses the object store
        assert kept.cover is None or np.array_equal(kept.cover, local.cover)


def test_an_encoder_with_another_bundle_is_refused():
    with pytest.raises(SapIndexError, match="not the one the driver opened"):
        PageEncoder(str(default_bundle_path()), "0" * 64, IndexOptions(threads=1))


def test_a_cluster_too_small_for_the_encoders_is_refused_by_name():
    Resources(2, 1, 0).check({"CPU": 3})
    with pytest.raises(SapIndexError, match=r"2 encoder\(s\) x \(1 CPU, 1 GPU\).*need 3 CPUs and 2 GPUs.*"
                                            r"has 8 CPUs and 1 GPUs"):
        Resources(2, 1, 1).check({"CPU": 8, "GPU": 1})
    with pytest.raises(SapIndexError, match="need 5 CPUs"):
        Resources(2, 2, 0).check({"CPU": 4})


def _cli(*args, block_ray=False):
    block = ("import sys, importlib.abc\nclass B(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name.split('.')[0] == 'ray': raise ImportError(name)\n"
             "sys.meta_path.insert(0, B())\n") if block_ray else ""
    argv = ["sapindex", *map(str, args)]
    code = block + f"import sys; sys.argv = {argv!r}\nfrom sapindex.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_ray_options_refusals(tmp_path):
    page = str(example_pages()[0])
    result = _cli("index", page, "--out", tmp_path / "i", "--encoders", 2)
    assert result.returncode == 2 and "give --ray too" in result.stderr
    result = _cli("index", page, "--out", tmp_path / "i", "--ray", "local", block_ray=True)
    assert result.returncode == 2 and 'pip install "sapindex[ray]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _cli("index", page, "--out", tmp_path / "i", "--ray", "local", "--encoders", 0)
    assert result.returncode == 2 and "--encoders must be at least 1" in result.stderr
    result = _cli("index", page, "--out", tmp_path / "i", "--ray", "auto")  # no cluster runs here
    assert result.returncode == 2 and "no running Ray cluster found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "i").exists()  # refused before an index is created
