"""Does int8 quantization change SAP's selection and retrieval? Measured on the trained micro model.

Random weights have no attention structure, so only a trained model can show it. The shipped
micro checkpoint is exported with `sapindex export --dtype int8` (same calibration, same window
as the shipped fp32 bundle); both bundles are scored by `sapindex eval --methods full,sap` on the
synthetic held-out set (the micro model's benchmark, bench/micro_model.py). From the two eval
caches (every page's vectors and in-graph centrality): per page, the Jaccard index of SAP's kept
sets at each keep ratio and the cosine of each visual token's int8 vector with its fp32 vector.
Usage: python bench/int8_quality.py [--work bench-data/micro]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from micro_model import ROOT, SYNTHETIC, run, synthetic_set  # noqa: E402

RATIOS = (0.2, 0.1, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(ROOT / "bench-data" / "micro"))
    args = parser.parse_args()
    from sapindex import sap
    from sapindex.eval.cache import EncodingCache
    from sapindex.eval.datasets import load_dataset
    from sapindex.runtime.bundle import Bundle, manifest_bytes
    from sapindex.runtime.defaults import default_bundle_path, default_weights_path

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    test_set = synthetic_set(work / "synthetic-test", "test", SYNTHETIC)
    sapindex = [sys.executable, "-m", "sapindex.cli"]
    int8 = work / "micro-colqwen2-int8.sap"
    run(sapindex + ["export", "--model", str(default_weights_path()), "--calibration",
                    str(default_weights_path() / "calibration.json"), "--out", str(int8), "--dtype", "int8",
                    "--overwrite"])
    bundles = {"fp32 (shipped)": default_bundle_path(), "int8": int8}
    reports, caches = {}, {}
    dataset = load_dataset(test_set)
    for name, bundle in bundles.items():
        out = work / f"eval-int8-quality-{name.split()[0]}"
        run(sapindex + ["eval", str(bundle), str(test_set), "--methods", "full,sap", "--out", str(out)])
        reports[name] = json.loads((out / "report.json").read_text())
        caches[name] = EncodingCache(out / "cache", Bundle.open(bundle, verify=False), dataset).load()

    manifest = json.loads((int8 / "manifest.json").read_text())
    fp32_size = manifest_bytes(Bundle.open(default_bundle_path()).manifest)
    int8_size = manifest_bytes(manifest)
    v = manifest["validation"]
    print(f"# int8 vs fp32 on the trained micro model: synthetic held-out set ({SYNTHETIC['pages']} pages, "
          f"{SYNTHETIC['queries']} queries); bundles {fp32_size / 1e6:.1f} MB fp32, {int8_size / 1e6:.1f} MB int8; "
          f"export validation of the int8 bundle: smallest cosine {v['min_cosine_embeddings']:.4f}, "
          f"kept-set Jaccard at 0.1 {v['min_kept_jaccard_at_0.1']:.3f} smallest, "
          f"{v['mean_kept_jaccard_at_0.1']:.3f} mean\n")
    print("| bundle | full NDCG@5 | " + " | ".join(f"SAP NDCG@5 keep {r} (retention)" for r in RATIOS) + " |")
    print("|---|---|" + "---|" * len(RATIOS))
    for name, report in reports.items():
        full_ndcg = report["results"]["full"]["1.0"]["metrics"]["ndcg@5"]
        sap_cells = report["results"]["sap"]
        cells = [f"{sap_cells[f'{r:g}']['metrics']['ndcg@5']:.3f} ({sap_cells[f'{r:g}']['retention']['ndcg@5']:.0%})"
                 for r in RATIOS]
        print(f"| {name} | {full_ndcg:.3f} | " + " | ".join(cells) + " |")

    fp32, q8 = caches["fp32 (shipped)"], caches["int8"]
    jaccard = {r: [] for r in RATIOS}
    cosines = []
    for key, page in fp32.items():
        other = q8[key]
        for r in RATIOS:
            jaccard[r].append(sap.jaccard(sap.top_k(other.centrality, r), sap.top_k(page.centrality, r)))
        a, b = np.asarray(other.embeddings, np.float64), np.asarray(page.embeddings, np.float64)
        cosines.append((a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))
    cosines = np.concatenate(cosines)
    print()
    print(f"Per page, int8 vs fp32 bundle on the same {len(fp32)} pages: kept-set Jaccard (mean / smallest / "
          "share of pages >= 0.9) and each visual token's cosine (mean / smallest)")
    print()
    print("| keep ratio | mean Jaccard | smallest | pages >= 0.9 |")
    print("|---|---|---|---|")
    for r in RATIOS:
        values = np.asarray(jaccard[r])
        print(f"| {r} | {values.mean():.3f} | {values.min():.3f} | {(values >= 0.9).mean():.0%} |")
    print()
    print(f"token cosine int8 vs fp32: mean {cosines.mean():.5f}, smallest {cosines.min():.5f}")


if __name__ == "__main__":
    main()
