"""The :class:`Index`: opening (lock, compatibility check), writes with the writer's caches, and reads.

The format, identity, resume and failure rules it implements are documented in
:mod:`sapindex.index.store.schema`; the search scan is in :mod:`sapindex.index.store.search`.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sapindex import __version__
from sapindex.errors import SapIndexError
from sapindex.formats import read_artifact, write_json_atomic
from sapindex.index.records import Failure
from sapindex.index.store._arrow import failure_table, ints_from_list, page_table, vectors_from_list
from sapindex.index.store._sql import failure_filters, in_lists, sql_str, stale_filter
from sapindex.index.store.schema import (
    DEFAULT_CHUNK_PAGES,
    FAILURES,
    FORMAT,
    FORMAT_VERSION,
    LOCK_FILE,
    META_FILE,
    PAGES,
    VECTOR_DTYPES,
    Hit,
    IndexStats,
    PageRow,
    failure_schema,
    page_schema,
)
from sapindex.index.store.search import query_matrix, ranked_hits


def _lancedb():
    os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB logs a WARN when it creates a table
    import lancedb

    return lancedb


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class Index:
    """A sapindex index directory. Build with :meth:`create_or_open` (writer) or :meth:`open` (reader)."""

    def __init__(self, path: Path, info: dict, db: Any, readonly: bool, lock_fd: int | None):
        self.path = path
        self.info = info
        self._db = db
        self.readonly = readonly
        self._lock_fd = lock_fd
        self._pages = self._open_table(PAGES, page_schema(self.dim, self.vector_dtype))
        self._failures = self._open_table(FAILURES, failure_schema())
        # writer caches, loaded at open: content_hash -> {page: path}, path -> content hashes,
        # (path, page) -> failed_at of recorded failures
        self._pages_of: dict[str, dict[int, str]] = {}
        self._path_hashes: dict[str, set[str]] = {}
        self._failure_keys: dict[tuple[str, int], _dt.datetime] = {}
        if not readonly:
            self._load_caches()

    # ---------------------------------------------------------------- opening

    @property
    def bundle_fingerprint(self) -> str:
        return self.info["bundle_fingerprint"]

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def vector_dtype(self) -> str:
        return self.info["vector_dtype"]

    @property
    def meta(self) -> dict:
        return self.info.get("meta", {})

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, bundle_fingerprint: str | tuple[str, ...], dim: int,
                       meta: dict | None = None, *, vector_dtype: str = "float16") -> Index:
        """Open the index at ``path`` for writing, creating it when the directory is new or empty.

        ``bundle_fingerprint``: the bundle's, or a tuple of fingerprints the bundle answers to
        (``Bundle.fingerprints``: its own first, recorded at creation, then the bundles it replaces).
        Refuses (SapIndexError) an index built with another bundle fingerprint or dimension, a
        path that exists but is not a sapindex index, and an index another process is writing.
        ``meta`` (JSON-serialisable) and ``vector_dtype`` are recorded at creation only; an
        existing index keeps its own.
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
            return cls(path, info, db, readonly=False, lock_fd=lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, bundle_fingerprint: str | tuple[str, ...] | None = None) -> Index:
        """Open an existing index read-only (search, stats, listings); no lock is taken, and
        every read sees the latest commit of a writer working beside it."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise SapIndexError(f"{path}: not a sapindex index (no {META_FILE})")
        info = cls._read_info(path)
        if bundle_fingerprint is not None:
            cls._check_compatible(path, info, cls._accepted(bundle_fingerprint), None)
        # check for a newer table version at every read: a long-lived reader sees new pages
        db = _lancedb().connect(str(path), read_consistency_interval=_dt.timedelta(0))
        return cls(path, info, db, readonly=True, lock_fd=None)

    @classmethod
    def open_writer(cls, path: str | os.PathLike) -> Index:
        """Lock an existing index for writing with its own fingerprint and dimension (the index
        operations: prune's source, remove, compact); refuses a locked or missing index."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise SapIndexError(f"{path}: not a sapindex index (no {META_FILE})")
        info = cls._read_info(path)
        return cls.create_or_open(path, info["bundle_fingerprint"], int(info["dim"]))

    @staticmethod
    def _read_info(path: Path) -> dict:
        return read_artifact(path / META_FILE, FORMAT, FORMAT_VERSION, "sapindex index")

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
    def _accepted(bundle_fingerprint: str | tuple[str, ...]) -> tuple[str, ...]:
        """One fingerprint, or a bundle's own and those it replaces (``Bundle.fingerprints``), as a tuple."""
        return (bundle_fingerprint,) if isinstance(bundle_fingerprint, str) else tuple(bundle_fingerprint)

    @staticmethod
    def _check_compatible(path: Path, info: dict, accepted: tuple[str, ...], dim: int | None) -> None:
        if info["bundle_fingerprint"] not in accepted:
            raise SapIndexError(
                f"{path}: index was built with bundle fingerprint {info['bundle_fingerprint']}, "
                f"the current bundle has {accepted[0]}; use the bundle it was built with "
                f"or index into a new directory")
        if dim is not None and int(info["dim"]) != int(dim):
            raise SapIndexError(f"{path}: index stores {info['dim']}-d vectors, the current bundle "
                                f"gives {dim}-d vectors")

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
        try:
            return self._db.open_table(name)
        except (ValueError, FileNotFoundError, RuntimeError, OSError):
            if self.readonly:
                return None  # metadata written, tables not yet: an empty index
        return self._db.create_table(name, schema=schema, exist_ok=True)

    def close(self) -> None:
        """Release the writer lock (a reader has nothing to release)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _writable(self) -> None:
        if self.readonly:
            raise SapIndexError(f"{self.path}: index opened read-only")
        if self._lock_fd is None:
            raise SapIndexError(f"{self.path}: index is closed")

    # ---------------------------------------------------------------- caches

    def _scan(self, table: Any, columns: list[str], where: str | None = None,
              batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        if table is None:
            return
        query = table.search().select(columns)
        if where:
            query = query.where(where)
        yield from query.to_batches(batch_size)

    def _load_caches(self) -> None:
        interned: dict[str, str] = {}
        for batch in self._scan(self._pages, ["path", "content_hash", "page"]):
            paths = batch.column("path").to_pylist()
            hashes = batch.column("content_hash").to_pylist()
            pages = batch.column("page").to_pylist()
            for p, h, n in zip(paths, hashes, pages):
                h = interned.setdefault(h, h)  # one str object per hash, not one per page
                self._remember(p, h, n)
        for batch in self._scan(self._failures, ["path", "page", "failed_at"]):
            for p, n, t in zip(*(batch.column(c).to_pylist() for c in ("path", "page", "failed_at"))):
                self._failure_keys[(p, n)] = t
        superseded = self._superseded(self._failure_keys)
        if superseded:
            self._delete_failures(superseded)

    def _superseded(self, failures: Mapping[tuple[str, int], _dt.datetime]) -> set[tuple[str, int]]:
        """Failures that a page of their path, indexed after them, has overtaken."""
        if not failures or self._pages is None:
            return set()
        paths = sorted({p for p, _ in failures})
        latest_path: dict[str, _dt.datetime] = {}
        latest_page: dict[tuple[str, int], _dt.datetime] = {}
        for where in in_lists("path", paths):
            for batch in self._scan(self._pages, ["path", "page", "indexed_at"], where):
                for p, n, t in zip(*(batch.column(c).to_pylist() for c in ("path", "page", "indexed_at"))):
                    latest_path[p] = max(t, latest_path.get(p, t))
                    latest_page[(p, n)] = max(t, latest_page.get((p, n), t))
        out = set()
        for (p, n), failed_at in failures.items():
            t = latest_path.get(p) if n == 0 else latest_page.get((p, n))
            if t is not None and t >= failed_at:
                out.add((p, n))
        return out

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
        missing = [name for name in table.schema.names if name not in self._page_columns()]
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

    def _page_columns(self) -> set[str]:
        """Column names of the pages table as stored (older indexes lack the global-grid ones)."""
        if self._pages is None:
            return set(page_schema(self.dim, self.vector_dtype).names)
        return set(self._pages.schema.names)

    def add_pages(self, rows: Iterable[PageRow]) -> int:
        """Append one batch of pages in one commit; return how many rows were stored.

        Rows whose (content_hash, page) the index already holds are dropped (so a re-run is
        idempotent). If the index holds a path under another content hash than the batch gives
        it, that path's old rows are deleted in the same commit. Afterwards the whole-file failure
        of each path and the failures of the stored pages are cleared.
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
        return how many rows were deleted. add_pages does this itself when it gets new rows."""
        self._writable()
        stale = self._path_hashes.get(str(path), set()) - {str(content_hash)}
        return self._delete_hashes(str(path), stale)

    def remove_paths(self, targets: Iterable[str]) -> dict[str, list[str]]:
        """Forget the documents at each target: a path as the index run was given it, or a
        directory (every path under it). Pages go in one commit, then their failures. Returns
        target -> the paths removed; SapIndexError naming a target that matches no indexed or
        failed path, before anything is removed."""
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
        were recorded."""
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
        fails its read, hence the command's default grace period."""
        self._writable()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than")
            for table in (self._pages, self._failures):
                table.optimize(cleanup_older_than=cleanup_older_than)

    # ---------------------------------------------------------------- reading

    def indexed_keys(self) -> set[tuple[str, int]]:
        """Every stored (content_hash, page), for a resuming indexer's skip predicate."""
        if not self.readonly:
            return {(h, page) for h, pages in self._pages_of.items() for page in pages}
        keys: set[tuple[str, int]] = set()
        for batch in self._scan(self._pages, ["content_hash", "page"]):
            keys.update(zip(batch.column("content_hash").to_pylist(), batch.column("page").to_pylist()))
        return keys

    def indexed_paths(self) -> dict[str, set[str]]:
        """path -> the content hashes stored for it (one, unless a re-index was interrupted)."""
        if not self.readonly:
            return {p: set(hs) for p, hs in self._path_hashes.items()}
        out: dict[str, set[str]] = {}
        for batch in self._scan(self._pages, ["path", "content_hash"]):
            for p, h in zip(batch.column("path").to_pylist(), batch.column("content_hash").to_pylist()):
                out.setdefault(p, set()).add(h)
        return out

    def failures(self) -> list[Failure]:
        """Recorded failures not overtaken by a later indexed page, sorted by (path, page)
        (page None for a whole-file failure)."""
        rows: dict[tuple[str, int], tuple[str, _dt.datetime]] = {}
        for batch in self._scan(self._failures, ["path", "page", "reason", "failed_at"]):
            cols = [batch.column(c).to_pylist() for c in ("path", "page", "reason", "failed_at")]
            for p, n, reason, t in zip(*cols):
                rows[(p, n)] = (reason, t)
        gone = self._superseded({k: v[1] for k, v in rows.items()})
        return [Failure(p, rows[(p, n)][0], n or None) for p, n in sorted(rows) if (p, n) not in gone]

    def stats(self) -> IndexStats:
        paths: set[str] = set()
        pages = vectors = before = 0
        for batch in self._scan(self._pages, ["path", "n_kept", "n_visual"]):
            paths.update(pc.unique(batch.column("path")).to_pylist())
            pages += batch.num_rows
            vectors += int(pc.sum(batch.column("n_kept")).as_py() or 0)
            before += int(pc.sum(batch.column("n_visual")).as_py() or 0)
        return IndexStats(files=len(paths), pages=pages, vectors=vectors,
                          vectors_before_pruning=before, failures=len(self.failures()),
                          bytes_on_disk=_dir_bytes(self.path))

    def _rows(self, where: str | None = None, chunk_pages: int = DEFAULT_CHUNK_PAGES,
              version: int | None = None) -> Iterator[dict]:
        stored = self._page_columns()
        names = [c for c in page_schema(self.dim, self.vector_dtype).names if c in stored]
        for batch in self.scan_pages(names, where, version, chunk_pages):
            vecs, voff = vectors_from_list(batch.column("vectors"), self.dim)
            pos, poff = ints_from_list(batch.column("positions"))
            scores = batch.column("scores").to_numpy(zero_copy_only=False) if "scores" in names else None
            cover = batch.column("cover").to_numpy(zero_copy_only=False) if "cover" in names else None
            scalars = {c: batch.column(c).to_pylist() for c in names
                       if c not in ("vectors", "positions", "scores", "cover")}
            for i in range(batch.num_rows):
                row = {c: scalars[c][i] for c in scalars}
                row["global_rows"] = row.get("global_rows") or 0  # missing column or null: no global tile
                row["global_cols"] = row.get("global_cols") or 0
                row["mode"] = row.get("mode") or "exact"  # missing column: an index from before fast mode
                row["positions"] = pos[poff[i]:poff[i + 1]]
                row["scores"] = None if scores is None or scores[i] is None else np.asarray(scores[i], np.float64)
                row["cover"] = None if cover is None or cover[i] is None else np.asarray(cover[i], np.int32)
                row["vectors"] = vecs[voff[i]:voff[i + 1]]
                yield row

    def methods(self) -> set[str]:
        """The index methods of the stored rows (``sapindex.runtime.methods``): one, or none when empty."""
        out: set[str] = set()
        for batch in self.scan_pages(["method"], chunk_pages=65536):
            out.update(pc.unique(batch.column("method")).to_pylist())
        return out

    def iter_rows(self, chunk_pages: int = DEFAULT_CHUNK_PAGES, version: int | None = None) -> Iterator[dict]:
        """Every stored row as a dict; ``positions`` int32, ``vectors`` [n_kept, dim] float32,
        ``scores`` float64 (None for pages stored without them) and ``cover`` int32 (None but for
        merging methods). ``version``: as of that version."""
        return self._rows(chunk_pages=chunk_pages, version=version)

    def get(self, path: str, page: int) -> dict | None:
        """The stored row of ``page`` (1-based) of ``path``, as :meth:`iter_rows` gives it, or None.
        Should an interrupted re-index have left two versions, the later indexed one."""
        rows = self._rows(f"path = {sql_str(path)} AND page = {int(page)}")
        return max(rows, key=lambda r: r["indexed_at"], default=None)

    @property
    def version(self) -> int:
        """The pages table's current version (0 before the first page): each commit adds one, so a
        long-lived reader compares versions to learn that the index changed."""
        if self._pages is None and self.readonly:
            self._pages = self._open_table(PAGES, page_schema(self.dim, self.vector_dtype))  # created since
        return 0 if self._pages is None else int(self._pages.version)

    def scan_pages(self, columns: list[str], where: str | None = None, version: int | None = None,
                   chunk_pages: int = DEFAULT_CHUNK_PAGES) -> Iterator[pa.RecordBatch]:
        """Record batches of the pages table's ``columns`` (rows matching the SQL ``where``), as of
        ``version`` (None: the latest), so that several reads see one consistent state of an index
        that a writer keeps committing to. A malformed ``where`` is a SapIndexError naming it."""
        if self.version == 0:
            return
        table = self._pages
        if version is not None:
            table = self._db.open_table(PAGES)
            table.checkout(int(version))
        try:
            yield from self._scan(table, columns, where, batch_size=chunk_pages)
        except (ValueError, RuntimeError) as exc:
            if where:
                raise SapIndexError(f"filter {where!r}: {str(exc).splitlines()[0]}") from None
            raise

    def search(self, query_vectors: Any, k: int | None = 10,
               chunk_pages: int = DEFAULT_CHUNK_PAGES) -> list[Hit]:
        """Exact MaxSim of one query ``[M, dim]`` over every stored page, best first, reading
        ``chunk_pages`` pages at a time (see :mod:`sapindex.index.store.search`). Ties are broken
        by (path, page). ``k=None`` returns every page."""
        q = query_matrix(query_vectors, self.dim)
        if k is not None and k <= 0:
            return []
        if chunk_pages < 1:
            raise ValueError(f"chunk_pages must be >= 1, got {chunk_pages}")
        return ranked_hits(self._scan(self._pages, ["path", "page", "vectors"], batch_size=chunk_pages),
                           q, self.dim, k)
