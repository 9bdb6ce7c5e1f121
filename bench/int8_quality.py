"""Does int8 quantization change SAP's selection and retrieval? Each int8 scheme on the trained micro model.

Random weights have no attention structure, so only a trained model can show it. The shipped
micro checkpoint is exported in fp32 (its calibration and window); each int8 scheme's bundle is
that fp32 bundle's graphs quantized by ``sapindex.exporter.quantize.quantize_graph`` (exactly
what `sapindex export --dtype int8 --int8-scheme S` does before it validates), so a scheme whose
export the int8 rules refuse is still measured; the export's own verdict on each scheme (from
`export --json`) is reported beside it. Every bundle is scored by `sapindex eval --methods
full,sap` on the synthetic held-out set (the micro model's benchmark, bench/micro_model.py).
From the eval caches (every page's vectors and in-graph centrality): per page, the Jaccard
index of SAP's kept sets at each keep ratio against fp32, and each visual token's cosine with
its fp32 vector.
Usage: python bench/int8_quality.py [--work bench-data/micro]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from harness import ROOT, SYNTHETIC, run, synthetic_set

RATIOS = (0.2, 0.1, 0.05)


def quantized_copy(fp32: Path, out: Path, scheme: str) -> Path:
    """The fp32 bundle with its graphs quantized in ``scheme``, its manifest labelled and resealed."""
    from sapindex.exporter.quantize import quantization_record, quantize_graph
    from sapindex.runtime.bundle import seal_manifest

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        quantize_graph(out / graph["file"], scheme)
    (out / "manifest.json").unlink()
    seal_manifest(out, {**manifest, "dtype": "int8", "quantization": quantization_record(scheme)})
    return out


def export_verdict(sapindex: list[str], work: Path, scheme: str) -> str:
    """What `sapindex export --dtype int8 --int8-scheme scheme` says of the micro model."""
    from sapindex.runtime.defaults import default_weights_path

    weights = default_weights_path()
    done = subprocess.run(sapindex + ["export", "--model", str(weights), "--calibration",
                                      str(weights / "calibration.json"), "--out",
                                      str(work / f"micro-colqwen2-int8-{scheme}.sap"), "--dtype", "int8",
                                      "--int8-scheme", scheme, "--overwrite", "--json"], capture_output=True, text=True)
    if done.returncode not in (0, 2) or not done.stdout.strip():
        sys.exit(f"export --int8-scheme {scheme} failed:\n{done.stderr[-3000:]}")
    printed = json.loads(done.stdout)
    v = printed["validation"]
    verdict = "refused" if "error" in printed else "accepted"
    return (f"{verdict} (smallest cosine {v['min_cosine_embeddings']:.4f}, kept-set Jaccard at 0.1 smallest "
            f"{v['min_kept_jaccard_at_0.1']:.3f}, mean {v['mean_kept_jaccard_at_0.1']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(ROOT / "bench-data" / "micro"))
    args = parser.parse_args()
    from sapindex import sap
    from sapindex.eval.cache import EncodingCache
    from sapindex.eval.datasets import load_dataset
    from sapindex.exporter.quantize import SCHEMES
    from sapindex.runtime.bundle import Bundle, manifest_bytes
    from sapindex.runtime.defaults import default_weights_path

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    test_set = synthetic_set(work / "synthetic-test", "test", SYNTHETIC)
    sapindex = [sys.executable, "-m", "sapindex.cli"]
    weights = default_weights_path()
    fp32 = work / "micro-colqwen2-fp32.sap"
    run(sapindex + ["export", "--model", str(weights), "--calibration", str(weights / "calibration.json"),
                    "--out", str(fp32), "--overwrite"])
    bundles = {"fp32": fp32, **{f"int8 {s}": quantized_copy(fp32, work / f"micro-colqwen2-{s}.sap", s)
                                for s in SCHEMES}}
    verdicts = {f"int8 {s}": export_verdict(sapindex, work, s) for s in SCHEMES}
    reports, caches = {}, {}
    dataset = load_dataset(test_set)
    for name, bundle in bundles.items():
        out = work / f"eval-int8-quality-{name.replace(' ', '-')}"
        run(sapindex + ["eval", str(bundle), str(test_set), "--methods", "full,sap", "--out", str(out)])
        reports[name] = json.loads((out / "report.json").read_text())
        caches[name] = EncodingCache(out / "cache", Bundle.open(bundle, verify=False), dataset).load()

    sizes = {name: manifest_bytes(Bundle.open(bundle, verify=False).manifest) / 1e6 for name, bundle in bundles.items()}
    print(f"# int8 schemes vs fp32 on the trained micro model: synthetic held-out set ({SYNTHETIC['pages']} pages, "
          f"{SYNTHETIC['queries']} queries)\n")
    print("| bundle | MB | `export` on this model | full NDCG@5 | "
          + " | ".join(f"SAP NDCG@5 keep {r} (retention)" for r in RATIOS) + " |")
    print("|---|---|---|---|" + "---|" * len(RATIOS))
    for name, report in reports.items():
        full_ndcg = report["results"]["full"]["1.0"]["metrics"]["ndcg@5"]
        sap_cells = report["results"]["sap"]
        cells = [f"{sap_cells[f'{r:g}']['metrics']['ndcg@5']:.3f} ({sap_cells[f'{r:g}']['retention']['ndcg@5']:.0%})"
                 for r in RATIOS]
        print(f"| {name} | {sizes[name]:.1f} | {verdicts.get(name, 'the reference')} | {full_ndcg:.3f} | "
              + " | ".join(cells) + " |")
    print()
    print(f"Per page against the fp32 bundle, on the same {len(caches['fp32'])} pages: kept-set Jaccard "
          "(mean / smallest / pages >= 0.9, the int8 rule's per-page floor) and each visual token's cosine")
    print()
    print("| bundle | " + " | ".join(f"Jaccard at {r}: mean / smallest / pages >= 0.9" for r in RATIOS)
          + " | token cosine mean / smallest |")
    print("|---|" + "---|" * (len(RATIOS) + 1))
    for name in bundles:
        if name != "fp32":
            print(_agreement(name, caches[name], caches["fp32"], sap))


def _agreement(name: str, quantized: dict, fp32: dict, sap) -> str:
    """One table row: per-page kept-set Jaccard at each ratio and token cosines against fp32."""
    jaccard = {r: [] for r in RATIOS}
    cosines = []
    for key, page in fp32.items():
        other = quantized[key]
        for r in RATIOS:
            jaccard[r].append(sap.jaccard(sap.top_k(other.centrality, r), sap.top_k(page.centrality, r)))
        a, b = np.asarray(other.embeddings, np.float64), np.asarray(page.embeddings, np.float64)
        cosines.append((a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))
    cosines = np.concatenate(cosines)
    cells = [f"{np.mean(v):.3f} / {np.min(v):.3f} / {int((np.asarray(v) >= 0.9).sum())} of {len(v)}"
             for v in jaccard.values()]
    return f"| {name} | " + " | ".join(cells) + f" | {cosines.mean():.5f} / {cosines.min():.5f} |"

if __name__ == "__main__":
    main()
