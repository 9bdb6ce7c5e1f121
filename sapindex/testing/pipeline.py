"""calibrate -> export -> index -> search, the whole path from a checkpoint to answered queries, in one place.

Why: ``sapindex demo --pipeline`` runs every step on a tiny random-weight model, and the benches
and the test session's fixtures calibrate and export their own checkpoints the same way; one
definition keeps them in step. Each
step imports its side (torch for calibration and export, ONNX Runtime for index and search) only
when it runs, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

Progress = Callable[[int, int], None]  # progress(done, total)


@dataclass(frozen=True)
class Exported:
    """What :func:`calibrate_and_export` wrote."""

    record: dict  # the calibration record
    calibration: Path  # calibration.json
    curve: Path  # sr_curve.png
    bundle: Path
    manifest: dict
    export_seconds: float  # export and its validation, without the calibration


@dataclass
class PipelineRun:
    """The demo's artifacts, filled in stage by stage (see :func:`run_pipeline`)."""

    model_dir: Path
    pairs: Path  # pairs.jsonl, its pages in pages/ beside it
    record: dict | None = None  # the calibration record
    calibration: Path | None = None  # calibration.json
    curve: Path | None = None  # sr_curve.png
    bundle: Path | None = None
    manifest: dict | None = None
    index_dir: Path | None = None
    summary: object = None  # sapindex.index.indexer.IndexSummary
    query: str = ""
    hits: list = field(default_factory=list)  # sapindex.index.store.Hit, best first


def calibrate(model_dir: Path, pairs: Path, calib_dir: Path,
              progress: Progress | None = None) -> tuple[dict, Path, Path]:
    """Calibrate with the default settings and write calibration.json and sr_curve.png: (record, json, png)."""
    from sapindex.calibration.calibrate import CalibrationConfig, write_calibration
    from sapindex.calibration.calibrate import calibrate as run

    record = run(CalibrationConfig(model=str(model_dir), pairs=str(pairs)), progress=progress)
    return (record, *write_calibration(record, calib_dir))


def export(model_dir: Path, calibration: Path, bundle: Path, overwrite: bool = False) -> tuple[dict, float]:
    """Export and validate the bundle: (manifest, seconds)."""
    from sapindex.exporter.export import ExportConfig, export_bundle

    started = time.perf_counter()
    manifest = export_bundle(ExportConfig(model=str(model_dir), calibration=str(calibration), out=str(bundle),
                                          overwrite=overwrite))
    return manifest, time.perf_counter() - started


def calibrate_and_export(model_dir: Path, pairs: Path, calib_dir: Path, bundle: Path) -> Exported:
    """Calibrate ``model_dir`` on ``pairs`` into ``calib_dir``, then export the validated ``bundle``."""
    record, json_path, png_path = calibrate(model_dir, pairs, calib_dir)
    manifest, seconds = export(model_dir, json_path, bundle)
    return Exported(record, json_path, png_path, Path(bundle), manifest, seconds)


def run_pipeline(out_dir: Path, family: str,
                 progress: Progress | None = None) -> Iterator[tuple[str, PipelineRun]]:
    """Build a tiny ``family`` model and 16 toy pages, then calibrate, export, index and search them.

    Yields ``(stage, run)`` after each stage: ``"model"`` (checkpoint and pairs written, calibration
    next), ``"calibrated"``, ``"exported"``, ``"indexed"``, ``"searched"`` (the first pair's query,
    top 3). ``progress(pairs_done, pairs_total)`` follows the calibration.
    """
    from sapindex.index.indexer import run_index
    from sapindex.search import Searcher
    from sapindex.testing.tiny import build_tiny
    from sapindex.testing.toy_pages import write_pairs

    out_dir = Path(out_dir)
    run = PipelineRun(build_tiny(out_dir / f"tiny-{family}", family), write_pairs(out_dir / "pairs", n=16))
    yield "model", run
    run.record, run.calibration, run.curve = calibrate(run.model_dir, run.pairs, out_dir / "calib", progress)
    yield "calibrated", run
    run.bundle = out_dir / f"tiny-{family}.sap"
    run.manifest, _ = export(run.model_dir, run.calibration, run.bundle, overwrite=True)
    yield "exported", run
    run.index_dir = out_dir / "index"
    run.summary = run_index(run.bundle, [str(run.pairs.parent / "pages")], run.index_dir)
    yield "indexed", run
    run.query = json.loads(run.pairs.read_text().splitlines()[0])["query"]
    with Searcher.open(run.index_dir) as searcher:
        run.hits = searcher.search(run.query, k=3)
    yield "searched", run
