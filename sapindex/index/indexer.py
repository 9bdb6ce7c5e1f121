"""``sapindex index``: files -> SAP-pruned LanceDB index (searched by :mod:`sapindex.search`).

Streaming: pages are rendered one at a time and encoded ``batch_size`` at a time; each batch is
one atomic commit, so a run killed at any moment loses at most the batch in flight, and the
next run skips every (content hash, page) already stored without rendering it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from sapindex.errors import SapIndexError
from sapindex.index.documents import iter_pages
from sapindex.index.records import Failure, FileInfo, Page
from sapindex.index.sources import check_some_input_exists, iter_sources
from sapindex.index.store import Index, IndexWriter, PageRow
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path
from sapindex.runtime.encoder import Encoder, PrunedPage
from sapindex.runtime.options import IndexOptions


@dataclass
class IndexSummary:
    """What one indexing run did (:func:`run_index`, :func:`sapindex.cluster.run_index_on_ray`), as
    ``sapindex index`` reports it; a run that could not read some inputs still returns one, with
    them in ``failures``.

    Attributes:
        files: Usable input files listed (their pages counted), whether or not a page was encoded.
        pages_indexed: Pages encoded and stored by this run.
        pages_skipped: Pages not encoded because their (content hash, page) was already stored or
            already queued by this run when their file was listed (a resumed run, a duplicate file).
        vectors_before: Visual tokens of the stored pages before pruning (sum of ``n_visual``).
        vectors_kept: Vectors stored for those pages.
        failures: One line per input or page that could not be used (``path[ page N]: reason``).
        seconds: Wall-clock time of the run.
        index_bytes: The index directory's size on disk at the end.
        index_pages: Pages the index holds at the end (this run's and earlier ones).
    """

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
        """The summary as a JSON-ready dict (``sapindex index --json``).

        Returns:
            Every field, plus ``pages_per_second`` (pages indexed over seconds; None for a run of 0 seconds).
        """
        return {**asdict(self), "pages_per_second": self.pages_indexed / self.seconds if self.seconds else None}


class Recorder:
    """The write side of an indexing run, shared by the local loop below and the Ray driver
    (:mod:`sapindex.cluster`): what is stored, what is skipped, the summary and the progress.

    ``done`` holds the (content hash, page) keys stored before the run, plus, in a local run,
    those handed to the encoder since: the skip check before a page is rendered. ``stored`` holds
    the keys this run wrote, so that a page reaching :meth:`store` twice (a Ray task retried after
    it delivered) is written once; the Ray driver's listing thread reads ``done`` while this
    writes, which is why the two are separate sets.
    """

    def __init__(self, index: IndexWriter, options: IndexOptions, progress: Callable[[int, int], None] | None = None):
        self.index, self.options, self.progress = index, options, progress
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
            assert self.options.method is not None  # resolved by IndexOptions.for_run
            rows.append(PageRow.from_encoded(page, kept, keep_ratio=self.options.keep_ratio, mode=self.options.mode,
                                             method=self.options.method))
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


class Run(NamedTuple):
    """An indexing run, opened by :func:`recording`: the bundle, the options resolved for it, the
    write side, and what ``around()`` yielded (a Ray cluster)."""

    bundle: Bundle
    options: IndexOptions
    recorder: Recorder
    context: Any


@contextmanager
def recording(bundle_path: str | Path, out: str | Path, options: IndexOptions,
              progress: Callable[[int, int], None] | None = None,
              around: Callable[[], AbstractContextManager] = nullcontext) -> Iterator[Run]:
    """Open a run's bundle, check its options against the bundle and the index once
    (:meth:`IndexOptions.for_run`: the method and batch size resolved), and open the index (created
    or resumed, writer-locked): yields a :class:`Run`; the index is closed (unlocked) on the way out.

    ``around()`` is entered after the checks and before the index is opened, and ``Run.context`` is
    what it yields (a Ray cluster): a cluster that cannot be joined leaves no new index behind."""
    bundle = Bundle.open(bundle_path)
    options = options.for_run(bundle, _stored_methods(out))
    meta = {"bundle_path": str(Path(bundle_path).resolve()), "family": bundle.family, "window": list(bundle.window),
            "builtin": _is_builtin(bundle_path), "mode": options.mode}
    with around() as context, IndexWriter.create_or_open(out, bundle.fingerprints, bundle.dim, meta=meta) as index:
        held = index.meta.get("mode", "exact")  # indexes from before fast mode are exact
        if held != options.mode:
            raise SapIndexError(f"{out}: this index holds {held}-mode vectors and never mixes modes (fast vectors are "
                                f"an approximation of exact ones); index with --mode {held}, or into a new directory")
        others = index.methods() - {options.method}
        if others:
            raise SapIndexError(f"{out}: this index holds {', '.join(sorted(others))} pages and never mixes methods "
                                f"(its pages would not be comparable with {options.method} ones); index with the "
                                "same --method (and --position-correction), or into a new directory")
        yield Run(bundle, options, Recorder(index, options, progress), context)


def run_index(bundle_path: str | Path, inputs: list[str], out: str | Path, options: IndexOptions | None = None, *,
              stdin: TextIO | None = None, progress: Callable[[int, int], None] | None = None) -> IndexSummary:
    """Index ``inputs`` into the index at ``out`` (created, or resumed) with the bundle's encoder and SAP.

    Args:
        bundle_path: the exported bundle directory to encode pages with.
        inputs: files, directories, ``-`` (paths on ``stdin``) or ``@list.txt``, as
            :func:`sapindex.index.sources.iter_sources` reads them; when none of them exists the run
            is refused before anything is written.
        out: the index directory; a new or empty one is created, an existing one is resumed.
        options: what is stored and how the run goes (:class:`~sapindex.runtime.options.IndexOptions`;
            None: the defaults). Its method None means the index's own when it holds pages, else
            the default; an index holds one method and one mode.
        stdin: the stream a ``-`` input reads paths from (None: ``sys.stdin``).
        progress: called as ``progress(pages_done, pages_known)`` after each batch.

    Returns:
        The run's :class:`IndexSummary`; inputs that could not be read are in its failures (and
            in the index's failures table), the rest is indexed. :func:`sapindex.cluster.run_index_on_ray`
            is the same run spread over a Ray cluster.

    Raises:
        SapIndexError: None of ``inputs`` exists; the bundle is unreadable or fails its check; the
            options do not apply to it (see :meth:`IndexOptions.for_run`); ``out`` is not an index
            (nor new or empty), was built with another bundle, is being written by another process,
            or holds another mode or method than the run's; the device cannot be used. An input
            that cannot be read is not raised: it is a failure of the run.
    """
    started = time.perf_counter()
    check_some_input_exists(inputs)
    with recording(bundle_path, out, options or IndexOptions(), progress) as run:
        opts, recorder = run.options, run.recorder
        batch_size = opts.batch_size
        assert batch_size is not None  # resolved by IndexOptions.for_run
        encoder = Encoder(run.bundle, device=opts.device, threads=opts.threads)
        batch: list[Page] = []
        failures: list[Failure] = []

        def flush() -> None:
            kept = encoder.encode_pages_pruned([p.image for p in batch], opts) if batch else []
            recorder.store(list(zip(batch, kept, strict=True)), failures)
            batch.clear()
            failures.clear()

        pages = iter_pages(iter_sources(inputs, stdin=stdin if stdin is not None else sys.stdin), dpi=opts.dpi,
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
