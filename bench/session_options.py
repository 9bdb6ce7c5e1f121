"""ONNX Runtime session settings at real width, side by side: load time, pages/s and peak memory.

Why: `sapindex.runtime.session.SESSION_CONFIG` and the CPU arena setting are chosen by this
measurement, not by ONNX Runtime's defaults. Each variant runs in a fresh process (so its load time
and peak RSS are its own) on the same bundle and pages, and the variants alternate over rounds (this
machine is shared and noisy: compare ratios). A variant opens the bundle's sessions through
sapindex's own ``Encoder`` and encodes pages of ~744 visual tokens one at a time.

Variants:
- ``ort-default``: ONNX Runtime's defaults (weights pre-packed into copies, CPU arena on);
- ``no-prepack``: weights mapped from the bundle's files, arena on;
- ``no-prepack-no-arena``: the same with the CPU memory arena off (what sapindex uses).

Usage: python bench/session_options.py [--family colqwen2 --text-layers 8 --vision-blocks 8 --pages 3 --rounds 2]
       [--bundle DIR]  (an existing bundle instead of building and exporting one)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from harness import build_bundle, child_json, machine, page_images

os.environ["HF_HUB_OFFLINE"] = "1"
VARIANTS = {
    "ort-default": {"config": {}, "arena": True},
    "no-prepack": {"config": {"session.disable_prepacking": "1"}, "arena": True},
    "no-prepack-no-arena": {"config": {"session.disable_prepacking": "1"}, "arena": False},
}


def child(bundle: str, variant: str, pages: int) -> None:
    """Run one variant in this process and print its measurements as one JSON line."""
    from sapindex.runtime import session
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder

    settings = VARIANTS[variant]
    session.SESSION_CONFIG, session.CPU_MEM_ARENA = settings["config"], settings["arena"]
    images = page_images(pages + 1)
    started = time.perf_counter()
    encoder = Encoder(Bundle.open(bundle, verify=False))
    load = time.perf_counter() - started
    tokens = encoder.encode_pages(images[:1])[0].n_visual  # warm-up page
    started = time.perf_counter()
    for image in images[1:]:
        encoder.encode_pages([image])
    per_page = (time.perf_counter() - started) / pages
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"load_s": load, "s_per_page": per_page, "peak_gb": peak, "tokens": tokens}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="colqwen2")
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--vision-blocks", type=int, default=8)
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--child", choices=sorted(VARIANTS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(str(args.bundle), args.child, args.pages)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_bundle(Path(tmp), args.family, args.text_layers, args.vision_blocks)
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e9
        results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                results[name].append(child_json(__file__, name, "--child", name, "--bundle", bundle,
                                                "--pages", args.pages))
    tokens = results["no-prepack"][0]["tokens"]
    print(f"# ONNX Runtime session settings: {args.family} at real width, {args.text_layers} decoder layers, "
          f"{args.vision_blocks} vision blocks, bundle {size:.2f} GB, pages of {tokens} visual tokens, one at a time; "
          f"best of {args.rounds} rounds, {args.pages} pages each; {machine()}\n")
    print("| variant | session load s | s/page | s/page vs ort-default | peak RSS GB |")
    print("|---|---|---|---|---|")
    base = min(r["s_per_page"] for r in results["ort-default"])
    for name, runs in results.items():
        per_page = min(r["s_per_page"] for r in runs)
        print(f"| {name} | {min(r['load_s'] for r in runs):.2f} | {per_page:.2f} | {per_page / base:.2f}x | "
              f"{min(r['peak_gb'] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
