"""Per-family page encoding speed: the torch-free runtime vs PyTorch eager on the same weights, one process.

For every family with a tiny offline builder (random weights: speed and parity only), the
script calibrates and exports a bundle, then encodes the same pages with (a) sapindex's runtime
(numpy preprocessing + ONNX Runtime graphs, SAP centrality in the graph) and (b) the family's
PyTorch reference forward (colpali-engine / transformers ``model(**processor_outputs)``, which
computes no centrality), best of ``--repeats``.
Usage: python bench/family_speed.py [--pages 16 --batch-sizes 1,8 --families colpali,jina_v4]
       python bench/family_speed.py --real-width --text-layers 2 --vision-blocks 2 --pages 4 --batch-sizes 1
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
from harness import page_rates, small_page_images

os.environ["HF_HUB_OFFLINE"] = "1"


def builders(real_width: bool, text_layers: int, vision_blocks: int) -> dict:
    """{family: builder(out_dir) -> checkpoint dir}: tiny models, or real layer widths at reduced depth."""
    from sapindex.testing import tiny
    from sapindex.testing.real_size import REAL_SIZES, build_real_size
    from sapindex.testing.tiny_jina import build_tiny_jina

    if not real_width:
        found = {family: (lambda out, f=family: tiny.build_tiny(out, f)) for family in tiny.TINY_FAMILIES}
        found["jina_v4"] = build_tiny_jina
        return found
    # ColPali in its engine flavour only: the -hf conversion has the same sizes
    return {family: (lambda out, f=family: build_real_size(out, f, text_layers, vision_blocks))
            for family in REAL_SIZES if family != "colpali_hf"}


def bench_family(family, build, work: Path, n_pages: int, batch_sizes, repeats: int) -> list[str]:
    from sapindex.models.adapters import load_adapter
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.encoder import Encoder
    from sapindex.testing.pipeline import calibrate_and_export
    from sapindex.testing.toy_pages import write_pairs

    model_dir = build(work / family)
    pairs = write_pairs(work / f"{family}-pairs", n=4)
    export_s = calibrate_and_export(model_dir, pairs, work / f"{family}-calib", work / f"{family}.sap").export_seconds
    encoder = Encoder(Bundle.open(work / f"{family}.sap"))
    adapter = load_adapter(model_dir)
    images = small_page_images(n_pages)
    n_visual = np.mean([p.n_visual for p in encoder.encode_pages(images[:2])])
    rows = []
    for bs in batch_sizes:
        ort, ref = page_rates(encoder, adapter, images, bs, repeats)
        rows.append(f"| {family} | {adapter.info.parameter_count() / 1e6:.2f} M | {adapter.n_layers} | "
                    f"{n_visual:.0f} | {export_s:.0f} s | {bs} | {ort:.1f} | {ref:.1f} | {ort / ref:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--families", default="", help="comma-separated subset (default: every family)")
    parser.add_argument("--real-width", action="store_true",
                        help="the real checkpoints' layer widths with --text-layers / --vision-blocks layers")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-blocks", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime
    import torch

    found = builders(args.real_width, args.text_layers, args.vision_blocks)
    families = args.families.split(",") if args.families else list(found)
    kind = (f"real layer widths, {args.text_layers} decoder layers and {args.vision_blocks} vision blocks"
            if args.real_width else "tiny models")
    print(f"# per-family runtime speed ({kind}): {platform.machine()} {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}, "
          f"{args.pages} pages of ~300-420 x 380-520 px, best of {args.repeats}\n")
    print("| family | parameters | decoder layers | visual tokens/page | export + validation | batch | "
          "ONNX Runtime pages/s (torch-free, incl. preprocessing) | PyTorch eager pages/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            for row in bench_family(family, found[family], Path(tmp), args.pages,
                                    [int(b) for b in args.batch_sizes.split(",")], args.repeats):
                print(row, flush=True)


if __name__ == "__main__":
    main()
