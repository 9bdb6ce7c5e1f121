"""The driver's side of the input: listing files, the skip check, and cutting the work into waves.

Ray Data has no source that a driver can keep feeding, and listing an archive of millions of pages
(every file is hashed for the skip check) before encoding the first page would leave the cluster
idle for hours. So the driver lists in a thread, one **wave** ahead of the cluster: each wave is a
dataset of its own. The first wave is small (encoding starts within seconds), each next one four
times larger up to :data:`WAVE_MAX_PAGES`, so that the cost of starting a wave's actor pool (each
actor loads the bundle: ~20 s at real size) is paid a few times per ~10^4 pages, and the driver
never holds more than two waves of page references, however many files there are.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from sapindex.index.documents import InputError, describe
from sapindex.index.records import Failure, FileInfo

WAVE_MAX_PAGES = 16384
WAVE_GROWTH = 4


@dataclass
class Wave:
    """Files listed (with which of their pages were already stored or planned), inputs that failed
    to list, and the rendering chunks of the pages to encode.

    A chunk is one file's next ``chunk_pages`` pending pages: one rendering task, whose output is
    one block, which Ray Data hands to one encoder call. A chunk of one batch therefore keeps every
    encoder busy even when the whole run is one long PDF.
    """

    chunk_pages: int = 1
    files: list[tuple[FileInfo, list[bool]]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    pages: int = 0

    def add_file(self, info: FileInfo, already: list[bool]) -> None:
        self.files.append((info, already))
        pending = [p for p, done in enumerate(already, start=1) if not done]
        listed = asdict(info)
        for i in range(0, len(pending), self.chunk_pages):
            self.chunks.append({**listed, "pages": pending[i:i + self.chunk_pages]})
        self.pages += len(pending)


def plan_waves(sources: Iterable[str | Failure], stored: set[tuple[str, int]], chunk_pages: int, first_pages: int,
               max_pages: int = WAVE_MAX_PAGES) -> Iterator[Wave]:
    """Waves over ``sources`` (paths and failures, as :func:`~sapindex.index.sources.iter_sources`
    yields them). A page is planned once: not when ``stored`` holds it (read, never changed
    here), nor when an earlier file of this run with the same content planned it (the driver
    keeps one hash per file for that, not one key per page)."""
    planned: set[str] = set()
    limit = max(1, first_pages)
    wave = Wave(chunk_pages)
    for source in sources:
        if isinstance(source, Failure):
            wave.failures.append(source)
            continue
        try:
            info = describe(source)
        except InputError as err:
            wave.failures.append(err.failure)
            continue
        twice = info.content_hash in planned
        already = [twice or (info.content_hash, p) in stored for p in range(1, info.n_pages + 1)]
        planned.add(info.content_hash)
        wave.add_file(info, already)
        if wave.pages >= limit:
            yield wave
            wave, limit = Wave(chunk_pages), min(limit * WAVE_GROWTH, max(max_pages, 1))
    if wave.files or wave.failures:
        yield wave


class Lister:
    """:func:`plan_waves` run in a thread, at most one wave ahead of its consumer; an exception
    in the thread is raised in the consumer. Iterate it; :meth:`stop` ends it early."""

    _END = object()

    def __init__(self, waves: Iterator[Wave]):
        self._waves = waves
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sapindex-lister", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for wave in self._waves:
                if not self._put(wave):
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            self._put(err)
            return
        self._put(self._END)

    def __iter__(self) -> Iterator[Wave]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
