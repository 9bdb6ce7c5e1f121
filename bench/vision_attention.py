"""The vision graph's attention at real width, side by side: this checkout's form, an earlier one, PyTorch.

Why: the vision tower is ~70 % of a page's time at real size, and its attention over ~3,000
patches is where the exported graph and PyTorch's sdpa differ most. This script builds a
real-width checkpoint (``sapindex.testing.real_size``, ``--vision-blocks`` blocks), exports its
vision graph twice (``VisionGraph`` of this checkout, and of git revision ``--before``), checks
both against colpali-engine's PyTorch vision tower on the same weights and page, and times
them with ONNX Runtime (sapindex's session settings) alongside PyTorch eager and sdpa, the four
alternating over rounds in one process (compare ratios: the machine is shared and noisy).
Usage: python bench/vision_attention.py [--families colqwen2,colqwen2_5] [--vision-blocks 8] [--rounds 2]
       [--before REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import PAGE_SIZE, ROOT, page_images

os.environ["HF_HUB_OFFLINE"] = "1"

GRAPH_MODULE = "sapindex/exporter/graphs/qwen2_vl.py"


def module_at(revision: str, work: Path):
    """``GRAPH_MODULE`` as it was at ``revision``, imported under its own name."""
    source = subprocess.run(["git", "show", f"{revision}:{GRAPH_MODULE}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = work / "vision_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("vision_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tower_output(visual, inputs) -> np.ndarray:
    """colpali-engine's (transformers') vision tower on the processor's packed patches: ``[T, D]``."""
    out = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    if not hasattr(out, "shape"):  # newer transformers: an output object, merged features as its pooler output
        out = out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]
    return out.float().numpy()


def bench_family(family: str, args, work: Path) -> dict:
    import onnxruntime as ort
    import torch

    from sapindex.exporter.export import export_graph
    from sapindex.exporter.graphs import qwen2_vl
    from sapindex.exporter.validate import validation_pages
    from sapindex.families import FAMILIES
    from sapindex.models.adapters import load_adapter
    from sapindex.runtime.session import session_options
    from sapindex.testing.real_size import build_real_size

    model = build_real_size(work / family, family, 1, args.vision_blocks)
    adapter = load_adapter(str(model))
    visual, windowed = adapter.model.visual, adapter.info.family.model_type == "qwen2_5_vl"
    before = module_at(args.before, work)
    example = adapter.graph_inputs(adapter.page_inputs(validation_pages(2)))  # two pages: batch stays dynamic
    trace = (example["pixel_values"], example["image_grid_thw"])
    inputs = adapter.page_inputs(page_images(1))
    feed = adapter.graph_inputs(inputs)
    feed = {"pixel_values": feed["pixel_values"].numpy(), "image_grid_thw": feed["image_grid_thw"].numpy()}
    with torch.no_grad():
        reference = tower_output(visual, inputs)
    sessions, diffs = {}, {}
    forms = {"after": qwen2_vl.VisionGraph(visual, windowed), "before": before.VisionGraph(visual, windowed)}
    for name, graph in forms.items():
        path = work / f"{family}-{name}.onnx"
        with torch.no_grad():
            export_graph(graph.eval(), trace, path, "vision", 18, family, FAMILIES[family].graph_io())
        sessions[name] = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        out = sessions[name].run(None, feed)[0][0]
        diffs[name] = float(np.abs(out - reference).max())

    def torch_run(attention: str):
        adapter.model.set_attn_implementation(attention)
        with torch.no_grad():
            tower_output(visual, inputs)

    runs = {"after": lambda: sessions["after"].run(None, feed), "before": lambda: sessions["before"].run(None, feed),
            "eager": lambda: torch_run("eager"), "sdpa": lambda: torch_run("sdpa")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {"family": family, "patches": int(feed["pixel_values"].shape[1]), "blocks": args.vision_blocks,
            **{name: min(t) for name, t in times.items()}, "diff_after": diffs["after"], "diff_before": diffs["before"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="colqwen2,colqwen2_5")
    parser.add_argument("--vision-blocks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default="2542232", help="git revision of the earlier form (default: the mask form)")
    args = parser.parse_args()
    rows = []
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory(prefix="sap-vision-") as work:
            rows.append(bench_family(family, args, Path(work)))
    print(f"# vision attention at real width, {args.vision_blocks} blocks, one {PAGE_SIZE[0]}x{PAGE_SIZE[1]} px page; "
          f"best of {args.rounds} rounds; before = {args.before}; {platform.machine()} {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| family | patches | ORT now s | ORT before s | PyTorch eager s | PyTorch sdpa s | now vs before | "
          "now vs eager | now vs sdpa | max abs diff vs PyTorch: now / before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['patches']} | {r['after']:.2f} | {r['before']:.2f} | {r['eager']:.2f} | "
              f"{r['sdpa']:.2f} | {r['before'] / r['after']:.2f}x | {r['eager'] / r['after']:.2f}x | "
              f"{r['sdpa'] / r['after']:.2f}x | {r['diff_after']:.1e} / {r['diff_before']:.1e} |")


if __name__ == "__main__":
    main()
