"""The index: an embedded LanceDB database directory holding one row per page (torch-free).

On-disk layout of an index directory::

    <index>/
      sapindex.json     index metadata, written once, atomically (tmp file + fsync + rename):
                        format "sapindex-index", format_version, bundle_fingerprint, dim,
                        vector_dtype, created (UTC ISO 8601), sapindex_version, meta (caller dict)
      .lock             held (flock) by the one process writing the index; readers ignore it
      pages.lance/      LanceDB table, one row per indexed page (schema: page_schema)
      failures.lance/   LanceDB table, one row per failed file (page 0) or page

A page row stores the kept, L2-normalised vectors of one page as
``list<fixed_size_list<float16, dim>>`` (``float32`` on request), their visual-token positions
(``list<int32>``), and what is needed to trace it: path, content_hash (sha256 of the file),
page (1-based), width, height, grid_rows, grid_cols, global_rows, global_cols, n_visual (visual
tokens before pruning), n_kept, keep_ratio, method, bundle_fingerprint, indexed_at.

Positions are spatial (``sapindex.runtime.layout``): position ``k < grid_rows*grid_cols`` is cell
``(k // grid_cols, k % grid_cols)`` of the page grid; Idefics3 pages also encode a downscaled copy
of the whole page (the global tile), whose tokens follow as cells of a ``global_rows x
global_cols`` grid. Grid families store 0 there. ``global_rows``/``global_cols`` came after the
first indexes were written: an index without them still opens, reads 0 for them, and accepts
pages without a global grid.

Identity and resume: a page is identified by ``(content_hash, page)``. :meth:`Index.add_pages`
stores a key once (a byte-identical copy of an indexed file at another path is not stored
again: the first path wins), and :meth:`Index.indexed_keys` gives the keys for a resuming
indexer's skip predicate. Every :meth:`Index.add_pages` call is one LanceDB commit: after a
kill -9 the index holds whole batches only (a test kills a writer with SIGKILL to prove it).

Changed files: when ``add_pages`` receives rows for a path that the index holds under another
content hash, the old rows of that path are deleted in the same commit as the new rows are
added (a LanceDB merge-insert), so a re-indexed file never shows old and new pages together
once its new pages are in. :meth:`Index.drop_stale` does the same when every page of the new
content is already indexed elsewhere (nothing to add), :meth:`Index.remove_path` forgets a path.

Failures: :meth:`Index.add_failures` records ``(path, reason[, page])`` (page 0 / None = the
whole file), replacing an earlier failure of the same (path, page). Indexing a page of a path
later clears that path's whole-file failure and that page's failure; a failure is also ignored
(and removed at the next writer open) when a page of its path was indexed after it failed, so
a crash between the two commits cannot leave a stale failure behind.

One writer at a time (:meth:`Index.create_or_open` takes an exclusive lock on ``.lock``, released
on close or when the process dies); any number of readers (:meth:`Index.open`).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sapindex import __version__
from sapindex.errors import SapIndexError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "Hit",
    "Index",
    "IndexStats",
    "PageRow",
    "failure_schema",
    "page_schema",
]

FORMAT = "sapindex-index"
FORMAT_VERSION = 1
META_FILE = "sapindex.json"
LOCK_FILE = ".lock"
PAGES = "pages"
FAILURES = "failures"
VECTOR_DTYPES = ("float16", "float32")
DEFAULT_CHUNK_PAGES = 1024
_IN_LIST = 500  # values per SQL IN (...) list


def page_schema(dim: int, vector_dtype: str = "float16") -> pa.Schema:
    value = pa.float16() if vector_dtype == "float16" else pa.float32()
    return pa.schema([
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("page", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("grid_rows", pa.int32()),
        ("grid_cols", pa.int32()),
        ("global_rows", pa.int32()),  # 0: no global tile (grid families); absent in older indexes
        ("global_cols", pa.int32()),
        ("n_visual", pa.int32()),
        ("n_kept", pa.int32()),
        ("keep_ratio", pa.float64()),
        ("method", pa.string()),
        ("bundle_fingerprint", pa.string()),
        ("positions", pa.list_(pa.int32())),
        ("vectors", pa.list_(pa.list_(value, dim))),
        ("indexed_at", pa.timestamp("us", tz="UTC")),
    ])


def failure_schema() -> pa.Schema:
    return pa.schema([
        ("path", pa.string()),
        ("page", pa.int32()),  # 0: the whole file
        ("reason", pa.string()),
        ("failed_at", pa.timestamp("us", tz="UTC")),
    ])


class Hit(NamedTuple):
    path: str
    page: int
    score: float


@dataclass(frozen=True)
class IndexStats:
    files: int  # distinct paths with at least one page
    pages: int
    vectors: int  # kept vectors stored
    vectors_before_pruning: int  # sum of n_visual
    failures: int
    bytes_on_disk: int

    @property
    def kept_fraction(self) -> float:
        return self.vectors / self.vectors_before_pruning if self.vectors_before_pruning else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "kept_fraction": self.kept_fraction}


@dataclass
class PageRow:
    """One page to store. ``vectors`` [k, dim] and ``positions`` [k] (ascending), k >= 1."""

    path: str
    content_hash: str
    page: int
    width: int
    height: int
    grid: tuple[int, int]
    n_visual: int
    positions: Any
    vectors: Any
    keep_ratio: float
    method: str = "sap"
    global_grid: tuple[int, int] = (0, 0)  # (rows, cols) of the global tile's grid; (0, 0): none

    @classmethod
    def from_encoded(cls, page: Any, encoded: Any, keep_ratio: float | None = None,
                     method: str = "sap") -> "PageRow":
        """From an inputs.Page-like (path, page, content_hash, size) and an PrunedPage-like
        (vectors, positions, grid, n_visual[, global_grid]). ``keep_ratio`` defaults to n_kept / n_visual."""
        n_kept = len(encoded.positions)
        if keep_ratio is None:
            keep_ratio = n_kept / encoded.n_visual if encoded.n_visual else 1.0
        width, height = page.size
        return cls(path=page.path, content_hash=page.content_hash, page=page.page, width=width,
                   height=height, grid=tuple(encoded.grid), n_visual=encoded.n_visual,
                   positions=encoded.positions, vectors=encoded.vectors,
                   keep_ratio=float(keep_ratio), method=method,
                   global_grid=tuple(getattr(encoded, "global_grid", None) or (0, 0)))


# --------------------------------------------------------------------------- helpers


def _lancedb():
    os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB logs a WARN when it creates a table
    import lancedb

    return lancedb


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in_lists(column: str, values: Sequence[Any]) -> list[str]:
    """``column IN (...)`` filters, at most _IN_LIST values each."""
    values = list(values)
    out = []
    for i in range(0, len(values), _IN_LIST):
        part = values[i:i + _IN_LIST]
        lits = ", ".join(_sql_str(v) if isinstance(v, str) else str(int(v)) for v in part)
        out.append(f"{column} IN ({lits})")
    return out


def _stale_filter(stale: Mapping[str, Iterable[str]]) -> str:
    """SQL filter for the rows of each path under the given content hashes (not another path's
    rows under the same hash: a copy of the file indexed elsewhere keeps its pages)."""
    clauses = []
    for path, hashes in sorted(stale.items()):
        ins = " OR ".join(_in_lists("content_hash", sorted(hashes)))
        clauses.append(f"(path = {_sql_str(path)} AND ({ins}))")
    return " OR ".join(clauses)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _vectors_from_list(col: pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(all vectors [n, dim] float32, offsets [rows + 1] from 0) of a list<fixed_size_list> column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    inner = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets -= offsets[0]
    flat = inner.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32, copy=False), offsets


def _ints_from_list(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    flat = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
    return flat, offsets - offsets[0]


def _as_row(row: PageRow | Mapping) -> PageRow:
    if isinstance(row, PageRow):
        return row
    data = dict(row)
    if "grid" not in data and "grid_rows" in data:
        data["grid"] = (data.pop("grid_rows"), data.pop("grid_cols"))
    if "global_grid" not in data and "global_rows" in data:
        data["global_grid"] = (data.pop("global_rows") or 0, data.pop("global_cols") or 0)
    data.pop("n_kept", None)
    return PageRow(**data)


def _failure_items(items: Iterable[Any]) -> list[tuple[str, int, str]]:
    out = []
    for item in items:
        if hasattr(item, "path") and hasattr(item, "reason"):
            path, reason, page = item.path, item.reason, getattr(item, "page", None)
        else:
            item = tuple(item)
            if len(item) not in (2, 3):
                raise ValueError(f"a failure is (path, reason) or (path, reason, page), got {item!r}")
            path, reason = item[0], item[1]
            page = item[2] if len(item) == 3 else None
        out.append((str(path), int(page or 0), str(reason)))
    return out


# --------------------------------------------------------------------------- the index


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
    def create_or_open(cls, path: str | os.PathLike, bundle_fingerprint: str, dim: int,
                       meta: dict | None = None, *, vector_dtype: str = "float16") -> "Index":
        """Open the index at ``path`` for writing, creating it when the directory is new or empty.

        Refuses (SapIndexError) an index built with another bundle fingerprint or dimension, a
        path that exists but is not a sapindex index, and an index another process is writing.
        ``meta`` (JSON-serialisable) and ``vector_dtype`` are recorded at creation only; an
        existing index keeps its own.
        """
        if vector_dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector_dtype must be one of {VECTOR_DTYPES}, got {vector_dtype!r}")
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not bundle_fingerprint:
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
                    "bundle_fingerprint": str(bundle_fingerprint),
                    "dim": int(dim),
                    "vector_dtype": vector_dtype,
                    "created": _now().isoformat(timespec="seconds"),
                    "sapindex_version": __version__,
                    "meta": dict(meta or {}),
                }
                _write_json_atomic(path / META_FILE, info)
            cls._check_compatible(path, info, bundle_fingerprint, dim)
            db = _lancedb().connect(str(path))
            return cls(path, info, db, readonly=False, lock_fd=lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, bundle_fingerprint: str | None = None) -> "Index":
        """Open an existing index read-only (search, stats, listings); no lock is taken, and
        every read sees the latest commit of a writer working beside it."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise SapIndexError(f"{path}: not a sapindex index (no {META_FILE})")
        info = cls._read_info(path)
        if bundle_fingerprint is not None:
            cls._check_compatible(path, info, bundle_fingerprint, None)
        # check for a newer table version at every read: a long-lived reader sees new pages
        db = _lancedb().connect(str(path), read_consistency_interval=_dt.timedelta(0))
        return cls(path, info, db, readonly=True, lock_fd=None)

    @staticmethod
    def _read_info(path: Path) -> dict:
        try:
            info = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SapIndexError(f"{path / META_FILE}: unreadable index metadata ({err})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise SapIndexError(f"{path}: exists and is not a sapindex index ({META_FILE} has no "
                                f"format {FORMAT!r})")
        if int(info.get("format_version", 0)) > FORMAT_VERSION:
            raise SapIndexError(f"{path}: index format version {info.get('format_version')} is newer "
                                f"than this sapindex reads ({FORMAT_VERSION}); upgrade sapindex")
        return info

    @staticmethod
    def _check_empty(path: Path) -> None:
        if not path.exists():
            return
        entries = [e for e in os.listdir(path)
                   if e != LOCK_FILE and not e.startswith(f"{META_FILE}.tmp-")]
        if entries:
            raise SapIndexError(f"{path}: exists and is not a sapindex index (no {META_FILE}, "
                                f"not empty); choose a new or empty directory")

    @staticmethod
    def _check_compatible(path: Path, info: dict, bundle_fingerprint: str, dim: int | None) -> None:
        if info["bundle_fingerprint"] != bundle_fingerprint:
            raise SapIndexError(
                f"{path}: index was built with bundle fingerprint {info['bundle_fingerprint']}, "
                f"the current bundle has {bundle_fingerprint}; use the bundle it was built with "
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

    def __enter__(self) -> "Index":
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
        for where in _in_lists("path", paths):
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
        if not by_path:
            return
        clauses = [f"(path = {_sql_str(p)} AND page IN ({', '.join(str(n) for n in sorted(ns))}))"
                   for p, ns in sorted(by_path.items())]
        for i in range(0, len(clauses), _IN_LIST):
            self._failures.delete(" OR ".join(clauses[i:i + _IN_LIST]))
        for p, ns in by_path.items():
            for n in ns:
                self._failure_keys.pop((p, n), None)

    # ---------------------------------------------------------------- writing

    def _to_arrow(self, rows: list[PageRow], now: _dt.datetime) -> pa.Table:
        dim = self.dim
        np_dtype = np.float16 if self.vector_dtype == "float16" else np.float32
        vecs, poss, counts = [], [], []
        for row in rows:
            v = np.asarray(row.vectors)
            p = np.asarray(row.positions)
            where = f"{row.path} page {row.page}"
            if v.ndim != 2 or v.shape[1] != dim:
                raise ValueError(f"{where}: vectors must be [k, {dim}], got shape {v.shape}")
            if v.shape[0] < 1:
                raise ValueError(f"{where}: a page must keep at least one vector")
            if p.shape != (v.shape[0],):
                raise ValueError(f"{where}: positions must be [{v.shape[0]}], got shape {p.shape}")
            if p.size and not np.issubdtype(p.dtype, np.integer):
                raise ValueError(f"{where}: positions must be integers, got {p.dtype}")
            if np.any(p < 0) or np.any(np.diff(p) <= 0):
                raise ValueError(f"{where}: positions must be non-negative and strictly ascending")
            if row.n_visual and p[-1] >= row.n_visual:
                raise ValueError(f"{where}: position {p[-1]} >= n_visual {row.n_visual}")
            if int(row.page) < 1:
                raise ValueError(f"{where}: page numbers are 1-based")
            if not row.path or not row.content_hash:
                raise ValueError(f"{where}: path and content_hash must be non-empty")
            v = v.astype(np_dtype)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{where}: vectors are not finite in {self.vector_dtype}")
            vecs.append(v)
            poss.append(p.astype(np.int32))
            counts.append(v.shape[0])
        counts_np = np.asarray(counts, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts_np)])
        if offsets[-1] * dim >= 2**31:
            raise ValueError("batch too large: split it (over 2**31 vector values)")
        offsets = pa.array(offsets.astype(np.int32))
        flat = np.concatenate(vecs).reshape(-1)
        value_type = pa.float16() if self.vector_dtype == "float16" else pa.float32()
        vectors = pa.ListArray.from_arrays(
            offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat, value_type), dim))
        positions = pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(poss), pa.int32()))
        n = len(rows)
        columns = {
            "path": pa.array([str(r.path) for r in rows], pa.string()),
            "content_hash": pa.array([str(r.content_hash) for r in rows], pa.string()),
            "page": pa.array([int(r.page) for r in rows], pa.int32()),
            "width": pa.array([int(r.width) for r in rows], pa.int32()),
            "height": pa.array([int(r.height) for r in rows], pa.int32()),
            "grid_rows": pa.array([int(r.grid[0]) for r in rows], pa.int32()),
            "grid_cols": pa.array([int(r.grid[1]) for r in rows], pa.int32()),
            "global_rows": pa.array([int(r.global_grid[0]) for r in rows], pa.int32()),
            "global_cols": pa.array([int(r.global_grid[1]) for r in rows], pa.int32()),
            "n_visual": pa.array([int(r.n_visual) for r in rows], pa.int32()),
            "n_kept": pa.array(counts_np.astype(np.int32), pa.int32()),
            "keep_ratio": pa.array([float(r.keep_ratio) for r in rows], pa.float64()),
            "method": pa.array([str(r.method) for r in rows], pa.string()),
            "bundle_fingerprint": pa.array([self.bundle_fingerprint] * n, pa.string()),
            "positions": positions,
            "vectors": vectors,
            "indexed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
        schema = page_schema(dim, self.vector_dtype)
        missing = [name for name in schema.names if name not in self._page_columns()]
        if missing:  # an index from before these columns: store what it has, refuse what it cannot hold
            if any(tuple(r.global_grid) != (0, 0) for r in rows):
                raise SapIndexError(f"{self.path}: this index predates global-tile pages (no {', '.join(missing)} "
                                    "columns); index this bundle into a new index")
            for name in missing:
                del columns[name]
            schema = pa.schema([schema.field(name) for name in columns])
        return pa.Table.from_pydict(columns, schema=schema)

    def _page_columns(self) -> set[str]:
        """Column names of the pages table as stored (older indexes lack the global-grid ones)."""
        if self._pages is None:
            return set(page_schema(self.dim, self.vector_dtype).names)
        return set(self._pages.schema.names)

    def add_pages(self, rows: Iterable[PageRow | Mapping]) -> int:
        """Append one batch of pages in one commit; return how many rows were stored.

        Rows whose (content_hash, page) the index already holds are dropped (so a re-run is
        idempotent). If the index holds a path under another content hash than the batch gives
        it, that path's old rows are deleted in the same commit. Afterwards the whole-file failure
        of each path and the failures of the stored pages are cleared.
        """
        self._writable()
        rows = [_as_row(r) for r in rows]
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
            table = self._to_arrow(fresh, now)
            if stale:
                # one commit: insert the new pages, delete the changed paths' old pages
                (self._pages.merge_insert(["content_hash", "page"])
                 .when_not_matched_insert_all()
                 .when_not_matched_by_source_delete(_stale_filter(stale))
                 .execute(table))
            else:
                self._pages.add(table)
        elif stale:
            self._pages.delete(_stale_filter(stale))
        for p, hs in stale.items():
            self._forget(p, hs)
        for r in fresh:
            self._remember(str(r.path), str(r.content_hash), int(r.page))
        done = {(str(r.path), 0) for r in rows} | {(str(r.path), int(r.page)) for r in rows}
        done |= {k for k in self._failure_keys if k[0] in stale}
        self._delete_failures(done & self._failure_keys.keys())
        return len(fresh)

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

    def drop_stale(self, path: str, content_hash: str) -> int:
        """Delete the rows of ``path`` stored under another content hash (the file changed);
        return how many rows were deleted. add_pages does this itself when it gets new rows."""
        self._writable()
        stale = self._path_hashes.get(str(path), set()) - {str(content_hash)}
        return self._delete_hashes(str(path), stale)

    def remove_path(self, path: str) -> int:
        """Forget every row and failure of ``path`` (e.g. the file was deleted); return rows deleted."""
        self._writable()
        n = self._delete_hashes(str(path), set(self._path_hashes.get(str(path), set())))
        self._delete_failures([k for k in self._failure_keys if k[0] == str(path)])
        return n

    def _delete_hashes(self, path: str, hashes: set[str]) -> int:
        if not hashes:
            return 0
        self._pages.delete(_stale_filter({path: hashes}))
        return self._forget(path, hashes)

    def add_failures(self, items: Iterable[Any]) -> int:
        """Record failures: :class:`~sapindex.index.inputs.Failure` objects or ``(path, reason)``
        / ``(path, reason, page)`` tuples (page None or 0: the whole file). One commit; a failure
        replaces an earlier one of the same (path, page). Return how many were recorded."""
        self._writable()
        latest: dict[tuple[str, int], str] = {}
        for path, page, reason in _failure_items(items):
            latest[(path, page)] = " ".join(reason.split())  # one line
        if not latest:
            return 0
        now = _now()
        keys = sorted(latest)
        table = pa.Table.from_pydict({
            "path": pa.array([k[0] for k in keys], pa.string()),
            "page": pa.array([k[1] for k in keys], pa.int32()),
            "reason": pa.array([latest[k] for k in keys], pa.string()),
            "failed_at": pa.array([now] * len(keys), pa.timestamp("us", tz="UTC")),
        }, schema=failure_schema())
        (self._failures.merge_insert(["path", "page"])
         .when_matched_update_all()
         .when_not_matched_insert_all()
         .execute(table))
        for k in keys:
            self._failure_keys[k] = now
        return len(keys)

    def compact(self, cleanup_older_than: _dt.timedelta | None = _dt.timedelta(0)) -> None:
        """Merge the small fragments that many batches leave and delete old table versions
        (older than ``cleanup_older_than``; do not run it while a reader is searching)."""
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

    def failures(self) -> list:
        """Recorded failures not overtaken by a later indexed page, sorted by (path, page), as
        :class:`~sapindex.index.inputs.Failure` (page None for a whole-file failure)."""
        from sapindex.index.inputs import Failure

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

    def iter_rows(self, chunk_pages: int = DEFAULT_CHUNK_PAGES) -> Iterator[dict]:
        """Every stored row as a dict; ``positions`` int32 and ``vectors`` [n_kept, dim] float32."""
        stored = self._page_columns()
        names = [c for c in page_schema(self.dim, self.vector_dtype).names if c in stored]
        for batch in self._scan(self._pages, names, batch_size=chunk_pages):
            vecs, voff = _vectors_from_list(batch.column("vectors"), self.dim)
            pos, poff = _ints_from_list(batch.column("positions"))
            scalars = {c: batch.column(c).to_pylist() for c in names if c not in ("vectors", "positions")}
            for i in range(batch.num_rows):
                row = {c: scalars[c][i] for c in scalars}
                row["global_rows"] = row.get("global_rows") or 0  # missing column or null: no global tile
                row["global_cols"] = row.get("global_cols") or 0
                row["positions"] = pos[poff[i]:poff[i + 1]]
                row["vectors"] = vecs[voff[i]:voff[i + 1]]
                yield row

    def search(self, query_vectors: Any, k: int | None = 10,
               chunk_pages: int = DEFAULT_CHUNK_PAGES) -> list[Hit]:
        """Exact MaxSim of one query over every stored page, best first.

        ``score(page) = sum_i max_j q_i . d_j`` over the query's vectors q_i [M, dim] and the
        page's kept vectors d_j (stored float16 -> computed float32). Pages are read
        ``chunk_pages`` at a time; per chunk, all kept vectors are concatenated, multiplied by
        the query once, and reduced per page with ``np.maximum.reduceat``. Ties are broken by
        (path, page). ``k=None`` returns every page.
        """
        q = np.asarray(query_vectors, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim or q.shape[0] < 1:
            raise ValueError(f"query_vectors must be [M >= 1, {self.dim}], got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("query_vectors are not finite")
        if k is not None and k <= 0:
            return []
        if chunk_pages < 1:
            raise ValueError(f"chunk_pages must be >= 1, got {chunk_pages}")
        qt = np.ascontiguousarray(q.T)
        best: list[tuple[float, str, int]] = []

        def order(c: tuple[float, str, int]):
            return (-c[0], c[1], c[2])

        for batch in self._scan(self._pages, ["path", "page", "vectors"], batch_size=chunk_pages):
            if batch.num_rows == 0:
                continue
            vecs, offsets = _vectors_from_list(batch.column("vectors"), self.dim)
            sims = vecs @ qt  # [all kept vectors of the chunk, M]
            scores = np.maximum.reduceat(sims, offsets[:-1], axis=0).sum(axis=1)  # [pages]
            n = scores.shape[0]
            if k is not None and n > k:
                kth = np.partition(scores, n - k)[n - k]
                idx = np.nonzero(scores >= kth)[0]  # the top k and every tie with the k-th
            else:
                idx = np.arange(n)
            paths = batch.column("path").take(pa.array(idx)).to_pylist()
            pages = batch.column("page").take(pa.array(idx)).to_pylist()
            best.extend(zip(scores[idx].tolist(), paths, pages))
            if k is not None and len(best) > 4 * k:
                best = sorted(best, key=order)[:k]  # (score, path, page) is a total order: exact
        best.sort(key=order)
        if k is not None:
            best = best[:k]
        return [Hit(path, int(page), float(score)) for score, path, page in best]
