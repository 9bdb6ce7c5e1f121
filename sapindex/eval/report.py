"""The eval report: its format, and the three files ``sapindex eval`` writes from it.

Why apart from the runner: the report is a plain dict that outlives the run (people diff it,
plot it, keep it next to a bundle), so what it holds is written down here, and rendering it
needs no bundle, dataset or encoder.

``report.json`` (``format`` ``"sapindex-eval"``, ``version`` 1):

- ``sapindex_version``, ``created`` (UTC, ISO 8601), ``command`` (the command line);
- ``bundle``: ``path``, ``fingerprint``, ``family``, ``window`` ``[start, end)``;
- ``dataset``: ``path``, ``format``, ``fingerprint``, ``pages`` and ``queries`` evaluated,
  ``skipped`` (category -> count), ``skipped_examples`` (category -> up to 5 messages),
  ``pages_failed_to_encode`` (messages);
- ``keep_ratios``, ``methods`` (in report order), ``headline`` (the metric of the table, ``ndcg@5``);
- ``results``: method -> ratio (``f"{ratio:g}"``; ``full`` has only ``"1.0"``) -> a cell:
  ``metrics`` (``ndcg@k``, ``recall@k``, ``mrr@k`` means), ``retention`` (each metric / full's,
  None where full's is 0), ``s_ret`` (mean pruned MaxSim / mean full MaxSim over relevant pairs),
  ``vectors`` (kept in all), ``vector_fraction``; a method averaged over several seeds adds
  ``seeds`` and ``std`` (of the headline metric), Adaptive-EOS adds its fitted ``adaptive_k``,
  ``sap-budget`` its fitted ``budget_scale`` (what ``index --budget-from`` reads), methods whose
  per-page counts vary add ``per_page_vectors`` (``min``, ``p10``, ``median``, ``p90``, ``max``), and
  ``sap-fast`` adds ``cosine_vs_exact`` (``mean``, ``p01``, ``min`` of the cosine between each kept
  token's fast and exact vector, ``kept_sets_differing``: pages whose kept set is not exact SAP's).

- ``recommendation``: ratio -> the method an index should store for this data (:func:`recommend`):
  ``method``, its ``ndcg@5``, ``default`` (the default method's, when evaluated), ``options`` (the
  ``sapindex index`` options that store it); empty when no evaluated method can be indexed.

``report.md`` is the table (rows = methods, columns = ratios) and ``retention.png`` the headline
retention against the keep ratio, one line per method.
"""

from __future__ import annotations

from pathlib import Path

from sapindex.compression import DEFAULT_METHOD, index_flags
from sapindex.formats import EVAL_REPORT_FORMAT, write_json_atomic

__all__ = ["REPORT_FORMAT", "REPORT_VERSION", "HEADLINE", "write_reports", "markdown_table", "plot_retention",
           "recommend"]

REPORT_FORMAT = EVAL_REPORT_FORMAT
REPORT_VERSION = 1
HEADLINE = "ndcg@5"


