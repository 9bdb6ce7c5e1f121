"""``sapindex index --ray`` on a local Ray cluster (2 encoders on this machine's cores): the index
equals a local run's, bad inputs fail as locally, a killed encoder is retried with its pages
written once, and a driver killed with kill -9 leaves a valid index that a rerun completes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sapindex.index.indexer import run_index
from sapindex.index.store import Index
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.runtime.options import IndexOptions

pytestmark = pytest.mark.slow  # each run starts a Ray cluster (~5 s) and encodes a few dozen pages

RAY = ["--ray", "local", "--encoders", 2, "--dpi", 72]
FAILURES = {"broken.pdf: not a valid PDF (corrupt or truncated)",
            "strip.png page 1: image aspect ratio 500.0 exceeds 200 (1x500); Qwen2-VL cannot take it"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """28 pages: a 12-page and an 8-page PDF, 8 images; a broken PDF and a page the model refuses."""
    root = tmp_path_factory.mktemp("inputs")
    pages = [Image.open(p).convert("RGB") for p in example_pages()]
    pages[0].save(root / "a.pdf", save_all=True, append_images=pages[1:] + pages[:4])
    turned = [p.rotate(90, expand=True) for p in pages]
    turned[0].save(root / "b.pdf", save_all=True, append_images=turned[1:])
    for i, page in enumerate(pages):
        page.resize((page.width // 2, page.height // 2)).save(root / f"p{i}.png")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    Image.new("RGB", (1, 500), "white").save(root / "strip.png")
    return root


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "idx"
    summary = run_index(default_bundle_path(), [str(inputs)], out, IndexOptions(dpi=72, batch_size=2))
    assert summary.pages_indexed == 28
    return out


def _rows(index: Path) -> dict:
    rows = list(Index.open(index).iter_rows())
    keys = [(r["path"], r["page"]) for r in rows]
    assert len(keys) == len(set(keys)), "a page stored twice"
    return dict(zip(keys, rows, strict=True))


def _failures(index: Path) -> set[str]:
    return {str(f).rsplit("/", 1)[-1] for f in Index.open(index).failures()}


def assert_same_index(ours: Path, local: Path) -> None:
    """The same rows, kept positions, scores and geometry; vectors within float tolerance."""
    a, b = _rows(ours), _rows(local)
    assert a.keys() == b.keys()
    for key, row in a.items():
        other = b[key]
        for column in ("content_hash", "width", "height", "grid_rows", "grid_cols", "global_rows", "global_cols",
                       "n_visual", "n_kept", "keep_ratio", "method"):
            assert row[column] == other[column], (key, column)
        assert np.array_equal(row["positions"], other["positions"]), key
        assert np.allclose(row["scores"], other["scores"], rtol=1e-4, atol=1e-6), key
        assert np.allclose(np.asarray(row["vectors"], np.float32), np.asarray(other["vectors"], np.float32),
                           atol=2e-3), key
    assert _failures(ours) == _failures(local) == FAILURES


def _index_cmd(inputs, out, *extra):
    return [sys.executable, "-m", "sapindex.cli", "index", str(inputs), "--out", str(out), *map(str, RAY + list(extra))]


def _stored(index: Path) -> int:
    try:
        return Index.open(index).stats().pages
    except Exception:  # not created yet
        return 0


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Ray's processes of a ``--ray local`` run)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(predicate, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_ray_run_writes_the_index_a_local_run_writes(inputs, local, tmp_path):
    result = subprocess.run(_index_cmd(inputs, tmp_path / "idx", "--batch-size", 2, "--json"), capture_output=True,
                            text=True)
    assert result.returncode == 3, result.stderr  # bad inputs: named, stored, the rest indexed
    summary = json.loads(result.stdout)  # stdout is the JSON alone: Ray's messages go to stderr
    assert (summary["files"], summary["pages_indexed"], summary["pages_skipped"]) == (11, 28, 0)
    assert {f.rsplit("/", 1)[-1] for f in summary["failures"]} == FAILURES
    assert_same_index(tmp_path / "idx", local)
    again = subprocess.run(_index_cmd(inputs, tmp_path / "idx", "--json"), capture_output=True, text=True)
    assert again.returncode == 3, again.stderr
    assert (json.loads(again.stdout)["pages_indexed"], json.loads(again.stdout)["pages_skipped"]) == (0, 28)
    assert_same_index(tmp_path / "idx", local)


def test_a_killed_encoder_is_retried_and_its_pages_are_written_once(inputs, local, tmp_path):
    out = tmp_path / "idx"
    proc = subprocess.Popen(_index_cmd(inputs, out, "--batch-size", 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    encoders = lambda: [p for p in _children(proc.pid) if "MapBatches(PageEncoder)" in _cmdline(p)]  # noqa: E731
    _wait_for(lambda: _stored(out) >= 2 and encoders(), proc)
    victim = encoders()[0]
    os.kill(victim, signal.SIGKILL)
    assert _stored(out) < 28  # killed mid-run
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    assert victim not in _children(proc.pid)
    assert_same_index(out, local)  # every page, once


def test_a_driver_killed_with_kill_9_leaves_an_index_that_a_rerun_completes(inputs, local, tmp_path):
    out = tmp_path / "idx"
    proc = subprocess.Popen(_index_cmd(inputs, out, "--batch-size", 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(lambda: _stored(out) >= 3, proc)
    ray_processes = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = _rows(out)  # a valid index, each page once
    assert 3 <= len(stored) < 28 and stored.keys() <= _rows(local).keys()
    result = subprocess.run(_index_cmd(inputs, out, "--json"), capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["pages_skipped"], summary["pages_indexed"]) == (len(stored), 28 - len(stored))
    assert_same_index(out, local)
    for pid in ray_processes:  # Ray's node agents outlive a killed driver by ~2 minutes
        if "ray::" in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
