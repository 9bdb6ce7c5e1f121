"""The :class:`IndexWriter`: an :class:`~sapindex.index.store.index.Index` opened for writing, with
the writer lock (one writer per index: ``index``, ``remove``, ``compact``, ``optimize`` and prune's
source take it) and the caches that make writes idempotent (which (content hash, page) and which
path's hashes are stored, which failures are recorded), loaded once at open.

The write rules (identity, changed files, failures superseded by a later page) are documented in
:mod:`sapindex.index.store.schema`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from sapindex import __version__
from sapindex.errors import SapIndexError
from sapindex.formats import write_json_atomic
from sapindex.index.records import Failure
from sapindex.index.store._arrow import failure_table, page_table
from sapindex.index.store._sql import failure_filters, in_lists, stale_filter
from sapindex.index.store.index import Index, _lancedb, _now
from sapindex.index.store.schema import FORMAT, FORMAT_VERSION, LOCK_FILE, META_FILE, VECTOR_DTYPES, PageRow


class IndexWriter(Index):
    """A sapindex index directory locked for writing: :meth:`create_or_open`, or :meth:`open_writer`
    for an existing one. Closing it (or leaving its ``with`` block) releases the lock.

    Args:
        path: The index directory.
        info: Its parsed ``sapindex.json``.
        db: The LanceDB connection to the directory.
        lock_fd: The descriptor of ``.lock``, flocked by this process. Made by :meth:`create_or_open`
            and :meth:`open_writer`; not called directly.
    """

    def __init__(self, path: Path, info: dict, db: Any, lock_fd: int):
        self._lock_fd: int | None = lock_fd
        # caches, loaded at open: content_hash -> {page: path}, path -> content hashes,
        # (path, page) -> failed_at of recorded failures
        self._pages_of: dict[str, dict[int, str]] = {}
        self._path_hashes: dict[str, set[str]] = {}
        self._failure_keys: dict[tuple[str, int], _dt.datetime] = {}
        super().__init__(path, info, db)
        self._load_caches()

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, bundle_fingerprint: str | tuple[str, ...], dim: int,
                       meta: dict | None = None, *, vector_dtype: str = "float16") -> IndexWriter:
        """Open the index at ``path`` for writing, creating it when the directory is new or empty.

        ``bundle_fingerprint``: the bundle's, or a tuple of fingerprints the bundle answers to
        (``Bundle.fingerprints``: its own first, recorded at creation, then the bundles it replaces).
        Refuses (SapIndexError) an index built with another bundle fingerprint or dimension, a
        path that exists but is not a sapindex index, and an index another process is writing.
        ``meta`` (JSON-serialisable) and ``vector_dtype`` are recorded at creation only; an
        existing index keeps its own.

        Args:
            path: The index directory: new, empty, or an existing index.
            bundle_fingerprint: The bundle's fingerprint, or its ``Bundle.fingerprints``.
            dim: The width of the vectors, positive; must equal an existing index's.
            meta: Caller metadata recorded in ``sapindex.json`` at creation; None: empty.
            vector_dtype: ``float16`` (default) or ``float32``, the stored vectors' type at creation.

        Returns:
            The index, locked for writing by this process until it is closed.

        Raises:
            ValueError: ``vector_dtype`` is not ``float16`` or ``float32``, ``dim`` is not positive,
                or ``bundle_fingerprint`` is empty.
            SapIndexError: ``path`` exists and is a file, or a non-empty directory that is not a
                sapindex index; its ``sapindex.json`` is unreadable or of a newer format; the index
                was built with another bundle fingerprint or dimension; another process holds its lock.
        """
        if vector_dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector_dtype must be one of {VECTOR_DTYPES}, got {vector_dtype!r}")
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        accepted = cls._accepted(bundle_fingerprint)
        if not accepted or not all(accepted):
            raise ValueError("bundle_fingerprint must be a non-empty string")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise SapIndexError(f"{path}: exists and is not a sapindex index (not a directory)")
        info = cls._read_info(path) if (path / META_FILE).exists() else None
        if info is None:
            cls._check_empty(path)
            path.mkdir(parents=True, exist_ok=True)
        lock_fd = cls._lock(path)
        try:
            if info is None:
                info = cls._read_info(path) if (path / META_FILE).exists() else None  # lost a race
            if info is None:
                cls._check_empty(path)
                info = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "bundle_fingerprint": str(accepted[0]),
                    "dim": int(dim),
                    "vector_dtype": vector_dtype,
                    "created": _now().isoformat(timespec="seconds"),
                    "sapindex_version": __version__,
                    "meta": dict(meta or {}),
                }
                write_json_atomic(path / META_FILE, info, sort_keys=True)
            cls._check_compatible(path, info, accepted, dim)
            db = _lancedb().connect(str(path))
            return cls(path, info, db, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open_writer(cls, path: str | os.PathLike) -> IndexWriter:
        """Lock an existing index for writing with its own fingerprint and dimension (the index
        operations: prune's source, remove, compact); refuses a locked or missing index.

        Args:
            path: The directory of an existing index.

        Returns:
            The index, locked for writing by this process until it is closed.

        Raises:
            SapIndexError: ``path`` holds no ``sapindex.json``, it is unreadable or of a newer format,
                or another process holds the index's lock.
        """
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise SapIndexError(f"{path}: not a sapindex index (no {META_FILE})")
        info = cls._read_info(path)
        return cls.create_or_open(path, info["bundle_fingerprint"], int(info["dim"]))

    @staticmethod
    def _check_empty(path: Path) -> None:
        if not path.exists():
            return
        # the lock, and a metadata tmp file a killed creator left (".sapindex.json.tmp-<pid>")
        entries = [e for e in os.listdir(path)
                   if e != LOCK_FILE and not e.lstrip(".").startswith(f"{META_FILE}.tmp-")]
        if entries:
            raise SapIndexError(f"{path}: exists and is not a sapindex index (no {META_FILE}, "
                                f"not empty); choose a new or empty directory")

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SapIndexError(f"{path}: another process is writing this index (its {LOCK_FILE} "
                                f"is locked); wait for it or close it") from None
        return fd

    def _open_table(self, name: str, schema: pa.Schema):
        """The table, created when missing (a new index)."""
        return super()._open_table(name, schema) or self._db.create_table(name, schema=schema, exist_ok=True)

    def close(self) -> None:
        """Release the writer lock; closing again does nothing. The write methods refuse a closed writer."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit the modules close needs may be gone
            self.close()

    def _writable(self) -> None:
        if self._lock_fd is None:
            raise SapIndexError(f"{self.path}: index is closed")

    # ---------------------------------------------------------------- caches

    def _load_caches(self) -> None:
        interned: dict[str, str] = {}
        for batch in self._scan(self._pages, ["path", "content_hash", "page"]):
            paths = batch.column("path").to_pylist()
            hashes = batch.column("content_hash").to_pylist()
            pages = batch.column("page").to_pylist()
            for p, h, n in zip(paths, hashes, pages, strict=True):
                h = interned.setdefault(h, h)  # one str object per hash, not one per page
                self._remember(p, h, n)
        for batch in self._scan(self._failures, ["path", "page", "failed_at"]):
            for p, n, t in zip(*(batch.column(c).to_pylist() for c in ("path", "page", "failed_at")), strict=True):
                self._failure_keys[(p, n)] = t
        superseded = self._superseded(self._failure_keys)
        if superseded:
            self._delete_failures(superseded)

    def _delete_failures(self, keys: Iterable[tuple[str, int]]) -> None:
        by_path: dict[str, list[int]] = {}
        for p, n in keys:
            by_path.setdefault(p, []).append(n)
        for where in failure_filters(by_path):
            self._failures.delete(where)
        for p, ns in by_path.items():
            for n in ns:
                self._failure_keys.pop((p, n), None)

    def _remember(self, path: str, content_hash: str, page: int) -> None:
        self._pages_of.setdefault(content_hash, {})[page] = path
        self._path_hashes.setdefault(path, set()).add(content_hash)

    def _forget(self, path: str, hashes: Iterable[str]) -> int:
        """Drop the cached rows of ``path`` under ``hashes``; return how many there were."""
        n = 0
        for h in hashes:
            pages = self._pages_of.get(h, {})
            mine = [page for page, p in pages.items() if p == path]
            for page in mine:
                del pages[page]
            n += len(mine)
            if not pages:
                self._pages_of.pop(h, None)
        left = self._path_hashes.get(path, set()) - set(hashes)
        if left:
            self._path_hashes[path] = left
        else:
            self._path_hashes.pop(path, None)
        return n

    # ---------------------------------------------------------------- writing

    def _page_table(self, rows: list[PageRow], now: _dt.datetime) -> pa.Table:
        table = page_table(rows, self.dim, self.vector_dtype, self.bundle_fingerprint, now)
        missing = [name for name in table.schema.names if name not in self.page_columns()]
        if missing:  # an index from before these columns: store what it has, refuse what it cannot hold
            if any(tuple(r.global_grid) != (0, 0) for r in rows):
                raise SapIndexError(f"{self.path}: this index predates global-tile pages (no {', '.join(missing)} "
                                    "columns); index this bundle into a new index")
            if "mode" in missing and any(r.mode != "exact" for r in rows):
                raise SapIndexError(f"{self.path}: this index predates fast mode and holds exact vectors only; "
                                    "index fast-mode pages into a new index")
            if "cover" in missing and any(r.cover is not None for r in rows):
                raise SapIndexError(f"{self.path}: this index predates merged vectors (no cover column); index "
                                    f"--method {rows[0].method} into a new index")
            table = table.drop_columns(missing)
        return table

    def add_pages(self, rows: Iterable[PageRow]) -> int:
        """Append one batch of pages in one commit; return how many rows were stored.

        Rows whose (content_hash, page) the index already holds are dropped (so a re-run is
        idempotent). If the index holds a path under another content hash than the batch gives
        it, that path's old rows are deleted in the same commit. Afterwards the whole-file failure
        of each path and the failures of the stored pages are cleared.

        Args:
            rows: The pages to store (``vectors [k, dim]``, ``positions [k]``, k >= 1, each).

        Returns:
            The number of rows stored (those not already in the index).

        Raises:
            SapIndexError: The writer is closed, or the index predates a column the rows need
                (global-tile pages, fast-mode pages, merged vectors' cover).
        """
        self._writable()
        rows = list(rows)
        if not rows:
            return 0
        batch_hashes: dict[str, set[str]] = {}
        for r in rows:
            batch_hashes.setdefault(str(r.path), set()).add(str(r.content_hash))
        stale = {p: self._path_hashes.get(p, set()) - hs for p, hs in batch_hashes.items()}
        stale = {p: hs for p, hs in stale.items() if hs}
        fresh, seen = [], set()
        for r in rows:
            key = (str(r.content_hash), int(r.page))
            if key in seen or key[1] in self._pages_of.get(key[0], ()):
                continue
            seen.add(key)
            fresh.append(r)
        now = _now()
        if fresh:
            table = self._page_table(fresh, now)
            if stale:
                # one commit: insert the new pages, delete the changed paths' old pages
                (self._pages.merge_insert(["content_hash", "page"])
                 .when_not_matched_insert_all()
                 .when_not_matched_by_source_delete(stale_filter(stale))
                 .execute(table))
            else:
                self._pages.add(table)
        elif stale:
            self._pages.delete(stale_filter(stale))
        for p, hs in stale.items():
            self._forget(p, hs)
        for r in fresh:
            self._remember(str(r.path), str(r.content_hash), int(r.page))
        done = {(str(r.path), 0) for r in rows} | {(str(r.path), int(r.page)) for r in rows}
        done |= {k for k in self._failure_keys if k[0] in stale}
        self._delete_failures(done & self._failure_keys.keys())
        return len(fresh)

    def drop_stale(self, path: str, content_hash: str) -> int:
        """Delete the rows of ``path`` stored under another content hash (the file changed);
        return how many rows were deleted. add_pages does this itself when it gets new rows.

        Args:
            path: The file's path as the index holds it.
            content_hash: The file's current sha256; rows under any other hash go.

        Returns:
            The number of rows deleted (0 when none was stale).

        Raises:
            SapIndexError: The writer is closed.
        """
        self._writable()
        stale = self._path_hashes.get(str(path), set()) - {str(content_hash)}
        return self._delete_hashes(str(path), stale)

    def remove_paths(self, targets: Iterable[str]) -> dict[str, list[str]]:
        """Forget the documents at each target: a path as the index run was given it, or a
        directory (every path under it). Pages go in one commit, then their failures. Returns
        target -> the paths removed; SapIndexError naming a target that matches no indexed or
        failed path, before anything is removed.

        Args:
            targets: Paths as the index holds them, or directories (every path under them).

        Returns:
            Each target, mapped to the sorted paths removed for it.

        Raises:
            SapIndexError: The writer is closed, or a target matches no indexed or failed path
                (nothing is removed then).
        """
        self._writable()
        known = self._path_hashes.keys() | {p for p, _ in self._failure_keys}
        matched: dict[str, list[str]] = {}
        for target in targets:
            under = str(target).rstrip("/") + "/"
            hits = sorted(p for p in known if p == str(target) or p.startswith(under))
            if not hits:
                raise SapIndexError(f"{target}: no indexed path is or lies under it; nothing removed")
            matched[str(target)] = hits
        gone = set().union(*matched.values()) if matched else set()
        with_pages = sorted(p for p in gone if p in self._path_hashes)
        if with_pages:
            self._pages.delete(" OR ".join(in_lists("path", with_pages)))  # one commit, however many paths
        for p in with_pages:
            self._forget(p, set(self._path_hashes[p]))
        self._delete_failures([k for k in self._failure_keys if k[0] in gone])
        return matched

    def _delete_hashes(self, path: str, hashes: set[str]) -> int:
        if not hashes:
            return 0
        self._pages.delete(stale_filter({path: hashes}))
        return self._forget(path, hashes)

    def add_failures(self, failures: Iterable[Failure]) -> int:
        """Record failures (:class:`~sapindex.index.records.Failure`, page None: the whole file).

        One commit; a failure replaces an earlier one of the same (path, page). Return how many
        were recorded.

        Args:
            failures: The failures to record; a reason is stored on one line.

        Returns:
            The number of distinct (path, page) failures recorded.

        Raises:
            SapIndexError: The writer is closed.
        """
        self._writable()
        latest: dict[tuple[str, int], str] = {}
        for f in failures:
            latest[(str(f.path), int(f.page or 0))] = " ".join(str(f.reason).split())  # one line
        if not latest:
            return 0
        now = _now()
        (self._failures.merge_insert(["path", "page"])
         .when_matched_update_all()
         .when_not_matched_insert_all()
         .execute(failure_table(latest, now)))
        for k in latest:
            self._failure_keys[k] = now
        return len(latest)

    def compact(self, cleanup_older_than: _dt.timedelta | None = _dt.timedelta(0)) -> None:
        """Merge the small fragments that many batches leave and delete the table versions older
        than ``cleanup_older_than`` (their files: what ``remove`` and re-indexed files left).
        ``sapindex compact`` runs it; a reader that is reading one of those versions that moment
        fails its read, hence the command's default grace period.

        Args:
            cleanup_older_than: The age beyond which old table versions are deleted; default 0 (every
                version but the latest); None: LanceDB's own default.

        Raises:
            SapIndexError: The writer is closed.
        """
        self._writable()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than")
            for table in (self._pages, self._failures):
                table.optimize(cleanup_older_than=cleanup_older_than)

    # ---------------------------------------------------------------- reading, from the caches

    def indexed_keys(self) -> set[tuple[str, int]]:
        """Every stored (content_hash, page), for a resuming indexer's skip predicate.

        Returns:
            The ``(content_hash, page)`` key of every stored row, from the writer's cache (no scan).
        """
        return {(h, page) for h, pages in self._pages_of.items() for page in pages}

    def indexed_paths(self) -> dict[str, set[str]]:
        """path -> the content hashes stored for it (one, unless a re-index was interrupted).

        Returns:
            Each stored path, mapped to a copy of its set of content hashes, from the writer's cache.
        """
        return {p: set(hs) for p, hs in self._path_hashes.items()}