def write_reports(report: dict, out_dir: str | Path) -> list[Path]:
    """``report.json``, ``report.md`` (rows = methods, columns = ratios) and ``retention.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_json_atomic(out / "report.json", report)
    md_path = out / "report.md"
    md_path.write_text(markdown_table(report), encoding="utf-8")
    return [json_path, md_path, plot_retention(report, out / "retention.png")]


def recommend(report: dict) -> dict:
    """Per keep ratio, the method with the best headline metric among those an index can store
    (:func:`sapindex.compression.index_flags`), the default winning ties: the honest way to
    choose a method other than the paper's SAP is to measure it on one's own pages and queries."""
    out = {}
    for ratio in (f"{r:g}" for r in report["keep_ratios"]):
        scored = [(report["results"][m][ratio]["metrics"][HEADLINE], m) for m in report["methods"]
                  if index_flags(m) and ratio in report["results"].get(m, {})]
        if not scored:
            continue
        best, method = max(scored, key=lambda s: (s[0], s[1] == DEFAULT_METHOD))
        default = next((v for v, m in scored if m == DEFAULT_METHOD), None)
        out[ratio] = {"method": method, HEADLINE: best, "default": default,
                      "options": f"--keep-ratio {ratio} {index_flags(method)}"}
    return out


def _recommendation_lines(report: dict) -> list[str]:
    rec = report.get("recommendation", {})
    if not rec:
        return ["", "No evaluated method can be stored by `sapindex index`: add sap (the default) to --methods."]
    lines = ["", f"## Recommendation: the best NDCG@5 an index can store, on these {report['dataset']['queries']} "
                 "queries (a gap smaller than the spread over queries is noise: keep the default)", ""]
    for ratio, r in rec.items():
        versus = (" (the default)" if r["method"] == DEFAULT_METHOD else
                  f" ({DEFAULT_METHOD}: {r['default']:.3f})" if r["default"] is not None else "")
        lines.append(f"- keep {ratio}: **{r['method']}** {r[HEADLINE]:.3f}{versus}: "
                     f"`sapindex index DOCS --out INDEX {r['options']}`")
    return lines


def markdown_table(report: dict) -> str:
    ratios = [f"{r:g}" for r in report["keep_ratios"]]
    full = report["results"]["full"]["1.0"]["metrics"][HEADLINE]
    ds = report["dataset"]
    lines = [
        f"# sapindex eval: {ds['path']}",
        "",
        f"{ds['queries']} queries, {ds['pages']} pages ({ds['format']}); bundle {report['bundle']['family']} "
        f"window {report['bundle']['window']}; cells: NDCG@5 (retention % of full), S.Ret in brackets.",
        "",
        "| method | " + " | ".join(f"keep {r}" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
        f"| full | {full:.3f} (100.0 %) " + "| " * (len(ratios) - 1) + "|",
    ]
    for method in report["methods"]:
        if method == "full":
            continue
        cells = []
        for r in ratios:
            cell = report["results"][method][r]
            std = f" ± {cell['std'][HEADLINE]:.3f}" if "std" in cell else ""
            cells.append(f"{cell['metrics'][HEADLINE]:.3f}{std} ({100 * cell['retention'][HEADLINE]:.1f} %) "
                         f"[{cell['s_ret']:.3f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for method in (m for m in report["methods"] if "cosine_vs_exact" in report["results"][m].get(ratios[0], {})):
        cosines = ", ".join(f"keep {r}: mean {c['mean']:.3f}, 1st percentile {c['p01']:.3f}" for r in ratios
                            for c in [report["results"][method][r]["cosine_vs_exact"]])
        lines += ["", f"{method} is an approximation (the layers after the window saw the kept tokens only); "
                      f"cosine of its vectors with the exact ones of the same tokens: {cosines}."]
    for method in (m for m in report["methods"] if "per_page_vectors" in report["results"][m].get(ratios[0], {})):
        spreads = "; ".join(f"keep {r}: {c['min']}, {c['p10']:g}, {c['median']:g}, {c['p90']:g}, {c['max']}"
                            for r in ratios for c in [report["results"][method][r]["per_page_vectors"]])
        lines += ["", f"{method} vectors per page (min, 10th percentile, median, 90th percentile, max): {spreads}."]
    skipped = ", ".join(f"{k}: {v}" for k, v in ds["skipped"].items() if v) or "none"
    lines += ["", f"Skipped rows: {skipped}. Pages that failed to encode: {len(ds['pages_failed_to_encode'])}."]
    lines += _recommendation_lines(report) + [""]
    return "\n".join(lines)


def plot_retention(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = report["keep_ratios"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method in report["methods"]:
        if method == "full":
            continue
        values = [100 * report["results"][method][f"{r:g}"]["retention"][HEADLINE] for r in ratios]
        ax.plot(ratios, values, marker="o", label=method, linewidth=2.5 if method == "sap" else 1.2)
    ax.axhline(100, color="grey", linestyle=":", label="full index")
    ax.set_xscale("log")
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_xlabel("keep ratio (vectors kept per page)")
    ax.set_ylabel("NDCG@5 retention (%)")
    ax.set_title(f"{report['bundle']['family']} on {Path(report['dataset']['path']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

