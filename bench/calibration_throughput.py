"""Calibration throughput (pairs/s): batch size 1 (as the SAP reference code runs) vs batched.

Same model, same generated pairs, same process; the SR curves of every run must agree. The tiny
model shows the per-call overhead that batching hides; ``--real-width T,V`` builds the family at its
published widths with T decoder layers and V vision blocks (``sapindex.testing.real_size``), where a
pair costs real arithmetic, and adds the seconds per pair and 500 pairs extrapolated from them.
Usage: python bench/calibration_throughput.py [--pairs 48] [--batch-sizes 1,4,8,16] [--family colqwen2]
       python bench/calibration_throughput.py --real-width 8,8 --pairs 4 --batch-sizes 1,4 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--family", default="colqwen2")
    parser.add_argument("--max-visual-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--real-width", default=None, help="T,V: the family at real width, T layers, V blocks")
    args = parser.parse_args()

    import torch

    from sapindex.calibration.calibrate import CalibrationConfig, calibrate
    from sapindex.testing.real_size import build_real_size
    from sapindex.testing.tiny import build_tiny_model
    from sapindex.testing.toy_pages import write_pairs

    with tempfile.TemporaryDirectory() as tmp:
        if args.real_width:
            layers, blocks = (int(x) for x in args.real_width.split(","))
            model = build_real_size(Path(tmp) / "model", args.family, layers, blocks)
            what = f"{args.family} at real width, {layers} decoder layers, {blocks} vision blocks"
        else:
            model = build_tiny_model(Path(tmp) / "model", args.family, max_visual_tokens=args.max_visual_tokens)
            what = f"{args.family} tiny (max {args.max_visual_tokens} visual tokens)"
        pairs = write_pairs(Path(tmp) / "pairs", n=args.pairs, seed=0)
        print(f"# calibration throughput, {what}, "
              f"{args.pairs} pairs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}, python {sys.version.split()[0]}, "
              f"{time.strftime('%Y-%m-%d')}")
        print(f"| batch size | pairs/s (best of {args.repeats}) | speed-up vs batch 1 | s/pair "
              "| 500 pairs (extrapolated) |")
        print("|---|---|---|---|---|")
        base = None
        reference_curve = None
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
            cfg = CalibrationConfig(model=str(model), pairs=str(pairs), batch_size=bs)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                record = calibrate(cfg)
                best = min(best, time.perf_counter() - start)
            curve = np.asarray(record["sr"]["mean"])
            if reference_curve is None:
                reference_curve = curve
            drift = float(np.abs(curve - reference_curve).max())
            assert drift < 1e-4, f"batch size {bs} changed the SR curve by {drift}"
            rate = args.pairs / best
            base = base or rate
            print(f"| {bs} | {rate:.2f} | {rate / base:.2f}x | {1 / rate:.2f} | {500 / rate / 60:.0f} min |",
                  flush=True)


if __name__ == "__main__":
    main()
