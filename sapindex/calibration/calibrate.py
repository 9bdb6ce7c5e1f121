"""Score Retention calibration: the per-layer SR curve, the random floor and the SAP window.

For every calibration pair (query, relevant page) one batched forward pass gives the page's
final visual vectors and every decoder layer's visual in-degree centrality. Per layer l, the
page keeps the top ``keep_ratio`` tokens ranked by that layer's centrality alone, and SR is
MaxSim(query, kept) / MaxSim(query, all visual tokens). The curve is the mean over pairs; the
window is Algorithm 1 (``sapindex.sap.select_window``) on that curve, or with ``window_rule``
"sr-peak" the same-width window of highest mean SR (``sapindex.sap.peak_window``); both picks
are recorded. All SAP math comes from ``sapindex.sap``, the same code the runtime uses.

``calibration.json`` (format ``sapindex-calibration``, ``version`` 1; built by :func:`calibrate`)::

    model          path, base_model, family, n_layers, n_heads, fingerprint (of the weight files)
    settings       keep_ratio, rho, seed, limit, batch_size, device, dtype
    pairs          source, available, used, skipped, skipped_rows (first 100), visual_tokens min/mean/max
    sr             mean and std per decoder layer (the SR curve)
    random_floor   mean, std, per_seed, seeds: SR of random selections at the same keep ratio
    window         start, end (exclusive), rule, candidates (every rule's pick), median,
                   alignment_region, width, sr_mean_in_window

``sapindex export`` reads it (``sapindex.exporter.export.load_calibration``) and refuses one made
on other weights.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sapindex import __version__, sap
from sapindex.errors import SapIndexError
from sapindex.eval.datasets import Pair, load_pairs
from sapindex.formats import write_json_atomic

CALIBRATION_FORMAT = "sapindex-calibration"
CALIBRATION_VERSION = 1


@dataclass
class CalibrationConfig:
    model: str
    pairs: str
    base_model: str | None = None
    limit: int = 500
    batch_size: int | None = None  # None: 1 on a CPU (the bar moves per pair), 4 on a GPU
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    keep_ratio: float = sap.DEFAULT_KEEP_RATIO
    rho: float = 0.2
    min_pairs: int = 1
    window_rule: str = "algorithm1"  # a key of sap.WINDOW_RULES


def pair_retention(query: np.ndarray, page, keep_ratio: float, seed: int,
                   pair_index: int) -> tuple[np.ndarray, np.ndarray]:
    """SR of one pair for each captured layer ``[L]``, and of one random selection per seed of
    ``sap.RANDOM_SEEDS`` ``[seeds]``."""
    per_layer = np.array([sap.score_retention(query, page.embeddings, sap.top_k(c, keep_ratio))
                          for c in page.centrality])
    n = page.embeddings.shape[0]
    rand = np.array([
        sap.score_retention(query, page.embeddings,
                            sap.random_k(n, keep_ratio, np.random.default_rng([seed, s, pair_index])))
        for s in sap.RANDOM_SEEDS
    ])
    return per_layer, rand


def default_batch_size(device: str) -> int:
    """Pages per forward pass when the user gives none.

    1 on a CPU: at real size a pair takes about a minute there, so the progress bar moves once per
    pair rather than once per several minutes, and batching pages of different sizes on a CPU pads
    work without a speed-up at real width (bench/calibration_throughput.py --real-width). 4 on a GPU.
    """
    return 1 if device == "cpu" else 4


def calibrate(cfg: CalibrationConfig, progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Run the SR analysis and return the calibration record (see README, "calibration.json").

    ``log`` gets one line before the model loads (a minute at real size); ``progress(done, total)``
    then moves once per batch of ``batch_size`` pairs.
    """
    if not 0.0 < cfg.keep_ratio <= 1.0:
        raise SapIndexError(f"--keep-ratio must be in (0, 1], got {cfg.keep_ratio}")
    if cfg.window_rule not in sap.WINDOW_RULES:
        raise SapIndexError(f"--window-rule {cfg.window_rule}: choose {' or '.join(sap.WINDOW_RULES)}")
    batch_size = default_batch_size(cfg.device) if cfg.batch_size is None else cfg.batch_size
    if cfg.limit < 1 or batch_size < 1:
        raise SapIndexError("--limit and --batch-size must be at least 1")
    from sapindex.models.adapters import load_adapter

    pairset = load_pairs(cfg.pairs)
    skipped = list(pairset.skipped)
    pairs = _sample(pairset.pairs, cfg.limit, cfg.seed)
    _require_enough(pairs, cfg, skipped)
    log(f"loading    {cfg.model} ({cfg.dtype} on {cfg.device}); then {len(pairs)} pairs, {batch_size} per pass")
    adapter = load_adapter(cfg.model, base_model=cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    if progress:  # the bar shows its total before the first (slow) batch
        progress(0, len(pairs))

    sr_rows, rand_rows, used_sources, visual_counts = [], [], [], []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        images, good = [], []
        for pair in batch:
            try:
                images.append(pair.load_image())
                good.append(pair)
            except SapIndexError as exc:
                skipped.append(str(exc))
        if good:
            pages = adapter.encode_pages(images)
            queries = adapter.encode_queries([p.query for p in good])
            for pair, page, query in zip(good, pages, queries):
                per_layer, rand = pair_retention(query, page, cfg.keep_ratio, cfg.seed, len(sr_rows))
                sr_rows.append(per_layer)
                rand_rows.append(rand)
                used_sources.append(pair.source)
                visual_counts.append(page.embeddings.shape[0])
        if progress:
            progress(start + len(batch), len(pairs))
    _require_enough(used_sources, cfg, skipped)

    sr = np.vstack(sr_rows)  # [P, L]
    rand = np.vstack(rand_rows)  # [P, seeds]
    mean = sr.mean(axis=0)
    candidates = {rule: sap.WINDOW_RULES[rule](mean, cfg.rho) for rule in sap.WINDOW_RULES}
    start, end = candidates[cfg.window_rule]
    info = adapter.info
    return {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "sapindex_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "path": str(info.path),
            "base_model": str(info.base_path) if info.base_path else None,
            "family": info.family.name,
            "n_layers": adapter.n_layers,
            "n_heads": info.n_heads,
            "fingerprint": info.fingerprint,
        },
        "settings": {"keep_ratio": cfg.keep_ratio, "rho": cfg.rho, "seed": cfg.seed, "limit": cfg.limit,
                     "batch_size": batch_size, "device": cfg.device, "dtype": cfg.dtype},
        "pairs": {
            "source": str(cfg.pairs),
            "available": len(pairset.pairs),
            "used": len(used_sources),
            "skipped": len(skipped),
            "skipped_rows": skipped[:100],
            "visual_tokens": {"min": int(min(visual_counts)), "mean": float(np.mean(visual_counts)),
                              "max": int(max(visual_counts))},
        },
        "sr": {"mean": mean.tolist(), "std": sr.std(axis=0).tolist()},
        "random_floor": {"mean": float(rand.mean()), "std": float(rand.mean(axis=0).std()),
                         "per_seed": rand.mean(axis=0).tolist(), "seeds": len(sap.RANDOM_SEEDS)},
        "window": {
            "start": start,
            "end": end,
            "rule": cfg.window_rule,
            "candidates": {rule: list(window) for rule, window in candidates.items()},  # every rule's pick
            "median": float(np.median(mean)),
            "alignment_region": [sap.alignment_start(mean), adapter.n_layers],
            "width": sap.window_width(adapter.n_layers, cfg.rho),
            "sr_mean_in_window": float(mean[start:end].mean()) if end > start else None,
        },
    }


