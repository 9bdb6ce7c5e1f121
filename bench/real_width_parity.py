"""Export parity at real width: Qwen2-VL-2B / Qwen2.5-VL-3B layer widths (random weights, few
layers), Qwen2.5-VL's real 112 px vision windows, real page sizes (up to ~760 visual tokens).

Reports what `sapindex export` measured while validating each bundle (ONNX Runtime vs PyTorch).
Usage: python bench/real_width_parity.py [--families colqwen2,colqwen2_5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

PAGE_SIZES = ((1100, 850), (700, 1000), (900, 900), (300, 500))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", default="colqwen2,colqwen2_5")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-blocks", type=int, default=4)
    args = parser.parse_args()

    import sapindex.exporter.validate as validate
    from sapindex.testing.pipeline import calibrate_and_export
    from sapindex.testing.real_size import build_real_size
    from sapindex.testing.toy_pages import write_pairs

    validate.VALIDATION_SIZES = PAGE_SIZES  # the pages export traces on and validates with
    print(f"# export parity at real width: {args.text_layers} decoder layers, {args.vision_blocks} vision blocks, "
          f"validation pages {', '.join(f'{h}x{w}' for h, w in PAGE_SIZES)} px, {time.strftime('%Y-%m-%d')}")
    print("| family | visual grids (rows x cols) | max abs diff embeddings | centrality | EOS row | queries "
          "| kept-set mismatches (0.05/0.1/0.2) | export + validation s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family in args.families.split(","):
            started = time.perf_counter()
            model = build_real_size(work / family, family, args.text_layers, args.vision_blocks)
            if family == "colqwen2_5":  # two full-attention blocks among the few kept, as in the real tower
                cfg = json.loads((model / "config.json").read_text())
                cfg["vision_config"].update(fullatt_block_indexes=[1, 3])
                (model / "config.json").write_text(json.dumps(cfg))
            pairs = write_pairs(work / f"{family}-pairs", n=2)
            exported = calibrate_and_export(model, pairs, work / f"{family}-calib", work / f"{family}.sap")
            v = exported.manifest["validation"]
            grids = ", ".join(f"{r}x{c}" for r, c in v["visual_grids"])
            print(f"| {family} | {grids} | {v['max_abs_diff_embeddings']:.1e} | {v['max_abs_diff_centrality']:.1e} | "
                  f"{v['max_abs_diff_eos_attention']:.1e} | {v['max_abs_diff_query_embeddings']:.1e} | "
                  f"{len(v['kept_set_mismatches'])} | {time.perf_counter() - started:.0f} |")


if __name__ == "__main__":
    main()
