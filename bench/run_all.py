"""Regenerate every number in bench/RESULTS.md: runs each benchmark script and rewrites the file.

Usage: python bench/run_all.py [--quick] [--only SCRIPT[,SCRIPT]] [--ship]
  --quick: smaller sizes, for a smoke run; --only: rerun just those scripts' sections and keep the
  others as they are in the file; --ship: micro_model.py ships the checkpoint and its bundle as the
  built-in default (its own --ship), so a new model's numbers and its shipped bundle come from one run.
Each section records the exact command and its date, and the file header records the machine. Sections
no script regenerates (measured by hand with several commands, or of a retired script) are kept as written.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (title, [script, always-args...], extra args for --quick, note)
SECTIONS = [
    ("Calibration throughput: batch size 1 vs batched",
     ["calibration_throughput.py"], ["--pairs", "16", "--batch-sizes", "1,4"],
     "Same tiny model and pairs for every batch size; the script asserts the SR curves agree. "
     "Includes model loading and image decoding."),
    ("Calibration throughput at real width: batch size 1 vs 4",
     ["calibration_throughput.py", "--real-width", "8,8", "--pairs", "4", "--batch-sizes", "1,4", "--repeats", "1"],
     ["--real-width", "1,1", "--pairs", "2"],
     "ColQwen2 at Qwen2-VL-2B widths with 8 decoder layers and 8 vision blocks (random weights), the toy pairs' "
     "pages; why `calibrate` defaults to batch size 1 on a CPU. Includes model loading."),
    ("Runtime: ONNX Runtime vs PyTorch eager, SAP overhead, index size and search latency",
     ["runtime_speed.py"], ["--pages", "4", "--index-pages", "60", "--skip-real"],
     "ONNX Runtime includes the torch-free numpy preprocessing; PyTorch eager is colpali-engine's "
     "processor + forward on the same weights. The real-width model has Qwen2-VL-2B widths with few "
     "layers and random weights."),
    ("Per family: ONNX Runtime vs PyTorch eager on the same weights (tiny models)",
     ["family_speed.py"], ["--pages", "4", "--batch-sizes", "1,4", "--repeats", "1"],
     "Every family sapindex builds offline (random weights), each calibrated, exported and validated in "
     "the same process; ONNX Runtime includes the torch-free preprocessing and the in-graph SAP centrality, "
     "PyTorch eager is the family's reference forward (colpali-engine / transformers) on its processor's outputs."),
    ("Per family at real layer widths (reduced depth): ONNX Runtime vs PyTorch eager",
     ["family_speed.py", "--real-width", "--text-layers", "1", "--vision-blocks", "1", "--pages", "4",
      "--batch-sizes", "1,2", "--families", "colqwen2,colqwen2_5,jina_v4,colpali,colidefics3"],
     ["--pages", "2", "--batch-sizes", "1"],
     "Random weights at the real checkpoints' widths (ColQwen2: Qwen2-VL-2B; ColQwen2.5 and jina-v4: Qwen2.5-VL-3B; "
     "ColPali: PaliGemma-3B-448; ColSmol: ColSmol-256M, 512 px tiles) with one decoder layer and one vision block, "
     "so the numbers show the per-layer cost and the runtime's overheads, not a full model's speed."),
    ("Export parity at real width",
     ["real_width_parity.py"], ["--families", "colqwen2", "--text-layers", "1", "--vision-blocks", "1"],
     "Random weights at the real checkpoints' layer widths; the numbers are the export's own validation "
     "(ONNX Runtime vs PyTorch) on real page sizes."),
    ("Micro retriever (built-in default): SR curve, window, held-out eval tables, positional bias",
     ["micro_model.py"], [],
     "The shipped weights (sapindex/assets/micro-colqwen2), calibrated on train-split pairs and exported; "
     "eval by `sapindex eval` on the synthetic test split (500 pages, 500 queries, seed 1234, vocabulary 1,000 "
     "words, fonts >= 22 px) and on 500 pages of Debian *-doc PDF manuals (bench/debian_docs.py). "
     "S.Ret = pruned score / full score on the relevant page."),
    ("Runtime memory: the vision graph per page vs per batch",
     ["vision_batching.py"], ["--pages", "8", "--repeats", "1"],
     "The built-in micro bundle on synthetic pages; each mode in its own process (peak RSS is the process's). "
     "The runtime feeds the vision graph one page per call; `batched` is one call for the whole batch."),
    ("Export peak memory at real width (reduced depth)",
     ["export_memory.py", "--family", "colqwen2", "--text-layers", "8", "--vision-blocks", "8"],
     ["--text-layers", "2", "--vision-blocks", "2"],
     "`sapindex export` in a fresh process (peak RSS by /usr/bin/time) on a random-weight ColQwen2 at "
     "Qwen2-VL-2B widths; the bundle is fp32. Issue 15's target is a peak of at most ~1.3x the bundle."),
    ("ONNX Runtime session settings at real width",
     ["session_options.py", "--family", "colqwen2", "--text-layers", "8", "--vision-blocks", "8"],
     ["--text-layers", "2", "--vision-blocks", "2", "--pages", "1", "--rounds", "1"],
     "Each variant in a fresh process on the same bundle and pages, alternating over rounds; sapindex's "
     "sessions use the last row (sapindex.runtime.session.SESSION_CONFIG and CPU_MEM_ARENA)."),
    ("int8 quantization memory: ONNX Runtime's single pass vs sapindex's passes",
     ["quantize_memory.py", "--layers", "16"], ["--layers", "2", "--width", "256", "--mlp", "512"],
     "A synthetic stack of transformer-like layers at Qwen2-VL-2B's text width, written as an export writes it; "
     "each quantizer in a fresh process, its peak RSS above the process's own baseline."),
    ("int8 schemes at real width: speed and closeness to fp32",
     ["int8_schemes.py"], ["--layers", "1", "--width", "256", "--mlp", "512", "--tokens", "64", "--repeats", "2"],
     "A synthetic stack of transformer-like layers at Qwen2-VL-2B's text width (random weights), each variant "
     "quantized by sapindex's quantizer as `export --dtype int8` does, timed alternately in one process; the "
     "blockwise scheme also at other block sizes than its 128."),
    ("int8 schemes on the trained micro model: selection and retrieval vs fp32",
     ["int8_quality.py"], [],
     "The shipped micro checkpoint exported in fp32 (its calibration and window); each int8 scheme's bundle is "
     "that bundle's graphs quantized as `export --dtype int8 --int8-scheme S` does before validating, and "
     "`export`'s own verdict on each scheme is reported beside it; every bundle scored by `sapindex eval "
     "--methods full,sap` on the synthetic held-out set."),
    ("Full depth at real size: calibrate, export, index, search (per family)",
     ["full_depth.py", "--families", "colqwen2", "--pages", "2", "--pairs", "2"],
     ["--families", "colidefics3", "--pages", "1", "--pairs", "1", "--text-layers", "1", "--vision-blocks", "1"],
     "Random weights at the published sizes and depths (sapindex.testing.real_size); every step is the CLI "
     "a user runs, in its own process, with its peak RSS. `index` s/page is the command's wall time over "
     "its pages (process start, bundle load, preprocessing and writing included); the runtime s/page and "
     "PyTorch's (colpali-engine's forward on the same weights) are timed after load and a small warm-up "
     "page, and the ratios compare those two. Calibration s/pair includes the model load "
     "(2 pairs), so the 500-pair figure is an extrapolation and an overestimate of the load's share."),
    ("Eval scoring speed: exact masked MaxSim, 1,000 queries x 1,000 pages",
     ["maxsim_speed.py"], ["--queries", "100", "--pages", "100"],
     "What `sapindex eval` spends on scoring; compare with page encoding above."),
    ("First-stage codecs: faiss IVF quantisers against a numpy PLAID-style stage",
     ["first_stage_codecs.py", "--pages", "20000"], ["--pages", "2000", "--dist", "spread"],
     "The same pages, queries and candidate rule for every codec (see the script's docstring); recall@10 "
     "against the exact MaxSim ranking after rescoring the 256 best estimates exactly."),
    ("A million pages: the compressed first stage at 10^5 and 10^6 pages, in-process and through `serve`",
     ["million_pages.py", "--pages", "1000000", "--dist", "spread"],
     ["--pages", "20000", "--dist", "spread", "--queries", "20"],
     "Kept-vector distributions of `sapindex.benchdata.token_vectors`; exact answers by one streamed pass; "
     "in-process latencies exclude query encoding, the service's include it."),
    ("Qdrant push: pages/s to local mode, bytes per page on the wire and stored, full vectors vs SAP 0.1",
     ["qdrant_push.py", "--pages", "200", "--rounds", "2"], ["--pages", "12", "--rounds", "1"],
     "The same rendered pages indexed at keep 1.0 and 0.1 with the micro bundle, each pushed into a fresh "
     "local-mode collection, alternating; wire bytes are a page's upsert as REST JSON and as gRPC, stored bytes "
     "computed from Qdrant's float16 multivector and its quantized copies."),
    ("Single-writer commit rate: what bounds a scale-out index run",
     ["writer_rate.py", "--prefill", "2000", "--pages", "2048"], ["--prefill", "200", "--pages", "256"],
     "`Index.add_pages` (one atomic commit per call, as every `index` batch) on pages shaped like a real "
     "ColQwen2's at keep 0.1; rows built before the timing. Groundwork for issue 17 (Ray): a cluster feeds "
     "one writer."),
    ("Ray on one machine: `index` locally vs `--ray local` with 1 and 2 encoders",
     ["ray_scaleout.py", "--pages", "96", "--rounds", "2", "--files", "1000,20000,100000"],
     ["--pages", "12", "--rounds", "1", "--files", "1000"],
     "Each run is the CLI in a fresh process on the same PDFs (the built-in micro bundle), alternating over rounds. "
     "`ray AxT` is A encoder actors of T threads each on a private local cluster. The steady rate counts the pages "
     "stored after the first commit over the time to the last (it leaves out the cluster's and the actors' start); "
     "the driver's peak RSS is its VmHWM (for `local` that process also holds the model). The listing rows: "
     "`plan_waves` over single-page PNGs, waves consumed and dropped as the driver does."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--only", default="", help="comma-separated script names, e.g. micro_model.py")
    parser.add_argument("--ship", action="store_true", help="micro_model.py --ship (the built-in default)")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    unknown = only - {script[0] for _, script, _, _ in SECTIONS}
    if unknown:
        sys.exit(f"--only: no section runs {', '.join(sorted(unknown))}")
    kept = _sections(Path(args.out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    parts = [
        "# Benchmark results",
        "",
        f"Regenerated by `python bench/run_all.py{' --quick' if args.quick else ''}` on "
        f"{platform.machine()} with {os.cpu_count()} cores ({platform.platform()}), no GPU unless stated, "
        f"Python {sys.version.split()[0]}. Each section gives its command and date; "
        "the numbers are that command's output.",
    ]
    for title, script, quick_args, note in SECTIONS:
        if only and script[0] not in only:
            if title not in kept:
                sys.exit(f"{args.out} has no section {title!r} to keep; run without --only")
            parts += ["", kept[title]]
            continue
        extra = [*(quick_args if args.quick else []),
                 *(["--ship"] if args.ship and script[0] == "micro_model.py" else [])]
        cmd = [sys.executable, str(HERE / script[0]), *script[1:], *extra]
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"{script[0]} failed:\n{out.stderr[-3000:]}")
        shown = " ".join(["python", f"bench/{script[0]}", *script[1:], *extra])
        body = [line for line in out.stdout.splitlines() if line.strip()]
        parts += ["", f"## {title}", "",
                  f"- command: `{shown}` ({time.perf_counter() - started:.0f} s, {time.strftime('%Y-%m-%d')})",
                  f"- {note}", ""]
        for line in body:
            parts.append(line if line.startswith("|") else ("\n" + line.lstrip("# ").replace("### ", "") + "\n"))
    titles = {title for title, _, _, _ in SECTIONS}
    parts += [f"\n{text}" for title, text in kept.items() if title not in titles]  # written by hand, or retired
    Path(args.out).write_text("\n".join(parts).replace("\n\n\n", "\n\n") + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def _sections(path: Path) -> dict[str, str]:
    """``{title: the section's markdown}`` of an existing results file (for --only)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    chunks = text.split("\n## ")[1:]
    return {chunk.split("\n", 1)[0]: ("## " + chunk).rstrip() for chunk in chunks}


if __name__ == "__main__":
    main()
