"""Fast mode vs exact mode: retrieval quality on the micro model, speed at real width.

Fast mode (``index --mode fast``) runs the decoder layers after the SAP window on the prompt and the
kept tokens only; exact mode runs them on every token. The head (every layer through the window,
where SAP picks the tokens) and the vision tower are the same in both.

Usage:
    python bench/fast_mode.py quality [--bundle B] [--synthetic DIR] [--debian DIR] [--work DIR]
    python bench/fast_mode.py speed [--windows 18:24,11:17] [--pages 2] [--text-layers 28] [--work DIR]

``quality``: ``sapindex eval B SET --methods full,sap,sap-fast`` on the synthetic held-out set and the
Debian PDF set (bench/micro_model.py, bench/debian_docs.py): NDCG@5 and retention, S.Ret and the cosine
between fast and exact vectors of the same kept tokens, at keep 0.2 / 0.1 / 0.05.

``speed``: the built-in micro bundle, then a random-weight ColQwen2 at Qwen2-VL-2B widths and depth
(``sapindex.testing.real_size``), calibrated on 2 pairs and exported once per window (``--window``). For
each bundle, realistic pages (1100 x 850 px) are encoded in exact mode and in fast mode at each ratio,
in turn, one batch at a time (the bundle's default batch on a CPU); the time of each graph is summed from
the runtime's own calls (vision, head, tail; "other" is preprocessing, the gather and SAP). Ratios, not
absolute times: this machine is shared. Prints markdown (the RESULTS.md section).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from harness import ROOT, machine, page_images, run, sapindex

os.environ["HF_HUB_OFFLINE"] = "1"

RATIOS = (0.2, 0.1, 0.05)


# ---------------------------------------------------------------------------------------------- quality

def quality(args) -> None:
    sets = {"synthetic held-out set (500 pages, 500 queries)": Path(args.synthetic),
            "Debian *-doc PDFs (500 pages, 500 queries)": Path(args.debian)}
    ratios = ",".join(f"{r:g}" for r in RATIOS)
    print("## Fast mode: retrieval quality on the micro model (sap-fast vs sap)\n")
    print(f"- machine: {machine()}; "
          f"bundle {args.bundle}")
    for name, path in sets.items():
        if not (path / "manifest.json").exists() and not (path / "corpus").exists():
            print(f"\n{name}: {path} absent, skipped")
            continue
        out = Path(args.work) / f"eval-{path.name}"
        if not (out / "report.json").exists():  # a finished eval is reused: delete OUT to run it again
            run(sapindex("eval", args.bundle, path, "--methods", "full,sap,sap-fast", "--keep-ratios", ratios,
                         "--out", out))
        report = json.loads((out / "report.json").read_text())
        print(f"\n### {name}\n")
        print(f"- command: `sapindex eval {args.bundle} {path} --methods full,sap,sap-fast --keep-ratios {ratios} "
              f"--out {out}`")
        full = report["results"]["full"]["1.0"]["metrics"]["ndcg@5"]
        print(f"- full (every token): NDCG@5 {full:.3f}\n")
        print("| keep | SAP NDCG@5 (retention) | SAP-fast NDCG@5 (retention) | SAP S.Ret | SAP-fast S.Ret | "
              "cosine fast vs exact, same tokens: mean / 1st pct / min | kept sets differing |")
        print("|---|---|---|---|---|---|---|")
        for ratio in RATIOS:
            sap, fast = (report["results"][m][f"{ratio:g}"] for m in ("sap", "sap-fast"))
            cos = fast["cosine_vs_exact"]
            print(f"| {ratio:g} | {sap['metrics']['ndcg@5']:.3f} ({sap['retention']['ndcg@5']:.0%}) | "
                  f"{fast['metrics']['ndcg@5']:.3f} ({fast['retention']['ndcg@5']:.0%}) | {sap['s_ret']:.3f} | "
                  f"{fast['s_ret']:.3f} | {cos['mean']:.3f} / {cos['p01']:.3f} / {cos['min']:.3f} | "
                  f"{cos['kept_sets_differing']} |")


# ---------------------------------------------------------------------------------------------- speed

class GraphClock:
    """Seconds spent in each graph, summed from the runtime's own calls (vision, head, tail, text)."""

    def __init__(self, sessions):
        self.seconds: dict[str, float] = defaultdict(float)
        run, features = sessions._run, sessions._image_features

        def timed_run(name, feed, outputs=None):
            started = time.perf_counter()
            out = run(name, feed, outputs)
            self.seconds[name] += time.perf_counter() - started
            return out

        def timed_features(feed):
            started = time.perf_counter()
            out = features(feed)
            self.seconds["vision"] += time.perf_counter() - started
            return out

        sessions._run, sessions._image_features = timed_run, timed_features