def write_calibration(record: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``calibration.json`` and ``sr_curve.png`` into ``out_dir``."""
    from sapindex.calibration.plot import plot_sr_curve

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SapIndexError(f"{out}: cannot create output directory: {exc}") from None
    json_path = write_json_atomic(out / "calibration.json", record)
    png_path = plot_sr_curve(record, out / "sr_curve.png")
    return json_path, png_path


def summary_text(record: dict) -> str:
    w, m, p = record["window"], record["model"], record["pairs"]
    sr = np.asarray(record["sr"]["mean"])
    lines = [
        f"model      {m['path']} ({m['family']}, {m['n_layers']} decoder layers)",
        f"pairs      {p['used']} used, {p['skipped']} skipped; "
        f"{p['visual_tokens']['mean']:.0f} visual tokens/page on average",
        f"SR@{record['settings']['keep_ratio']:g}    best layer {int(sr.argmax())} ({sr.max():.3f}), "
        f"last layer {sr[-1]:.3f}, random floor {record['random_floor']['mean']:.3f}",
        f"window     layers [{w['start']}, {w['end']}) by {w.get('rule', 'algorithm1')} (median {w['median']:.3f}, "
        f"alignment region from layer {w['alignment_region'][0]}, width {w['width']}; "
        + ", ".join(f"{rule} [{a}, {b})" for rule, (a, b) in w.get("candidates", {}).items()) + ")",
    ]
    return "\n".join(lines)


def _sample(pairs: list[Pair], limit: int, seed: int) -> list[Pair]:
    """At most ``limit`` pairs: a seeded uniform sample, kept in file order."""
    if len(pairs) <= limit:
        return list(pairs)
    chosen = np.sort(np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False))
    return [pairs[i] for i in chosen]


def _require_enough(pairs, cfg: CalibrationConfig, skipped: list[str]) -> None:
    if len(pairs) >= cfg.min_pairs:
        return
    detail = f"; first problem: {skipped[0]}" if skipped else ""
    raise SapIndexError(
        f"{cfg.pairs}: {len(pairs)} usable (query, image) pair(s), need at least {cfg.min_pairs}{detail}"
    )
