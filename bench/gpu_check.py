"""The GPU check (issue 33): one run on a lent GPU machine records what the CUDA Execution Provider does.

No GPU has been lent to this project so far, so the CUDA path is implemented but unmeasured. This
script is the whole check, prepared to run in one go in a few minutes: the providers found; for each
bundle (the built-in micro model, and real-width ColQwen2 fp32 and fp16 bundles at reduced depth,
exported beforehand on a CPU machine with ``--prepare``) the pages indexed on the device against the
CPU (the same kept sets, the cosine of the kept vectors), pages/s at each batch size, the peak memory
(the GPU's by nvidia-smi, else the process's), the query encode latency; and ``index --ray local
--device D`` with one encoder against ``index --device D`` on the same pages. The quick test suite
runs it on the CPU provider so that it does not rot.

Usage: python bench/gpu_check.py --prepare DIR        # CPU machine, torch side: DIR/fp32.sap, DIR/fp16.sap
       python bench/gpu_check.py [--bundles DIR/fp32.sap,DIR/fp16.sap] [--device cuda] [--pages 8]
                                 [--batches 1,8,32] [--no-ray] [--out gpu-check.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from harness import build_bundle, page_images, peak_rss_kb, run, sapindex

QUERIES = ["what was the total revenue in 2023?", "travel policy for contractors", "annual report"] * 7


def gpu_memory_peak(stop: threading.Event, peak: list[int]) -> None:
    """Append to ``peak`` the most GPU memory nvidia-smi reports (MB, every 0.2 s) until ``stop``."""
    while not stop.wait(0.2):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout.split()
        peak[:] = [max([*peak, int(out[0])])] if out else peak


def check_bundle(path: Path, device: str, images: list, batches: list[int]) -> dict:
    """One bundle on ``device`` against the CPU: agreement, speed, memory, query latency."""
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder
    from sapindex.runtime.options import IndexOptions

    bundle = Bundle.open(path)
    options = IndexOptions(keep_ratio=0.1)
    reference = Encoder(bundle, device="cpu").encode_pages_pruned(images[:2], options)
    stop, peak = threading.Event(), []
    if shutil.which("nvidia-smi"):
        threading.Thread(target=gpu_memory_peak, args=(stop, peak), daemon=True).start()
    try:
        encoder = Encoder(bundle, device=device)
        pruned = encoder.encode_pages_pruned(images[:2], options)
        rates = {}
        for b in batches:
            started = time.perf_counter()
            for i in range(0, len(images), b):
                encoder.encode_pages_pruned(images[i:i + b], options)
            rates[b] = round(len(images) / (time.perf_counter() - started), 3)
        encoder.encode_queries(QUERIES[:1])
        latencies = []
        for q in QUERIES:
            started = time.perf_counter()
            encoder.encode_queries([q])
            latencies.append((time.perf_counter() - started) * 1e3)
    finally:
        stop.set()
    same = [bool(np.array_equal(a.positions, b.positions)) for a, b in zip(reference, pruned, strict=True)]
    cosines = [float(np.min(np.sum(a.vectors * b.vectors, axis=1)))
               for a, b, eq in zip(reference, pruned, same, strict=True) if eq]
    return {"bundle": str(path), "dtype": bundle.manifest.get("dtype", "fp32"), "same_kept_sets": same,
            "min_cosine": min(cosines) if cosines else None, "pages_per_s": rates,
            "query_ms_p50": round(float(np.median(latencies)), 2),
            "peak_gpu_mb": peak[0] if peak else None, "peak_rss_mb": peak_rss_kb() // 1024}


def check_ray(device: str, images: list, work: Path) -> dict:
    """``index --ray local`` with one encoder against a local ``index`` of the same pages on ``device``."""
    from sapindex.index.store import Index

    (pages_dir := work / "pages").mkdir()
    for i, image in enumerate(images):
        image.save(pages_dir / f"page-{i:02d}.png")
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray", "local", "--encoders", "1"])):
        started = time.perf_counter()
        run(sapindex("index", pages_dir, "--out", work / name, "--device", device, *extra))
        with Index.open(work / name) as index:
            runs[name] = ({(r["path"], r["page"]): r["positions"].tolist() for r in index.iter_rows()},
                          time.perf_counter() - started)
    return {"pages": len(runs["local"][0]), "same_kept_sets": runs["local"][0] == runs["ray"][0],
            "seconds_local": round(runs["local"][1], 1), "seconds_ray": round(runs["ray"][1], 1)}


def prepare(out: Path) -> None:
    """fp32 and fp16 bundles of a real-width ColQwen2 (4 decoder layers, 4 vision blocks), for carrying in."""
    for dtype in ("fp32", "fp16"):
        with tempfile.TemporaryDirectory() as tmp:
            built = build_bundle(Path(tmp), "colqwen2", 4, 4, dtype=dtype)
            shutil.copytree(built, out / f"{dtype}.sap", dirs_exist_ok=True)
    print(f"{out}: fp32.sap, fp16.sap; carry them to the GPU machine with bench/ and run --bundles")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", type=Path, default=None, help="export the real-width bundles into DIR and stop")
    ap.add_argument("--bundles", default="", help="bundles beside the built-in one, comma-separated")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = ap.parse_args()
    if args.prepare:
        return prepare(args.prepare)
    import onnxruntime as ort

    from sapindex.runtime.defaults import default_bundle_path

    report: dict = {"providers": ort.get_available_providers(), "onnxruntime": ort.__version__,
                    "device": args.device, "date": time.strftime("%Y-%m-%d %H:%M"), "bundles": []}
    images, batches = page_images(args.pages), [int(b) for b in args.batches.split(",")]
    for bundle in [default_bundle_path(), *(Path(b) for b in args.bundles.split(",") if b)]:
        report["bundles"].append(check_bundle(bundle, args.device, images, batches))
        args.out.write_text(json.dumps(report, indent=2))  # what is done survives a cut-off run
    if not args.no_ray:
        with tempfile.TemporaryDirectory() as tmp:
            report["ray"] = check_ray(args.device, images, Path(tmp))
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
