"""The full-depth benchmark: every step a user runs, per family at real size, on this machine.

For each family: a random-weight checkpoint at its published size and depth
(``sapindex.testing.real_size``), then, each step in its own process with its peak RSS:
- `sapindex calibrate` on a few pairs (seconds per pair, 500 pairs extrapolated and labelled so);
- `sapindex export` in fp32 and in int8 (time, peak RSS, bundle size, the validation's figures);
- pages/s on realistic pages (1100 x 850 px; ~744 visual tokens for ColQwen2): `sapindex index`
  with each bundle (the CLI as a user runs it: process start, bundle load, preprocessing and
  writing included), and the runtime's ``Encoder`` under PyTorch's conditions (bundle open, one
  small warm-up page, then the same pages) against colpali-engine's PyTorch forward on the same
  weights with eager and with sdpa attention, each in its own process, interleaved over
  ``--rounds`` (A, B, A, B: this machine's speed drifts by 1.5x between hours); the ratios compare
  the latter two round by round: median (range);
- `sapindex search`: the first answer from the CLI (bundle load included), then later answers
  through the Python API with the searcher loaded.
Random weights say nothing about retrieval quality; they show memory, time and numerics.
An int8 bundle that breaks the int8 validation rules is refused by `export`: the table says so
with the validation's figures, and times the fp32 bundle only.
Usage: python bench/full_depth.py [--families colqwen2,colpali] [--pages 2] [--pairs 2]
       [--dtypes fp32,int8 | fp32,int8-blockwise] [--rounds 3]
       [--work DIR]
       [--text-layers N --vision-blocks M]  (cut the depth; the table says so)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import PAGE_SIZE, machine, page_images, sapindex

os.environ["HF_HUB_OFFLINE"] = "1"


def pages(directory: Path, n: int) -> list[Path]:
    """``n`` benchmark pages (``page_images``) written as PNG files, for the CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"page-{i:02d}.png" for i in range(n)]
    for path, image in zip(paths, page_images(n), strict=True):
        image.save(path)
    return paths


