"""The micro retriever's numbers: SR curve and window, eval tables on both held-out sets, positional bias.

Usage:
    python bench/micro_model.py [--model sapindex/assets/micro-colqwen2] [--debian bench-data/debian-docs-bench]
                                [--work bench-data/micro] [--ship]

Steps (each a CLI command a user can run, printed as it runs):
1. the synthetic held-out set (test split, 500 pages / 500 queries, seed 1234, the micro model's
   benchmark settings) and a calibration set from the *train* split (seed 99), both regenerated
   if absent (``python -m sapindex.benchdata.synthetic``);
2. ``sapindex calibrate`` on the calibration set (SR curve, window) and ``sapindex export``;
3. ``sapindex eval`` of the bundle on the synthetic set and, when given, the Debian PDF set;
4. positional bias: Pearson r between each page's in-graph SAP centrality and the token index,
   raw and with the causal correction (read from the eval caches);
5. the window: the bundle is calibrated with ``--window-rule sr-peak`` (WINDOW_RULE below);
   Algorithm 1's window, recorded in the same calibration, is exported with ``sapindex export
   --window`` and scored by ``sapindex eval --methods full,sap`` on the synthetic set.
``--ship`` first copies the checkpoint into ``sapindex/assets`` (then calibrates and exports that
copy), and at the end puts the bundle, calibration.json and sr_curve.png there (the built-in default).
Prints markdown (the RESULTS.md section).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from harness import ROOT, SYNTHETIC, run, synthetic_set

CALIBRATION = dict(pages=150, queries=150, seed=99, vocab_size=1000, min_font_px=22)
# The micro model's SR peaks at layer 1 of 6 and its last layer is above the median, so Algorithm 1
# falls back to the last layers; picked on the calibration split's SR, confirmed by step 5.
WINDOW_RULE = "sr-peak"


def positional_bias(eval_dir: Path, bundle: Path, dataset: Path) -> dict:
    """Mean over pages of Pearson r(centrality, token index), raw and causally corrected."""
    from sapindex import sap
    from sapindex.eval.cache import EncodingCache
    from sapindex.eval.datasets import load_dataset
    from sapindex.runtime.bundle import Bundle

    pages = EncodingCache(eval_dir / "cache", Bundle.open(bundle, verify=False), load_dataset(dataset)).load()
    raw, corrected = [], []
    for page in pages.values():
        c = np.asarray(page.centrality, dtype=np.float64)
        if c.size < 3 or np.ptp(c) == 0:
            continue
        position = np.arange(c.size)
        raw.append(np.corrcoef(c, position)[0, 1])
        corrected.append(np.corrcoef(sap.causal_correction(c), position)[0, 1])
    return {"pages": len(raw), "r_raw": float(np.mean(raw)), "r_corrected": float(np.mean(corrected))}


def window_table(calibration: dict, reports: dict[str, dict]) -> list[str]:
    """Markdown table: window, how it was picked, mean calibration SR, SAP NDCG@5 (retention) by keep ratio."""
    sr = calibration["sr"]["mean"]
    keeps = sorted(next(iter(reports.values()))["results"]["sap"], key=float, reverse=True)
    lines = ["| window | picked by | mean SR | " + " | ".join(f"keep {k}" for k in keeps) + " |",
             "|---|---|---|" + "---|" * len(keeps)]
    for how, report in reports.items():
        start, end = report["bundle"]["window"]
        sap = report["results"]["sap"]
        cells = [f"{sap[k]['metrics']['ndcg@5']:.3f} ({sap[k]['retention']['ndcg@5']:.0%})" for k in keeps]
        lines.append(f"| [{start}, {end}) | {how} | {np.mean(sr[start:end]):.3f} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "sapindex" / "assets" / "micro-colqwen2"))
    parser.add_argument("--debian", default=str(ROOT / "bench-data" / "debian-docs-bench"),
                        help="the Debian PDF benchmark (bench/debian_docs.py); skipped if absent")
    parser.add_argument("--work", default=str(ROOT / "bench-data" / "micro"))
    parser.add_argument("--ship", action="store_true", help="copy checkpoint and bundle into sapindex/assets")
    args = parser.parse_args()
    work, model = Path(args.work), Path(args.model)
    work.mkdir(parents=True, exist_ok=True)
    assets = ROOT / "sapindex" / "assets"
    if args.ship and model.resolve() != (assets / "micro-colqwen2").resolve():
        shutil.rmtree(assets / "micro-colqwen2", ignore_errors=True)
        shutil.copytree(model, assets / "micro-colqwen2", ignore=shutil.ignore_patterns("train_state.*"))
        model = assets / "micro-colqwen2"  # calibrate and export the shipped copy, so the bundle names it
    sapindex = [sys.executable, "-m", "sapindex.cli"]
    test_set = synthetic_set(work / "synthetic-test", "test", SYNTHETIC)
    calib_set = synthetic_set(work / "synthetic-calib", "train", CALIBRATION)
    run(sapindex + ["calibrate", "--model", str(model), "--pairs", str(calib_set), "--out", str(work / "calib"),
                    "--limit", str(CALIBRATION["queries"]), "--window-rule", WINDOW_RULE])
    calibration = json.loads((work / "calib" / "calibration.json").read_text())
    bundle = work / "micro-colqwen2.sap"
    run(sapindex + ["export", "--model", str(model), "--calibration", str(work / "calib" / "calibration.json"),
                    "--out", str(bundle), "--overwrite"])
    sets = {"synthetic (500 pages, 500 queries)": test_set}
    if Path(args.debian, "manifest.json").exists():
        sets["Debian *-doc PDFs"] = Path(args.debian)
    reports = {}
    for name, path in sets.items():
        out = work / ("eval-" + path.name)
        run(sapindex + ["eval", str(bundle), str(path), "--out", str(out)])
        reports[name] = (json.loads((out / "report.json").read_text()), (out / "report.md").read_text(),
                         positional_bias(out, bundle, path))

    window = calibration["window"]
    window_reports = {f"{WINDOW_RULE} (shipped)": reports["synthetic (500 pages, 500 queries)"][0]}
    for rule, (start, end) in window["candidates"].items():
        if rule == WINDOW_RULE or [start, end] == [window["start"], window["end"]]:
            continue
        other, out = work / f"micro-colqwen2-{rule}.sap", work / f"eval-window-{rule}"
        run(sapindex + ["export", "--model", str(model), "--calibration", str(work / "calib" / "calibration.json"),
                        "--out", str(other), "--overwrite", "--window", f"{start}:{end}"])
        run(sapindex + ["eval", str(other), str(test_set), "--methods", "full,sap", "--out", str(out)])
        window_reports[f"{rule} (--window)"] = json.loads((out / "report.json").read_text())

    log = json.loads((model / "train_log.json").read_text())
    curve = ", ".join(f"{h['step']}: {h['ndcg5']:.3f}" for h in log["history"])
    words_only = ", ".join(f"{h['step']}: {h['ndcg5_query_words_only']:.3f}" for h in log["history"]
                           if "ndcg5_query_words_only" in h)
    print("### Training")
    print()
    print(f"`python -m sapindex.micro.train` (seed {log['config']['seed']}): {log['parameters'] / 1e6:.2f} M "
          f"parameters, {log['train_seconds'] / 60:.0f} min of training + {log['render_seconds']:.0f} s of page "
          f"rendering on {log['threads']} threads ({log['machine']}, torch {log['torch']}). Validation NDCG@5 "
          f"({log['config']['val_pages']} held-out pages, chance ~{2 / log['config']['val_pages']:.2f}) by step: "
          f"{curve}; best {log['best_val_ndcg5']:.3f} (shipped). Scored with the query's own words only (no prefix, "
          f"no augmentation tokens) by step: {words_only or 'not logged'}.")
    print()
    sr = calibration["sr"]["mean"]
    print("### SR curve and window")
    print()
    print(f"Calibrated on {calibration['pairs']['used']} train-split pairs (`sapindex calibrate --pairs "
          f"{calib_set.relative_to(ROOT) if calib_set.is_relative_to(ROOT) else calib_set} --window-rule "
          f"{WINDOW_RULE}`): window layers [{window['start']}, {window['end']}) of {len(sr)} (every rule's pick: "
          + ", ".join(f"{rule} [{a}, {b})" for rule, (a, b) in window["candidates"].items())
          + f"); random floor {calibration['random_floor']['mean']:.3f}.")
    print()
    print("| layer | " + " | ".join(str(i) for i in range(len(sr))) + " |")
    print("|---|" + "---|" * len(sr))
    print("| SR (keep 0.1) | " + " | ".join(f"{v:.3f}" for v in sr) + " |")
    shutil.copy(work / "calib" / "sr_curve.png", ROOT / "bench" / "micro_sr_curve.png")
    print()
    print("Picture: bench/micro_sr_curve.png (the SR curve with its std band, random floor and window).")
    print()
    print("SAP on the synthetic set by window (NDCG@5, retention of full in brackets):")
    print()
    print("\n".join(window_table(calibration, window_reports)))
    for name, (_report, table, bias) in reports.items():
        print()
        print(f"### Eval: {name}")
        print()
        print(table.strip())
        print()
        print(f"Positional bias over {bias['pages']} pages: mean Pearson r(centrality, token index) "
              f"{bias['r_raw']:+.3f} raw, {bias['r_corrected']:+.3f} with the causal correction.")
    if args.ship:
        shutil.rmtree(assets / "micro-colqwen2.sap", ignore_errors=True)
        shutil.copytree(bundle, assets / "micro-colqwen2.sap")
        for name in ("calibration.json", "sr_curve.png"):
            shutil.copy(work / "calib" / name, model / name)
        print(f"\nshipped {model} and {assets / 'micro-colqwen2.sap'}", file=sys.stderr)


if __name__ == "__main__":
    main()
