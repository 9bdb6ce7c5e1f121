"""What several benchmark scripts share: their inputs (pages, a real-size bundle, the layer stack, the
micro model's data sets, the source vectors for search at scale) and how they run and measure things.

Why: each of these was written in one script and imported from it by others through ``sys.path``
edits, or written twice. This module is their one home. It is not a benchmark: scripts run as
``python bench/NAME.py`` have ``bench/`` on their path and import it as ``harness``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the repository

# ---------------------------------------------------------------------------------------------- running


def sapindex(*args) -> list[str]:
    """The command line of ``sapindex ARGS`` under this interpreter."""
    return [sys.executable, "-m", "sapindex.cli", *map(str, args)]


def run(cmd: list[str]) -> str:
    """Run ``cmd`` (echoed on stderr) and return its stdout; exits with its stderr if it fails."""
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return out.stdout


def child_json(script: str, label: str, *args) -> dict:
    """Run ``script`` with ``args`` in a fresh interpreter (its own load time and peak memory) and return
    its last stdout line as JSON; exits with its stderr, labelled ``label``, if it fails."""
    done = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{label} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- measuring


def machine() -> str:
    """The machine and the day, as every result's header names them: ``x86_64 2 cores, 2026-12-06``."""
    return f"{platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"


def best_of(fn, repeats):
    """The shortest of ``repeats`` timed calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_kb(pid: int | str = "self") -> int:
    """A process's peak resident set in kB (``VmHWM``: unlike ``ru_maxrss``, not inherited from the
    parent that forked it)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


# ---------------------------------------------------------------------------------------------- pages

PAGE_SIZE = (1100, 850)  # (height, width) px: a letter page at ~100 dpi, ~744 visual tokens for ColQwen2


def _rendered(n: int, seed: int, words: int, size) -> list:
    """``n`` deterministic toy text pages of ``words`` words, each of ``size(rng)`` px."""
    from sapindex.testing.toy_pages import WORDS, render_page

    rng = np.random.default_rng(seed)
    return [render_page([str(w) for w in rng.choice(WORDS, words)], size(rng), rng) for _ in range(n)]


def page_images(n: int, seed: int = 0) -> list:
    """``n`` deterministic text pages of :data:`PAGE_SIZE`, the real-size benchmarks' pages."""
    return _rendered(n, seed, 40, lambda rng: PAGE_SIZE)


def small_page_images(n: int, seed: int = 0) -> list:
    """``n`` deterministic small text pages (300-419 x 380-519 px), the tiny models' pages."""
    return _rendered(n, seed, 24, lambda rng: (int(rng.integers(300, 420)), int(rng.integers(380, 520))))


def page_rates(encoder, adapter, images, batch_size: int, repeats: int) -> tuple[float, float]:
    """Pages/s of the torch-free runtime and of the PyTorch reference forward, same pages and batches."""
    import torch

    def run_ort():
        for i in range(0, len(images), batch_size):
            encoder.encode_pages(images[i:i + batch_size])

    def run_torch():
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                adapter.model(**adapter.page_inputs(images[i:i + batch_size]))

    return len(images) / best_of(run_ort, repeats), len(images) / best_of(run_torch, repeats)


# ---------------------------------------------------------------------------------------------- models and data


def build_bundle(work: Path, family: str, text_layers: int, vision_blocks: int, dtype: str = "fp32") -> Path:
    """A random-weight ``family`` checkpoint at real width, calibrated on 2 toy pairs and exported as ``dtype``."""
    from sapindex.exporter.export import ExportConfig, export_bundle
    from sapindex.testing.pipeline import calibrate
    from sapindex.testing.real_size import build_real_size
    from sapindex.testing.toy_pages import write_pairs

    model = build_real_size(work / "model", family, text_layers, vision_blocks)
    _, calibration, _ = calibrate(model, write_pairs(work / "pairs", n=2), work / "calib")
    export_bundle(ExportConfig(model=str(model), calibration=str(calibration), out=str(work / "bundle.sap"),
                               dtype=dtype))
    return work / "bundle.sap"


def build_layer_stack(path: Path, layers: int, width: int, mlp: int) -> int:
    """Write a stack of transformer-like layers (q/k/v sharing an input, gate/up sharing one, o and
    down alone) at ``path`` with external data; returns its fp32 weight bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"

    def product(name: str, source: str, rows: int, cols: int) -> str:
        weights.append(numpy_helper.from_array(rng.standard_normal((rows, cols), dtype=np.float32) / rows**0.5, name))
        nodes.append(helper.make_node("MatMul", [source, name], [f"{name}.out"], name=f"{name}.matmul"))
        return f"{name}.out"

    for i in range(layers):
        q, k, v = (product(f"l{i}.{n}", x, width, width) for n in "qkv")
        nodes.append(helper.make_node("Sum", [q, k, v], [f"l{i}.attn"]))
        h = product(f"l{i}.o", f"l{i}.attn", width, width)
        gate, up = product(f"l{i}.gate", h, width, mlp), product(f"l{i}.up", h, width, mlp)
        nodes.append(helper.make_node("Add", [gate, up], [f"l{i}.act"]))
        x = product(f"l{i}.down", f"l{i}.act", mlp, width)
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, width])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path),
              save_as_external_data=True, location=path.name + ".data")
    return sum(w.dims[0] * w.dims[1] * 4 for w in weights)


# The micro model's benchmark: the synthetic held-out set (bench/micro_model.py).
SYNTHETIC = dict(pages=500, queries=500, seed=1234, vocab_size=1000, min_font_px=22)


def synthetic_set(path: Path, split: str, spec: dict) -> Path:
    """The synthetic data set ``spec`` (``split``) at ``path``, built unless it is already there."""
    if not (path / "manifest.json").exists():
        run([sys.executable, "-m", "sapindex.benchdata.synthetic", "--out", str(path), "--split", split,
             "--pages", str(spec["pages"]), "--queries", str(spec["queries"]), "--seed", str(spec["seed"]),
             "--vocab-size", str(spec["vocab_size"]), "--min-font-px", str(spec["min_font_px"])])
    return path


def source_data(work: Path, n_pages: int, n_queries: int) -> dict:
    """Kept (0.1) and full vectors of the source pages, and the queries (texts and vectors)."""
    cache = work / f"source-{n_pages}-{n_queries}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        return {k: z[k] for k in z.files}
    from sapindex.benchdata.synthetic import build_benchmark
    from sapindex.eval.datasets import load_dataset
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.defaults import default_bundle_path
    from sapindex.runtime.encoder import Encoder, prune

    bench = work / "benchmark"
    if not (bench / "manifest.json").exists():
        build_benchmark(bench, n_pages=n_pages, n_queries=n_queries, seed=1234, vocab_size=1000, min_font_px=22)
    ds = load_dataset(bench)
    enc = Encoder(Bundle.open(default_bundle_path()))
    kept, full = [], []
    for i in range(0, len(ds.pages), 8):
        for tokens in enc.encode_pages([p.load() for p in ds.pages[i:i + 8]]):
            kept.append(prune(tokens, 0.1).vectors)
            full.append(tokens.embeddings)
    texts = [q.text for q in ds.queries]
    qv = enc.encode_queries(texts)
    out = {"kept": np.array(kept, dtype=object), "full": np.array(full, dtype=object),
           "texts": np.array(texts, dtype=object), "queries": np.array(qv, dtype=object)}
    np.savez(cache, **out)
    return out
