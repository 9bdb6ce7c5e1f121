"""The :class:`Index`, read side: opening an index directory (its compatibility check) and every
read (stats, rows, failures, versioned scans).

Why apart from the writer (:mod:`sapindex.index.store.writer`): a reader takes no lock and holds
no cache, and sees each new commit of a writer working beside it; the writer adds the lock and
the caches that make its writes idempotent. The format, identity, resume and failure rules are
documented in :mod:`sapindex.index.store.schema`; the exact scan over an index is
:func:`sapindex.search.scan.search_index`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sapindex.errors import SapIndexError
from sapindex.formats import read_artifact
from sapindex.index.records import Failure
from sapindex.index.store._arrow import ints_from_list, vectors_from_list
from sapindex.index.store._sql import in_lists, sql_str
from sapindex.index.store.schema import (
    DEFAULT_CHUNK_PAGES,
    FAILURES,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    PAGES,
    IndexStats,
    failure_schema,
    page_schema,
)

if TYPE_CHECKING:
    from typing_extensions import Self


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
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class Index:
    """A sapindex index directory opened for reading (:meth:`open`); :class:`~sapindex.index.store.writer.IndexWriter`
    is the same with the writer lock and the write methods.

    A context manager: ``with Index.open(path) as index: ...`` (closing a reader releases nothing).

    Args:
        path: The index directory.
        info: Its parsed ``sapindex.json``.
        db: The LanceDB connection to the directory. Made by :meth:`open`; not called directly.
    """

    def __init__(self, path: Path, info: dict, db: Any):
        self.path = path
        self.info = info
        self._db = db
        self._pages = self._open_table(PAGES, page_schema(self.dim, self.vector_dtype))
        self._failures = self._open_table(FAILURES, failure_schema())

    # ---------------------------------------------------------------- opening

    @property
    def bundle_fingerprint(self) -> str:
        """The fingerprint of the bundle the index was created with (its vectors' bundle)."""
        return self.info["bundle_fingerprint"]

    @property
    def dim(self) -> int:
        """The width of the stored vectors."""
        return int(self.info["dim"])

    @property
    def vector_dtype(self) -> str:
        """How the vectors are stored: ``float16`` (the default) or ``float32``."""
        return self.info["vector_dtype"]

    @property
    def meta(self) -> dict:
        """The caller's metadata recorded at creation (``index`` records the bundle path, family, window,
        mode and whether the bundle is the built-in one); empty when none was given."""
        return self.info.get("meta", {})

    @classmethod
    def open(cls, path: str | os.PathLike, bundle_fingerprint: str | tuple[str, ...] | None = None) -> Index:
        """Open an existing index read-only (search, stats, listings); no lock is taken, and
        every read sees the latest commit of a writer working beside it.

        Args:
            path: The index directory.
            bundle_fingerprint: The fingerprint the index must have been built with, or a bundle's
                ``Bundle.fingerprints`` (its own and those it replaces); None: no check.

        Returns:
            The opened index.

        Raises:
            SapIndexError: ``path`` holds no ``sapindex.json``, or it is unreadable, not a sapindex
                index or of a newer format version; the index was built with another bundle.
        """
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise SapIndexError(f"{path}: not a sapindex index (no {META_FILE})")
        info = cls._read_info(path)
        if bundle_fingerprint is not None:
            cls._check_compatible(path, info, cls._accepted(bundle_fingerprint), None)
        # check for a newer table version at every read: a long-lived reader sees new pages
        db = _lancedb().connect(str(path), read_consistency_interval=_dt.timedelta(0))
        return cls(path, info, db)

    @staticmethod
    def _read_info(path: Path) -> dict:
        return read_artifact(path / META_FILE, FORMAT, FORMAT_VERSION, "sapindex index")

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

    def _open_table(self, name: str, schema: pa.Schema):
        """The table, or None while it does not exist (metadata written, no page yet: an empty index)."""
        try:
            return self._db.open_table(name)
        except (ValueError, FileNotFoundError, RuntimeError, OSError):
            return None

    def close(self) -> None:
        """Nothing to release for a reader (the writer releases its lock); kept so that a reader and
        a writer close alike."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _scan(self, table: Any, columns: list[str], where: str | None = None,
              batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        if table is None:
            return
        query = table.search().select(columns)
        if where:
            query = query.where(where)
        yield from query.to_batches(batch_size)

    def _superseded(self, failures: Mapping[tuple[str, int], _dt.datetime]) -> set[tuple[str, int]]:
        """Failures that a page of their path, indexed after them, has overtaken."""
        if not failures or self._pages is None:
            return set()
        paths = sorted({p for p, _ in failures})
        latest_path: dict[str, _dt.datetime] = {}
        latest_page: dict[tuple[str, int], _dt.datetime] = {}
        for where in in_lists("path", paths):
            for batch in self._scan(self._pages, ["path", "page", "indexed_at"], where):
                for p, n, t in zip(*(batch.column(c).to_pylist() for c in ("path", "page", "indexed_at")), strict=True):
                    latest_path[p] = max(t, latest_path.get(p, t))
                    latest_page[(p, n)] = max(t, latest_page.get((p, n), t))
        out = set()
        for (p, n), failed_at in failures.items():
            t = latest_path.get(p) if n == 0 else latest_page.get((p, n))
            if t is not None and t >= failed_at:
                out.add((p, n))
        return out

    def page_columns(self) -> set[str]:
        """Column names of the pages table as stored: an index from before a column lacks it
        (the global grid, mode, scores, cover), and readers of it check here first.

        Returns:
            The stored column names (the current schema's for an index without pages yet).
        """
        if self._pages is None:
            return set(page_schema(self.dim, self.vector_dtype).names)
        return set(self._pages.schema.names)

    # ---------------------------------------------------------------- reading

    def indexed_keys(self) -> set[tuple[str, int]]:
        """Every stored (content_hash, page), for a resuming indexer's skip predicate.

        Returns:
            The ``(content_hash, page)`` key of every stored row (page 1-based).
        """
        keys: set[tuple[str, int]] = set()
        for batch in self._scan(self._pages, ["content_hash", "page"]):
            keys.update(zip(batch.column("content_hash").to_pylist(), batch.column("page").to_pylist(), strict=True))
        return keys

    def indexed_paths(self) -> dict[str, set[str]]:
        """path -> the content hashes stored for it (one, unless a re-index was interrupted).

        Returns:
            Each stored path, mapped to the set of content hashes its rows hold.
        """
        out: dict[str, set[str]] = {}
        for batch in self._scan(self._pages, ["path", "content_hash"]):
            for p, h in zip(batch.column("path").to_pylist(), batch.column("content_hash").to_pylist(), strict=True):
                out.setdefault(p, set()).add(h)
        return out

    def failures(self) -> list[Failure]:
        """Recorded failures not overtaken by a later indexed page, sorted by (path, page)
        (page None for a whole-file failure).

        Returns:
            The current failures, each with its path, one-line reason and 1-based page (None: the whole file).
        """
        rows: dict[tuple[str, int], tuple[str, _dt.datetime]] = {}
        for batch in self._scan(self._failures, ["path", "page", "reason", "failed_at"]):
            cols = [batch.column(c).to_pylist() for c in ("path", "page", "reason", "failed_at")]
            for p, n, reason, t in zip(*cols, strict=True):
                rows[(p, n)] = (reason, t)
        gone = self._superseded({k: v[1] for k, v in rows.items()})
        return [Failure(p, rows[(p, n)][0], n or None) for p, n in sorted(rows) if (p, n) not in gone]

    def stats(self) -> IndexStats:
        """What the index holds, counted by one scan of the pages table (``sapindex info``, summaries).

        Returns:
            Distinct files, pages, kept vectors, vectors before pruning, current failures and the
            directory's bytes on disk.
        """
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
        stored = self.page_columns()
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
        """The index methods of the stored rows (``sapindex.compression``): one, or none when empty.

        Returns:
            The set of the rows' ``method`` values (empty for an index without pages).
        """
        out: set[str] = set()
        for batch in self.scan_pages(["method"], chunk_pages=65536):
            out.update(pc.unique(batch.column("method")).to_pylist())
        return out

    def iter_rows(self, chunk_pages: int = DEFAULT_CHUNK_PAGES, version: int | None = None) -> Iterator[dict]:
        """Every stored row as a dict; ``positions`` int32, ``vectors`` [n_kept, dim] float32,
        ``scores`` float64 (None for pages stored without them) and ``cover`` int32 (None but for
        merging methods). ``version``: as of that version.

        Args:
            chunk_pages: Rows read per batch (the memory bound of the scan); default 1024.
            version: The pages table version to read; None: the latest.

        Yields:
            One dict per stored row: the page columns (path, content_hash, page, grid_rows, grid_cols,
            n_visual, n_kept, keep_ratio, method, mode, ...), with the arrays above; an index from before a
            column reads 0 for the global grid and ``exact`` for the mode.
        """
        return self._rows(chunk_pages=chunk_pages, version=version)

    def get(self, path: str, page: int) -> dict | None:
        """The stored row of ``page`` (1-based) of ``path``, as :meth:`iter_rows` gives it, or None.
        Should an interrupted re-index have left two versions, the later indexed one.

        Args:
            path: The file's path as the ``index`` run was given it.
            page: The 1-based page number.

        Returns:
            The row as a dict (see :meth:`iter_rows`), or None when the index does not hold that page.
        """
        rows = self._rows(f"path = {sql_str(path)} AND page = {int(page)}")
        return max(rows, key=lambda r: r["indexed_at"], default=None)

    def count_pages(self) -> int:
        """How many pages the index holds now: a count of the table's rows, nothing read (``stats``
        scans columns and walks the directory).

        Returns:
            The number of stored page rows (0 for an index without pages).
        """
        return 0 if self.version == 0 else int(self._pages.count_rows())

    @property
    def version(self) -> int:
        """The pages table's current version (0 before the first page): each commit adds one, so a
        long-lived reader compares versions to learn that the index changed."""
        if self._pages is None:
            self._pages = self._open_table(PAGES, page_schema(self.dim, self.vector_dtype))  # created since
        return 0 if self._pages is None else int(self._pages.version)

    def scan_pages(self, columns: list[str], where: str | None = None, version: int | None = None,
                   chunk_pages: int = DEFAULT_CHUNK_PAGES) -> Iterator[pa.RecordBatch]:
        """Record batches of the pages table's ``columns`` (rows matching the SQL ``where``), as of
        ``version`` (None: the latest), so that several reads see one consistent state of an index
        that a writer keeps committing to. A malformed ``where`` is a SapIndexError naming it.

        Args:
            columns: The pages table columns to read (``page_schema`` names).
            where: A SQL filter on the page columns (``"page <= 3"``); None: every row.
            version: The table version to read; None: the latest.
            chunk_pages: Rows per record batch at most; default 1024.

        Yields:
            Arrow record batches of those columns; none for an index without pages.

        Raises:
            SapIndexError: LanceDB refuses ``where`` (the message names the filter).
        """
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