def time_modes(bundle: Path, n_pages: int) -> dict:
    """Per mode (exact, fast at each ratio): seconds per page in all and per graph, modes taken in turn
    on each batch of the same pages, after one warm-up batch in each mode."""
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder
    from sapindex.runtime.options import IndexOptions, default_batch_size

    b = Bundle.open(bundle)
    encoder = Encoder(b)
    clock = GraphClock(encoder.sessions)
    batch = default_batch_size(b, "cpu")
    images = page_images(n_pages + batch)
    modes = [("exact", 0.1)] + [("fast", r) for r in RATIOS]
    warm, images = images[:batch], images[batch:]
    for mode, ratio in modes:
        encoder.encode_pages_pruned(warm, IndexOptions(keep_ratio=ratio, mode=mode))
    totals = {m: defaultdict(float) for m in modes}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        for mode, ratio in modes:
            clock.seconds.clear()
            started = time.perf_counter()
            kept = encoder.encode_pages_pruned(chunk, IndexOptions(keep_ratio=ratio, mode=mode))
            totals[(mode, ratio)]["all"] += time.perf_counter() - started
            for name, seconds in clock.seconds.items():
                totals[(mode, ratio)][name] += seconds
            totals[(mode, ratio)]["tokens"] += sum(k.n_visual for k in kept)
    per_page = {f"{m} {r:g}" if m == "fast" else m: {k: v / len(images) for k, v in t.items()}
                for (m, r), t in totals.items()}
    return {"bundle": str(bundle), "window": list(b.window), "n_layers": b.manifest["n_layers"], "batch": batch,
            "pages": len(images), "per_page": per_page}


def speed_table(result: dict, label: str) -> list[str]:
    exact = result["per_page"]["exact"]
    start, end = result["window"]
    lines = [f"\n### {label}: window [{start}, {end}) of {result['n_layers']} layers "
             f"({result['n_layers'] - end} after it), {result['pages']} pages of "
             f"{exact['tokens']:.0f} visual tokens, batch {result['batch']}\n",
             "| mode | s/page | speed-up, page | vision | head | tail | other | speed-up, decoder (head + tail) | "
             "tail time saved, % of an exact page |", "|---|---|---|---|---|---|---|---|---|"]
    decoder = exact.get("head", 0.0) + exact.get("tail", 0.0)
    for mode, t in result["per_page"].items():
        shares = " | ".join(f"{t.get(g, 0.0):.2f} ({t.get(g, 0.0) / t['all']:.0%})" for g in ("vision", "head", "tail"))
        other = t["all"] - sum(t.get(g, 0.0) for g in ("vision", "head", "tail"))
        saved = (exact.get("tail", 0.0) - t.get("tail", 0.0)) / exact["all"]
        ours = t.get("head", 0.0) + t.get("tail", 0.0)
        lines.append(f"| {mode} | {t['all']:.2f} | {exact['all'] / t['all']:.2f}x | {shares} | "
                     f"{other:.2f} ({other / t['all']:.0%}) | {decoder / ours:.2f}x | {saved:.1%} |")
    return lines


def speed(args) -> None:
    from sapindex.runtime.defaults import default_bundle_path
    from sapindex.testing.real_size import REAL_SIZES, build_real_size

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["## Fast mode: speed (exact vs fast, time per graph)", "",
             f"- command: `python bench/fast_mode.py speed --windows {args.windows} --pages {args.pages} "
             f"--text-layers {args.text_layers}`; {machine()}",
             "- each batch is encoded in every mode in turn (exact, then fast at 0.2 / 0.1 / 0.05) after one "
             "warm-up batch per mode; seconds per page; graph times summed from the runtime's calls; other = "
             "preprocessing, the gather of the kept tokens, SAP"]
    lines += speed_table(time_modes(default_bundle_path(), args.micro_pages), "micro model (built-in bundle)")
    real = REAL_SIZES["colqwen2"]
    model = build_real_size(work / "model", "colqwen2", args.text_layers, real.vision_blocks)
    pages = work / "pages"
    pages.mkdir(exist_ok=True)
    pairs = work / "pairs.jsonl"
    rows = []
    for i, image in enumerate(page_images(2)):
        image.save(pages / f"p{i}.png")
        rows.append(json.dumps({"query": f"total revenue {i}", "image": str(pages / f"p{i}.png")}))
    pairs.write_text("\n".join(rows) + "\n")
    calibration = work / "calib" / "calibration.json"
    if not calibration.exists():
        run(sapindex("calibrate", "--model", model, "--pairs", pairs, "--out", work / "calib", "--limit", 2))
    for window in args.windows.split(","):
        bundle = work / f"colqwen2-{window.replace(':', '-')}.sap"
        if not (bundle / "manifest.json").exists():
            run(sapindex("export", "--model", model, "--calibration", calibration, "--out", bundle,
                         "--window", window, "--overwrite"))
        result = time_modes(bundle, args.pages)
        lines += speed_table(result, f"ColQwen2 at Qwen2-VL-2B widths, random weights ({args.text_layers} decoder "
                                     f"layers, {real.vision_blocks} vision blocks, fp32)")
        shutil.rmtree(bundle)  # 7.4 GB each
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--bundle", default=str(ROOT / "sapindex" / "assets" / "micro-colqwen2.sap"))
    q.add_argument("--synthetic", default=str(ROOT / "bench-data" / "micro" / "synthetic-test"))
    q.add_argument("--debian", default=str(ROOT / "bench-data" / "debian-docs-bench"))
    q.add_argument("--work", default=str(ROOT / "bench-data" / "fast-mode"))
    s = sub.add_parser("speed")
    s.add_argument("--windows", default="18:24", help="SAP windows to export and time, START:END,...")
    s.add_argument("--pages", type=int, default=2, help="timed real-size pages (after one warm-up page)")
    s.add_argument("--micro-pages", type=int, default=32)
    s.add_argument("--text-layers", type=int, default=28)
    s.add_argument("--work", default=tempfile.mkdtemp(prefix="fast-mode-"))
    args = parser.parse_args()
    quality(args) if args.part == "quality" else speed(args)


if __name__ == "__main__":
    main()
