"""Peak memory of `sapindex export` at real width, against its bundle size, side by side with another checkout.

Builds a random-weight checkpoint at a family's published widths (``sapindex.testing.real_size``)
at the chosen depth, calibrates it on two toy pairs, then runs `sapindex export` once per
checkout in a fresh process and reports its peak RSS, the bundle's size and their ratio. With
``--against DIR`` (a checkout of another commit, e.g. from `git worktree add`) both run on the
same checkpoint and calibration, one after the other.
Usage: python bench/export_memory.py [--family colqwen2 --text-layers 8 --vision-blocks 8 --against /tmp/old]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine

os.environ["HF_HUB_OFFLINE"] = "1"
HERE = Path(__file__).resolve().parent


def export_peak(checkout: Path, model: Path, calibration: Path, out: Path) -> tuple[float, float, float]:
    """(peak RSS GB, bundle GB, seconds) of one `sapindex export` run with ``checkout``'s code.

    Run from inside ``checkout``: ``python -m`` puts the working directory first on the path, ahead
    of PYTHONPATH, so from anywhere else the other checkout's code would silently not be the one run.
    """
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "sapindex.cli", "export", "--model",
                          str(model), "--calibration", str(calibration), "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=checkout)
    seconds = time.perf_counter() - started
    if run.returncode:
        sys.exit(f"export with {checkout} failed:\n{run.stderr[-2000:]}")
    peak_kb = int(run.stderr.strip().splitlines()[-1])
    bundle = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return peak_kb / 1e6, bundle / 1e9, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="colqwen2")
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--vision-blocks", type=int, default=8)
    parser.add_argument("--against", type=Path, default=None, help="another checkout to compare with")
    args = parser.parse_args()

    from sapindex.testing.pipeline import calibrate
    from sapindex.testing.real_size import build_real_size
    from sapindex.testing.toy_pages import write_pairs

    checkouts = [("this checkout", HERE.parent)] + ([("--against", args.against.resolve())] if args.against else [])
    print(f"# export peak memory at real width: {args.family}, {args.text_layers} decoder layers, "
          f"{args.vision_blocks} vision blocks; {machine()}\n")
    print("| code | peak RSS GB | bundle GB | peak / bundle | export + validation s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_real_size(work / "model", args.family, args.text_layers, args.vision_blocks)
        _, calibration, _ = calibrate(model, write_pairs(work / "pairs", n=2), work / "calib")
        for i, (label, checkout) in enumerate(checkouts):
            peak, bundle, seconds = export_peak(checkout, model, calibration, work / f"bundle-{i}.sap")
            print(f"| {label} | {peak:.2f} | {bundle:.2f} | {peak / bundle:.2f}x | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