def timed(cmd: list[str], refusal: str | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS GB, stdout) of one command in a fresh process; exits with its stderr on
    failure, unless an error line starts with ``refusal`` (an expected refusal: its stdout is returned)."""
    started = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = run.stderr.strip().splitlines()
    if run.returncode and not any(refusal and line.startswith(refusal) for line in lines):
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{run.stderr[-3000:]}")
    return seconds, int(lines[-1]) / 1e6, run.stdout


def _per_page(encode, page_dir: str) -> None:
    """Time ``encode(image)`` over the pages, after one small warm-up page; prints JSON."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sorted(Path(page_dir).glob("*.png"))]
    encode(images[0].resize((280, 364)))  # warm-up
    started = time.perf_counter()
    for image in images:
        encode(image)
    seconds = (time.perf_counter() - started) / len(images)
    print(json.dumps({"s_per_page": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def torch_child(model: str, attention: str, page_dir: str) -> None:
    """colpali-engine's forward on the pages, one at a time (model loaded, warmed up)."""
    import torch

    from sapindex.models.adapters import load_adapter

    adapter = load_adapter(model)
    if attention != "eager":
        adapter.model.set_attn_implementation(attention)
    with torch.no_grad():
        _per_page(lambda image: adapter.model(**adapter.page_inputs([image])), page_dir)


def runtime_child(bundle: str, page_dir: str) -> None:
    """sapindex's runtime (preprocessing, both graphs, in-graph SAP) on the pages under the same
    conditions as PyTorch: bundle open, warmed up, one page per call."""
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(Bundle.open(bundle, verify=False))
    _per_page(lambda image: encoder.encode_pages([image]), page_dir)


def search_child(index: str, queries: int) -> None:
    """Later answers through the Python API: the searcher loaded once, then one query at a time."""
    from sapindex import Searcher

    searcher = Searcher.open(index)
    searcher.search("warm-up query")
    started = time.perf_counter()
    for i in range(queries):
        searcher.search(f"total revenue in year {2000 + i}", k=10)
    print(json.dumps({"s_per_query": (time.perf_counter() - started) / queries}))


def bench_family(family: str, work: Path, args) -> list[dict]:
    from sapindex.runtime.bundle import manifest_bytes
    from sapindex.testing.real_size import REAL_SIZES, build_real_size

    real = REAL_SIZES[family]
    layers, blocks = args.text_layers or real.text_layers, args.vision_blocks or real.vision_blocks
    rows: list[dict] = []

    def note(step: str, **figures) -> None:
        rows.append({"family": family, "step": step, **figures})
        print(f"  {family} {step}: {json.dumps(figures)}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    model = build_real_size(work / "model", family, layers, blocks)
    weights = sum(f.stat().st_size for f in model.rglob("*.safetensors"))
    note("build", seconds=time.perf_counter() - started, checkpoint_gb=weights / 1e9, text_layers=layers,
         vision_blocks=blocks, of=f"{real.text_layers}/{real.vision_blocks}")

    page_dir = work / "pages"
    pair_file = work / "pairs.jsonl"  # realistic pages (as indexed below), one query each
    page_paths = pages(page_dir, max(args.pairs, args.pages))
    pair_file.write_text("".join(json.dumps({"query": f"total revenue {i}", "image": str(path)}) + "\n"
                                 for i, path in enumerate(page_paths)))
    seconds, peak, _ = timed(sapindex("calibrate", "--model", model, "--pairs", pair_file, "--out", work / "calib",
                                      "--limit", args.pairs, "--json"))
    # the whole run over its pairs: the per-pair figure includes a share of the model load
    note("calibrate", seconds=seconds, peak_gb=peak, pairs=args.pairs)
    calibration = work / "calib" / "calibration.json"

    bundles = {}
    for name in args.dtypes.split(","):
        out = work / f"{name}.sap"
        dtype, _, scheme = name.partition("-")  # int8-blockwise: --dtype int8 --int8-scheme blockwise
        seconds, peak, stdout = timed(sapindex("export", "--model", model, "--calibration", calibration, "--out", out,
                                               "--dtype", dtype, *(["--int8-scheme", scheme] if scheme else []),
                                               "--json"), refusal="error: export validation failed")
        printed = json.loads(stdout)
        refused = "error" in printed  # the bundle broke its dtype's validation rules: no bundle to time
        v = printed["validation"]
        figures = dict(min_cosine=v["min_cosine_embeddings"], min_jaccard=v["min_kept_jaccard_at_0.1"],
                       mean_jaccard=v["mean_kept_jaccard_at_0.1"], max_abs_diff=v["max_abs_diff_embeddings"])
        if refused:
            note(f"export {name}", seconds=seconds, peak_gb=peak, refused=printed["error"], **figures)
            continue
        note(f"export {name}", seconds=seconds, peak_gb=peak, bundle_gb=manifest_bytes(printed) / 1e9, **figures)
        bundles[name] = out

    for dtype, bundle in bundles.items():
        index = work / f"index-{dtype}"
        seconds, peak, stdout = timed(sapindex("index", page_dir, "--bundle", bundle, "--out", index, "--json"))
        note(f"index {dtype}", s_per_page=seconds / len(page_paths), peak_gb=peak)
    children = {f"runtime {d}": ["--runtime-child", b, page_dir] for d, b in bundles.items()}
    children |= {f"pytorch {a}": ["--torch-child", model, a, page_dir] for a in ("eager", "sdpa")}
    rounds: dict[str, list[tuple[float, float]]] = {step: [] for step in children}
    for _ in range(args.rounds):  # A, B, A, B
        for step, child in children.items():
            _, peak, stdout = timed([sys.executable, __file__, *map(str, child)])
            rounds[step].append((json.loads(stdout)["s_per_page"], peak))
    for step, runs in rounds.items():
        per_round = [s for s, _ in runs]
        note(step, s_per_page=float(np.median(per_round)), rounds=per_round, peak_gb=max(p for _, p in runs))

    index = work / "index-fp32"
    seconds, peak, _ = timed(sapindex("search", index, "total revenue", "-k", "10", "--json"))
    _, _, stdout = timed([sys.executable, __file__, "--search-child", str(index), "5"])
    note("search", first_answer_s=seconds, first_answer_peak_gb=peak,
         later_answer_s=json.loads(stdout)["s_per_query"])
    return rows


def table(rows: list[dict], int8: str) -> None:
    """The two tables; the int8 columns are the ``int8`` bundle's (a name of --dtypes, e.g. int8-blockwise)."""
    by = {(r["family"], r["step"]): r for r in rows}
    for r in rows:  # one int8 bundle per table: its columns read "int8"
        if r["step"].endswith(f" {int8}"):
            by[(r["family"], r["step"][: -len(int8)] + "int8")] = r
    families = list(dict.fromkeys(r["family"] for r in rows))

    def ratio(f: str, slow: str, fast: str) -> str:
        """slow / fast round by round: median (range)."""
        if (f, slow) not in by or (f, fast) not in by:
            return "—"
        r = np.array(by[(f, slow)]["rounds"]) / np.array(by[(f, fast)]["rounds"])
        return f"{np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f})"

    def cell(f: str, step: str, key: str, spec: str = ".1f") -> str:
        row = by.get((f, step), {})
        return format(row[key], spec) if key in row else ("refused" if "refused" in row else "—")

    print("| family | depth (text / vision) | checkpoint GB | bundle GB fp32 / int8 | export s fp32 / int8 | "
          "export peak GB fp32 / int8 | peak / fp32 bundle | calibrate s/pair (500 pairs, extrapolated) |")
    print("|---|---|---|---|---|---|---|---|")
    for f in families:
        b, c, e32 = by[(f, "build")], by[(f, "calibrate")], by[(f, "export fp32")]
        per_pair = c["seconds"] / c["pairs"]
        print(f"| {f} | {b['text_layers']} / {b['vision_blocks']} of {b['of']} | {b['checkpoint_gb']:.2f} | "
              f"{e32['bundle_gb']:.2f} / {cell(f, 'export int8', 'bundle_gb', '.2f')} | "
              f"{e32['seconds']:.0f} / {cell(f, 'export int8', 'seconds', '.0f')} | "
              f"{e32['peak_gb']:.1f} / {cell(f, 'export int8', 'peak_gb')} | "
              f"{e32['peak_gb'] / e32['bundle_gb']:.2f}x | "
              f"{per_pair:.0f} ({500 * per_pair / 3600:.1f} h) |")
    print()
    print("| family | `index` CLI s/page fp32 / int8 (peak GB) | runtime s/page fp32 / int8 | PyTorch eager s/page | "
          "PyTorch sdpa s/page | fp32 vs eager | fp32 vs sdpa | int8 vs eager | int8 validation: min cosine, "
          "kept-set Jaccard min / mean | search: first answer s (CLI) | later answers s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in families:
        eager, sdpa = by[(f, "pytorch eager")]["s_per_page"], by[(f, "pytorch sdpa")]["s_per_page"]
        e8, s = by.get((f, "export int8"), {}), by[(f, "search")]
        validation = (f"{e8['min_cosine']:.4f}, {e8['min_jaccard']:.2f} / {e8['mean_jaccard']:.2f}"
                      if "min_cosine" in e8 else "—") + (" (refused)" if "refused" in e8 else "")
        cli = " / ".join(f"{r['s_per_page']:.1f} ({r['peak_gb']:.1f})" if r else "—"
                         for r in (by.get((f, "index fp32")), by.get((f, "index int8"))))
        fp32, int8 = (by.get((f, f"runtime {d}"), {}).get("s_per_page") for d in ("fp32", "int8"))
        runtime = " / ".join(f"{x:.1f}" if x else "—" for x in (fp32, int8))
        ratios = " | ".join(ratio(f, f"pytorch {a}", f"runtime {d}")
                            for a, d in (("eager", "fp32"), ("sdpa", "fp32"), ("eager", "int8")))
        print(f"| {f} | {cli} | {runtime} | {eager:.1f} | {sdpa:.1f} | {ratios} | {validation} | "
              f"{s['first_answer_s']:.1f} | {s['later_answer_s']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="colqwen2,colpali,colidefics3,colqwen2_5,jina_v4")
    parser.add_argument("--pages", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,int8",
                        help="bundles to export and time (fp32 first; int8 or int8-blockwise, one of them)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four encoders")
    parser.add_argument("--text-layers", type=int, default=None)
    parser.add_argument("--vision-blocks", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--rows", type=Path, default=None, help="append each family's raw figures to this JSONL")
    parser.add_argument("--torch-child", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--search-child", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--runtime-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        return torch_child(*args.torch_child)
    if args.runtime_child:
        return runtime_child(*args.runtime_child)
    if args.search_child:
        return search_child(args.search_child[0], int(args.search_child[1]))

    rows = []
    for family in args.families.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"sap-{family}-", dir=args.work))
        try:
            family_rows = bench_family(family, work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # checkpoints and bundles are GBs each
        rows += family_rows
        if args.rows:
            with args.rows.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in family_rows)
    int8 = next((name for name in args.dtypes.split(",") if name.startswith("int8")), "int8")
    print(f"# full-depth benchmark, random weights at published sizes; {args.pages} pages of "
          f"{PAGE_SIZE[0]}x{PAGE_SIZE[1]} px, {args.pairs} calibration pairs, {args.rounds} interleaved rounds; "
          f"int8 columns: {int8}; "
          f"{machine()}\n")
    table(rows, int8)


if __name__ == "__main__":
    main()
