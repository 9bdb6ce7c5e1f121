"""Score Retention calibration: the per-layer SR curve, the random floor and the SAP window.

For every calibration pair (query, relevant page) one batched forward pass gives the page's
final visual vectors and every decoder layer's visual in-degree centrality. Per layer l, the
page keeps the top ``keep_ratio`` tokens ranked by that layer's centrality alone, and SR is
MaxSim(query, kept) / MaxSim(query, all visual tokens). The curve is the mean over pairs; the
window is Algorithm 1 (``sapindex.sap.select_window``) on that curve, or with ``window_rule``
"sr-peak" the same-width window of highest mean SR (``sapindex.sap.peak_window``); both picks
are recorded. All SAP math comes from ``sapindex.sap``, the same code the runtime uses.

``calibration.json`` (format ``sapindex-calibration``, ``version`` 1) is the record
:class:`sapindex.calibration.record.CalibrationRecord` built by :func:`calibrate`; its module lists the layout.

``sapindex export`` reads it (``sapindex.exporter.export.load_calibration``) and refuses one made
on other weights.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sapindex import __version__, sap
from sapindex.calibration.pairs import Pair, load_pairs
from sapindex.calibration.record import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    CalibratedModel,
    CalibrationRecord,
    CalibrationSettings,
    LayerWindow,
    PairCounts,
    RandomFloor,
    SrCurve,
    VisualTokenCounts,
)
from sapindex.errors import SapIndexError
from sapindex.formats import write_json_atomic


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
    """Run the SR analysis and return the calibration record as ``calibration.json`` holds it
    (:meth:`CalibrationRecord.to_json`; see docs/how-to/calibrate.md, "calibration.json").

    ``log`` gets one line before the model loads (a minute at real size); ``progress(done, total)``
    then moves once per batch of ``batch_size`` pairs.
    """
    batch_size = _checked_batch_size(cfg)
    from sapindex.models.adapters import load_adapter

    pairset = load_pairs(cfg.pairs)
    skipped = list(pairset.skipped)
    pairs = _sample(pairset.pairs, cfg.limit, cfg.seed)
    _require_enough(pairs, cfg, skipped)
    log(f"loading    {cfg.model} ({cfg.dtype} on {cfg.device}); then {len(pairs)} pairs, {batch_size} per pass")
    adapter = load_adapter(cfg.model, base_model=cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    if progress:  # the bar shows its total before the first (slow) batch
        progress(0, len(pairs))
    measured = _measure(adapter, pairs, cfg, batch_size, skipped, progress)
    _require_enough(measured.sources, cfg, skipped)
    return _record(cfg, batch_size, adapter, len(pairset.pairs), skipped, measured).to_json()


def _checked_batch_size(cfg: CalibrationConfig) -> int:
    """The batch size to run with, once the options are known to be sane: checked before the
    model loads (a minute at real size), so a typo fails at once."""
    if not 0.0 < cfg.keep_ratio <= 1.0:
        raise SapIndexError(f"--keep-ratio must be in (0, 1], got {cfg.keep_ratio}")
    if cfg.window_rule not in sap.WINDOW_RULES:
        raise SapIndexError(f"--window-rule {cfg.window_rule}: choose {' or '.join(sap.WINDOW_RULES)}")
    batch_size = default_batch_size(cfg.device) if cfg.batch_size is None else cfg.batch_size
    if cfg.limit < 1 or batch_size < 1:
        raise SapIndexError("--limit and --batch-size must be at least 1")
    return batch_size


@dataclass
class _Measured:
    """Per used pair, in pair order: SR per layer, SR of the random selections, where the pair came
    from and its page's visual-token count (the rows the record's figures are computed from)."""

    sr_rows: list[np.ndarray] = field(default_factory=list)
    rand_rows: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    visual_counts: list[int] = field(default_factory=list)


def _measure(adapter, pairs: list[Pair], cfg: CalibrationConfig, batch_size: int, skipped: list[str],
             progress: Callable[[int, int], None] | None) -> _Measured:
    """One forward pass per batch of pairs and the SR figures of each pair; a pair whose image does
    not load is added to ``skipped`` instead of ending the run."""
    measured = _Measured()
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
            for pair, page, query in zip(good, pages, queries, strict=True):
                per_layer, rand = pair_retention(query, page, cfg.keep_ratio, cfg.seed, len(measured.sr_rows))
                measured.sr_rows.append(per_layer)
                measured.rand_rows.append(rand)
                measured.sources.append(pair.source)
                measured.visual_counts.append(page.embeddings.shape[0])
        if progress:
            progress(start + len(batch), len(pairs))
    return measured


def _record(cfg: CalibrationConfig, batch_size: int, adapter, available: int, skipped: list[str],
            measured: _Measured) -> CalibrationRecord:
    """The calibration record of a finished measurement: the curve, its random floor and the window."""
    sr = np.vstack(measured.sr_rows)  # [P, L]
    mean = sr.mean(axis=0)
    info = adapter.info
    return CalibrationRecord(
        format=CALIBRATION_FORMAT, version=CALIBRATION_VERSION, sapindex_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=CalibratedModel(path=str(info.path), base_model=str(info.base_path) if info.base_path else None,
                              family=info.family.name, n_layers=adapter.n_layers, n_heads=info.n_heads,
                              fingerprint=info.fingerprint),
        settings=CalibrationSettings(keep_ratio=cfg.keep_ratio, rho=cfg.rho, seed=cfg.seed, limit=cfg.limit,
                                     batch_size=batch_size, device=cfg.device, dtype=cfg.dtype),
        pairs=PairCounts(source=str(cfg.pairs), available=available, used=len(measured.sources),
                         skipped=len(skipped), skipped_rows=tuple(skipped[:100]),
                         visual_tokens=_visual_tokens(measured.visual_counts)),
        sr=SrCurve(mean=tuple(mean.tolist()), std=tuple(sr.std(axis=0).tolist())),
        random_floor=_random_floor(np.vstack(measured.rand_rows)),
        window=_window(mean, cfg.rho, cfg.window_rule, adapter.n_layers),
    )


def _visual_tokens(counts: list[int]) -> VisualTokenCounts:
    """How large the measured pages were: SR at a keep ratio depends on how many tokens a page has."""
    return VisualTokenCounts(min=int(min(counts)), mean=float(np.mean(counts)), max=int(max(counts)))


def _random_floor(rand: np.ndarray) -> RandomFloor:
    """SR of the random selections ``[pairs, seeds]``: overall, and per seed to show their spread."""
    per_seed = rand.mean(axis=0)
    return RandomFloor(mean=float(rand.mean()), std=float(per_seed.std()), per_seed=tuple(per_seed.tolist()),
                       seeds=len(sap.RANDOM_SEEDS))


def _window(mean: np.ndarray, rho: float, rule: str, n_layers: int) -> LayerWindow:
    """The window ``rule`` picks on the SR curve ``mean``, with every rule's pick beside it."""
    candidates = {name: sap.WINDOW_RULES[name](mean, rho) for name in sap.WINDOW_RULES}
    start, end = candidates[rule]
    return LayerWindow(start=start, end=end, rule=rule,
                       candidates={name: tuple(window) for name, window in candidates.items()},
                       median=float(np.median(mean)), alignment_region=(sap.alignment_start(mean), n_layers),
                       width=sap.window_width(n_layers, rho),
                       sr_mean_in_window=float(mean[start:end].mean()) if end > start else None)


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
    """The few lines ``sapindex calibrate`` prints: what was measured and which window it gave."""
    r = CalibrationRecord.from_json(record)
    w, m, p = r.window, r.model, r.pairs
    sr = np.asarray(r.sr.mean)
    lines = [
        f"model      {m.path} ({m.family}, {m.n_layers} decoder layers)",
        f"pairs      {p.used} used, {p.skipped} skipped; {p.visual_tokens.mean:.0f} visual tokens/page on average",
        f"SR@{r.settings.keep_ratio:g}    best layer {int(sr.argmax())} ({sr.max():.3f}), "
        f"last layer {sr[-1]:.3f}, random floor {r.random_floor.mean:.3f}",
        f"window     layers [{w.start}, {w.end}) by {w.rule} (median {w.median:.3f}, "
        f"alignment region from layer {w.alignment_region[0]}, width {w.width}; "
        + ", ".join(f"{rule} [{a}, {b})" for rule, (a, b) in w.candidates.items()) + ")",
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
