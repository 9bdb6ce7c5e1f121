"""``sapindex index``: files -> SAP-pruned LanceDB index (searched by :mod:`sapindex.search`).

Streaming: pages are rendered one at a time and encoded ``batch_size`` at a time; each batch is
one atomic commit, so a run killed at any moment loses at most the batch in flight, and the
next run skips every (content hash, page) already stored without rendering it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ContextManager

from sapindex.compression import check_method, method_name, resolve_method
from sapindex.errors import SapIndexError
from sapindex.index.inputs import DEFAULT_DPI, check_some_input_exists, iter_pages, iter_sources
from sapindex.index.records import Failure, FileInfo, Page
from sapindex.index.store import Index, IndexWriter, PageRow
from sapindex.runtime.bundle import Bundle, manifest_bytes
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import MODES, Encoder, PrunedPage, check_fast_mode, check_position_correction
from sapindex.sap import DEFAULT_KEEP_RATIO


@dataclass
class IndexSummary:
    files: int = 0
    pages_indexed: int = 0
    pages_skipped: int = 0
    vectors_before: int = 0
    vectors_kept: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    index_bytes: int = 0
    index_pages: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "pages_per_second": self.pages_indexed / self.seconds if self.seconds else None}


# Bundles at least this large are real-size models: on a CPU a page costs tens of seconds there.
LARGE_BUNDLE_BYTES = 1_000_000_000


def default_batch_size(bundle: Bundle, device: str) -> int:
    """Pages per ONNX Runtime call and per commit when the user gives none.

    1 for a real-size bundle on a CPU: a page takes tens of seconds there and batching pages gains
    nothing at real widths (bench/RESULTS.md, "Per family at real layer widths": batch 2 vs 1), so
    the progress bar moves per page instead of once per several minutes. 8 otherwise (small models,
    where a call's overhead matters, and GPUs), which also keeps commits (LanceDB versions) few.
    """
    return 1 if device == "cpu" and manifest_bytes(bundle.manifest) >= LARGE_BUNDLE_BYTES else 8


class Recorder:
    """The write side of an indexing run, shared by the local loop below and the Ray driver
    (:mod:`sapindex.cluster`): what is stored, what is skipped, the summary and the progress.

    ``done`` holds the (content hash, page) keys stored before the run, plus, in a local run,
    those handed to the encoder since: the skip check before a page is rendered. ``stored`` holds
    the keys this run wrote, so that a page reaching :meth:`store` twice (a Ray task retried after
    it delivered) is written once; the Ray driver's listing thread reads ``done`` while this
    writes, which is why the two are separate sets.
    """

    def __init__(self, index: Index, keep_ratio: float, method: str,
                 progress: Callable[[int, int], None] | None = None, mode: str = "exact",
                 position_correction: bool = False):
        self.index, self.keep_ratio, self.method, self.progress = index, keep_ratio, method, progress
        self.mode, self.position_correction = mode, position_correction
        self.summary = IndexSummary()
        self.done = index.indexed_keys()
        self.stored: set[tuple[str, int]] = set()
        self.known = 0

    def file_listed(self, info: FileInfo, already: list[bool] | None = None) -> None:
        """A usable input file, before any of its pages is rendered: count its pages and those already
        stored or planned (``already[p - 1]``; by default looked up in ``done``); a changed file
        whose pages all exist elsewhere drops its old rows here."""
        self.summary.files += 1
        self.known += info.n_pages
        if already is None:
            already = [(info.content_hash, p) in self.done for p in range(1, info.n_pages + 1)]
        self.summary.pages_skipped += sum(already)
        if all(already):
            self.index.drop_stale(info.path, info.content_hash)

    def store(self, pages: list[tuple[Page, PrunedPage]], failures: list[Failure]) -> None:
        """One atomic commit of encoded pages (a page already stored by this run is dropped), then
        the failures, then the progress."""
        rows = []
        for page, kept in pages:
            key = (page.content_hash, page.page)
            if key in self.stored:
                continue
            self.stored.add(key)
            self.summary.vectors_before += kept.n_visual
            self.summary.vectors_kept += len(kept.positions)
            rows.append(PageRow.from_encoded(page, kept, keep_ratio=self.keep_ratio, mode=self.mode,
                                             method=method_name(self.method, self.position_correction)))
        if rows:
            self.index.add_pages(rows)
            self.summary.pages_indexed += len(rows)
        if failures:
            self.index.add_failures(failures)
            self.summary.failures.extend(str(f) for f in failures)
        if self.progress:
            self.progress(self.summary.pages_indexed + self.summary.pages_skipped, self.known)

    def finish(self, started: float) -> IndexSummary:
        stats = self.index.stats()
        self.summary.index_bytes, self.summary.index_pages = stats.bytes_on_disk, stats.pages
        self.summary.seconds = time.perf_counter() - started
        return self.summary


@contextmanager
def recording(bundle_path: str | Path, out: str | Path, *, keep_ratio: float, batch_size: int | None, device: str,
              position_correction: bool, progress: Callable[[int, int], None] | None,
              around: Callable[[], ContextManager] = nullcontext, mode: str = "exact", method: str | None = None,
              budget_scale: float | None = None):
    """Check a run's options, open its bundle and its index (created or resumed, writer-locked):
    yields ``(bundle, batch_size, recorder, context)``; the index is closed (unlocked) on the way out.
    ``recorder.method`` is the index method the run encodes with (``method``, or when None the index's
    own, or the default: :func:`sapindex.compression.resolve_method`).

    ``around()`` is entered after the checks and before the index is opened, and ``context`` is what
    it yields (a Ray cluster): a cluster that cannot be joined leaves no new index behind."""
    if not 0.0 < keep_ratio <= 1.0:
        raise SapIndexError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
    if batch_size is not None and batch_size < 1:
        raise SapIndexError("--batch-size must be at least 1")
    bundle = Bundle.open(bundle_path)
    if position_correction:
        check_position_correction(bundle)
    if mode not in MODES:
        raise SapIndexError(f"--mode {mode}: choose {' or '.join(MODES)}")
    if mode == "fast":
        check_fast_mode(bundle)
    method = resolve_method(method, _stored_methods(out))
    check_method(method, mode=mode, position_correction=position_correction, budget_scale=budget_scale)
    meta = {"bundle_path": str(Path(bundle_path).resolve()), "family": bundle.family, "window": list(bundle.window),
            "builtin": _is_builtin(bundle_path), "mode": mode}
    recorded = method_name(method, position_correction)
    with around() as context, IndexWriter.create_or_open(out, bundle.fingerprints, bundle.dim, meta=meta) as index:
        held = index.meta.get("mode", "exact")  # indexes from before fast mode are exact
        if held != mode:
            raise SapIndexError(f"{out}: this index holds {held}-mode vectors and never mixes modes (fast vectors are "
                                f"an approximation of exact ones); index with --mode {held}, or into a new directory")
        others = index.methods() - {recorded}
        if others:
            raise SapIndexError(f"{out}: this index holds {', '.join(sorted(others))} pages and never mixes methods "
                                f"(its pages would not be comparable with {recorded} ones); index with the same "
                                "--method (and --position-correction), or into a new directory")
        yield (bundle, batch_size or default_batch_size(bundle, device),
               Recorder(index, keep_ratio, method, progress, mode, position_correction), context)


def run_index(bundle_path: str | Path, inputs: list[str], out: str | Path, *, keep_ratio: float = DEFAULT_KEEP_RATIO,
              device: str = "cpu", batch_size: int | None = None, dpi: float = DEFAULT_DPI, threads: int | None = None,
              position_correction: bool = False, mode: str = "exact", method: str | None = None,
              budget_scale: float | None = None, stdin=None,
              progress: Callable[[int, int], None] | None = None) -> IndexSummary:
    """Index ``inputs`` into the index at ``out`` (created, or resumed) with the bundle's encoder and SAP.

    Args:
        bundle_path: the exported bundle directory to encode pages with.
        inputs: files, directories, ``-`` (paths on ``stdin``) or ``@list.txt``, as
            :func:`sapindex.index.inputs.iter_sources` reads them.
        out: the index directory; a new or empty one is created, an existing one is resumed.
        keep_ratio: the fraction of each page's visual tokens SAP keeps, in (0, 1].
        device: where ONNX Runtime runs the bundle (``"cpu"`` or ``"cuda"``).
        batch_size: pages encoded per call and stored per commit (None: :func:`default_batch_size`).
        dpi: the resolution PDF pages are rendered at.
        threads: ONNX Runtime intra-op threads (None: its default).
        position_correction: rank by the causally corrected centrality (method ``sap-poscorr``).
        mode: ``"exact"`` (the decoder on every token) or ``"fast"`` (format-2 bundles: the layers after
            the SAP window on the prompt and kept tokens only, an approximation); an index holds one mode.
        method: what is stored of each page (:data:`sapindex.compression.INDEX_METHODS`: ``sap``, or
            ``sap-merge``, ``sap-kmeans``, ``sap-budget`` in exact mode); an index holds one method. None:
            the index's own when it holds pages, else the default (``resolve_method``).
        budget_scale: ``sap-budget`` only, the scale calibrated by ``sapindex eval``
            (:func:`sapindex.compression.budget_scale_from`).
        stdin: the stream a ``-`` input reads paths from (None: ``sys.stdin``).
        progress: called as ``progress(pages_done, pages_known)`` after each batch.

    Returns the run's :class:`IndexSummary`; unreadable inputs are recorded in the index and
    listed in ``summary.failures``, not raised. :func:`sapindex.cluster.run_index_on_ray` is the
    same run spread over a Ray cluster.
    """
    started = time.perf_counter()
    check_some_input_exists(inputs)
    with recording(bundle_path, out, keep_ratio=keep_ratio, batch_size=batch_size, device=device,
                   position_correction=position_correction, progress=progress, mode=mode, method=method,
                   budget_scale=budget_scale) as (bundle, batch_size, recorder, _):
        encoder = Encoder(bundle, device=device, threads=threads)
        batch: list[Page] = []
        failures: list[Failure] = []

        def flush() -> None:
            kept = (encoder.encode_pages_pruned([p.image for p in batch], keep_ratio, position_correction, mode,
                                                recorder.method, budget_scale) if batch else [])
            recorder.store(list(zip(batch, kept)), failures)
            batch.clear()
            failures.clear()

        pages = iter_pages(iter_sources(inputs, stdin=stdin if stdin is not None else sys.stdin), dpi=dpi,
                           skip=lambda h, p: (h, p) in recorder.done, on_file=recorder.file_listed)
        for item in pages:
            if isinstance(item, Failure):
                failures.append(item)
                continue
            try:
                encoder.preprocessor.visual_grid(item.size[1], item.size[0])  # e.g. a 1x500 strip: refuse early
            except SapIndexError as exc:
                failures.append(Failure(item.path, str(exc), item.page))
                continue
            batch.append(item)
            recorder.done.add((item.content_hash, item.page))
            if len(batch) >= batch_size:
                flush()
        flush()
        return recorder.finish(started)


def _stored_methods(out: str | Path) -> set[str]:
    """The methods of an existing index at ``out`` (empty for a new one), read before it is opened for
    writing so that a refused method leaves no new index behind."""
    try:
        with Index.open(out) as index:
            return index.methods()
    except SapIndexError:  # no index there yet (or not one: create_or_open says why)
        return set()


def _is_builtin(bundle_path) -> bool:
    try:
        return Path(bundle_path).resolve() == default_bundle_path().resolve()
    except SapIndexError:
        return False
