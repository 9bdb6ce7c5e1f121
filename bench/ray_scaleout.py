"""The cost of Ray on one machine: `sapindex index` locally vs `--ray local` with 1 and 2 encoders.

The built-in micro bundle on ``--pages`` pages (PDFs of the example pages, rendered at 72 dpi);
each configuration is the CLI a user runs, in a fresh process, alternating over ``--rounds``:

- ``local``: the plain run (ONNX Runtime on every core);
- ``ray 1x2``: one encoder actor with 2 threads: the same compute as local, so the difference is
  Ray's overhead (cluster start, actor start, object store, the driver's decoding);
- ``ray 1x1`` and ``ray 2x1``: one and two single-threaded encoders.

Reported per configuration (median over rounds): wall time, pages/s over the whole run, pages/s
between the first and the last commit (the steady rate, without the cluster's start), and the
driver process's peak RSS (VmHWM polled from /proc; for `local` that process holds the model too).
Then the driver's listing alone (:func:`sapindex.cluster.listing.plan_waves` over tiny image
files, waves consumed and dropped as the driver does): its Python peak (tracemalloc) should not grow
with the number of files.

Usage: python bench/ray_scaleout.py [--pages 96] [--rounds 2] [--files 1000,20000,100000]
  (--pages 0: the listing alone)
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from harness import machine, peak_rss_kb

CONFIGS = {
    "local": [],
    "ray 1x2": ["--ray", "local", "--encoders", "1", "--threads", "2"],
    "ray 1x1": ["--ray", "local", "--encoders", "1", "--threads", "1"],
    "ray 2x1": ["--ray", "local", "--encoders", "2", "--threads", "1"],
}


def make_inputs(root: Path, pages: int) -> Path:
    from PIL import Image

    from sapindex.runtime.defaults import example_pages

    images = [Image.open(p).convert("RGB") for p in example_pages()]
    root.mkdir(parents=True)
    for doc in range(0, pages, 12):
        n = min(12, pages - doc)
        order = [images[(doc + i) % len(images)].rotate(90 * (doc // 12 % 2), expand=True) for i in range(n)]
        order[0].save(root / f"doc{doc // 12:03d}.pdf", save_all=True, append_images=order[1:])
    return root


def run(inputs: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "sapindex.cli", "index", str(inputs), "--out", str(out), "--dpi", "72", "--json",
           *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, StopIteration):  # the child may end between poll and read
            peak = max(peak, peak_rss_kb(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {stdout[-500:]}")
    from sapindex.index.store import Index

    stamps = sorted(row["indexed_at"] for row in Index.open(out).iter_rows())
    first_commit = sum(1 for s in stamps if s == stamps[0])
    steady = (len(stamps) - first_commit) / (stamps[-1] - stamps[0]).total_seconds() if stamps[-1] > stamps[0] else 0
    return {"wall": wall, "pages": len(stamps), "rate": len(stamps) / wall, "steady": steady, "peak_mb": peak / 1024}


def listing_peak(root: Path, files: int) -> tuple[float, float]:
    """tracemalloc peak (MB) and seconds of listing ``files`` tiny PNGs into waves, dropped as consumed."""
    from PIL import Image

    from sapindex.cluster.listing import plan_waves
    from sapindex.index.sources import iter_sources

    folder = root / f"files-{files}"
    folder.mkdir()
    for i in range(files):  # distinct contents: each file's page is planned
        Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, i // 65536)).save(folder / f"{i:06d}.png")
    tracemalloc.start()
    started = time.perf_counter()
    pages = 0
    for wave in plan_waves(iter_sources([str(folder)]), set(), chunk_pages=8, first_pages=256):
        pages += wave.pages
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return peak, seconds


def print_runs(results: dict[str, list[dict]]) -> None:
    print("| run | wall s | pages/s (whole run) | pages/s (first to last commit) | vs local (steady) "
          "| driver peak RSS MB |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(x["steady"] for x in results["local"])
    for name, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k in ("wall", "rate", "steady", "peak_mb")}
        print(f"| {name} | {med['wall']:.1f} | {med['rate']:.2f} | {med['steady']:.2f} | "
              f"{med['steady'] / base:.2f}x | {med['peak_mb']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", default="1000,20000,100000", help="file counts for the listing's memory")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ray-scaleout-"))
    try:
        results: dict[str, list[dict]] = {name: [] for name in CONFIGS} if args.pages else {}
        inputs = make_inputs(root / "inputs", args.pages) if args.pages else None
        for r in range(args.rounds if results else 0):
            for name, extra in CONFIGS.items():
                out = root / f"idx-{r}-{name.replace(' ', '')}"
                results[name].append(run(inputs, out, extra))
                shutil.rmtree(out)
        print(f"# Ray on one machine: {machine()}; "
              f"built-in micro bundle, {args.pages} PDF pages at 72 dpi, median of {args.rounds} rounds\n")
        if results:
            print_runs(results)
        print("\n## The driver's listing: Python peak while listing into waves\n")
        print("| files | tracemalloc peak MB | seconds | files/s |")
        print("|---|---|---|---|")
        for files in (int(f) for f in args.files.split(",") if f):
            peak, seconds = listing_peak(root, files)
            print(f"| {files} | {peak:.1f} | {seconds:.1f} | {files / seconds:.0f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
