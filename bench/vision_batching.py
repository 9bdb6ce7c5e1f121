"""Vision graph: a batch of pages in one call vs one page per call (what the runtime does).

Same bundle, same pages, same text graph; each mode runs in its own process so its peak RSS
is its own. Reports s/page (best of ``--repeats``), peak RSS and the largest embedding
difference between the modes (0: pages are independent in the vision tower).

Usage: python bench/vision_batching.py [--bundle B] [--pages 24] [--batch-size 8] [--threads 2]
(default bundle: the built-in micro model; pages: the synthetic test-split generator, seed 1234).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def encode(bundle: str, dataset: str, mode: str, batch_size: int, threads: int, repeats: int, out: str) -> dict:
    from sapindex.eval.datasets import load_dataset
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(Bundle.open(bundle, verify=False), threads=threads)
    sessions = encoder.sessions
    if mode == "batched":  # the whole batch through the vision graph in one call
        def run_pages(feed):
            (image_embeds,) = sessions.vision.run(None, sessions._feed("vision", feed))
            return sessions._run_text({**feed, "image_embeds": image_embeds})
        sessions.run_pages = run_pages
    images = [page.load() for page in load_dataset(dataset).pages]
    best, pages = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        pages = [p for i in range(0, len(images), batch_size) for p in encoder.encode_pages(images[i:i + batch_size])]
        best = min(best, time.perf_counter() - start)
    np.save(out, np.concatenate([p.embeddings for p in pages]))
    return {"s_per_page": best / len(images), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "visual_tokens_per_page": float(np.mean([p.n_visual for p in pages]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DATASET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bundle is None:
        from sapindex.runtime.defaults import default_bundle_path

        args.bundle = str(default_bundle_path())
    if args.child:
        mode, dataset, out = args.child
        print(json.dumps(encode(args.bundle, dataset, mode, args.batch_size, args.threads, args.repeats, out)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp, "pages")
        subprocess.run([sys.executable, "-m", "sapindex.benchdata.synthetic", "--out", str(dataset), "--pages",
                        str(args.pages), "--queries", str(args.pages), "--seed", "1234", "--vocab-size", "1000",
                        "--min-font-px", "22"], check=True, capture_output=True)
        rows = {}
        for mode in ("batched", "per-page"):
            out = subprocess.run([sys.executable, __file__, "--bundle", args.bundle,
                                  "--batch-size", str(args.batch_size),
                                  "--threads", str(args.threads), "--repeats", str(args.repeats),
                                  "--child", mode, str(dataset), str(Path(tmp, f"{mode}.npy"))],
                                 check=True, capture_output=True, text=True)
            rows[mode] = json.loads(out.stdout)
        diff = float(np.abs(np.load(Path(tmp, "batched.npy")) - np.load(Path(tmp, "per-page.npy"))).max())
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads; bundle {Path(args.bundle).name}; "
          f"{args.pages} synthetic pages (~{rows['batched']['visual_tokens_per_page']:.0f} visual tokens each), "
          f"batch size {args.batch_size}")
    print()
    print("| vision graph | s/page | peak RSS |")
    print("|---|---|---|")
    for mode, row in rows.items():
        print(f"| {mode} | {row['s_per_page']:.3f} | {row['peak_rss_gb']:.2f} GB |")
    print()
    print(f"max |embedding difference| between the modes: {diff:.1e}")


if __name__ == "__main__":
    main()
