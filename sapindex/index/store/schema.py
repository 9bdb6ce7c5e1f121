"""The index format: a LanceDB database directory with one row per page, and the records in and out.

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
tokens before pruning), n_kept, keep_ratio, method, mode, bundle_fingerprint, indexed_at.

``mode`` is how the kept vectors were computed: ``exact`` (the decoder on every token) or ``fast``
(the layers after the SAP window on the prompt and the kept tokens only, an approximation:
``Encoder.encode_pages_pruned``). Indexes from before this column read ``exact`` for every row
(fast mode did not exist) and take exact rows only.

``scores`` (``list<float64>``, one per kept token, in the order of ``positions``) is the score
SAP ranked the token by (its centrality, or the causally corrected one for method
``sap-poscorr``), stored so that ``sapindex prune`` can lower the keep ratio without re-encoding:
the top ``keep_count(n_visual, r)`` of them, ties to the lower position, is exactly the set an
index run at ratio ``r`` keeps. Indexes from before this column open and search as before, and
store no scores for their new pages; ``prune`` refuses them.

``method`` is what the row's vectors are (``sapindex.compression``): ``sap`` / ``sap-poscorr``
/ ``sap-budget`` store kept tokens' own vectors; the merging methods ``sap-merge`` and
``sap-kmeans`` store group means, each at the position of its anchor token, and ``cover``
(``list<int32>``, one entry per visual token, in position order) says which stored vector each
token was merged into (its index in the row's ``positions``; -1: none). Selection rows store null
there. An index holds one method: the indexer refuses to add another. Indexes from before the
column open and search as before, and refuse merged pages.

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
content is already indexed elsewhere (nothing to add), :meth:`Index.remove_paths` forgets paths
(documents, or every path under a directory) in one commit.

Failures: :meth:`Index.add_failures` records :class:`~sapindex.index.records.Failure` s (page
None = the whole file, stored as page 0), replacing an earlier failure of the same (path, page).
Indexing a page of a path later clears that path's whole-file failure and that page's failure; a
failure is also ignored (and removed at the next writer open) when a page of its path was indexed
after it failed, so a crash between the two commits cannot leave a stale failure behind.

One writer at a time (:meth:`IndexWriter.create_or_open` takes an exclusive lock on ``.lock``, released
on close or when the process dies); any number of readers (:meth:`Index.open`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Protocol

import numpy as np
import pyarrow as pa

__all__ = [
    "DEFAULT_CHUNK_PAGES",
    "FAILURES",
    "FORMAT",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "META_FILE",
    "PAGES",
    "VECTOR_DTYPES",
    "Hit",
    "IndexStats",
    "KeptVectors",
    "PageRow",
    "PageSource",
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
        ("mode", pa.string()),  # "exact" or "fast"; absent in older indexes (all exact)
        ("bundle_fingerprint", pa.string()),
        ("positions", pa.list_(pa.int32())),
        ("scores", pa.list_(pa.float64())),  # SAP ranking score per kept token; absent in older indexes
        ("cover", pa.list_(pa.int32())),  # merging methods: [n_visual] row each token was merged into; else null
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
    """One ranked page of a search: its path, 1-based page and exact MaxSim score.

    A named tuple, so that a hit unpacks (``path, page, score = hit``) and compares by value.

    Attributes:
        path: The file's path as the ``index`` run was given it.
        page: The 1-based page number (1 for a single image).
        score: The exact MaxSim of the query over the page's kept vectors (higher is better).
    """

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


class PageSource(Protocol):
    """Where a page came from, as :class:`sapindex.index.records.Page` tells it."""

    path: str
    page: int
    content_hash: str
    size: tuple[int, int]  # (width, height)


class KeptVectors(Protocol):
    """What SAP kept of a page, as :class:`sapindex.runtime.encoder.PrunedPage` tells it."""

    vectors: np.ndarray  # [k, dim]
    positions: np.ndarray  # [k], ascending
    grid: tuple[int, int]
    n_visual: int
    global_grid: tuple[int, int] | None
    scores: np.ndarray | None  # [k], the SAP ranking score of each kept token (None: not known)
    cover: np.ndarray | None  # [n_visual], the row each token was merged into (merging methods)


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
    positions: np.ndarray
    vectors: np.ndarray
    keep_ratio: float
    method: str = "sap"
    mode: str = "exact"  # how the vectors were computed: "exact" or "fast" (see the module docstring)
    global_grid: tuple[int, int] = (0, 0)  # (rows, cols) of the global tile's grid; (0, 0): none
    scores: np.ndarray | None = None  # [k] SAP ranking scores of the kept tokens (None: not known)
    cover: np.ndarray | None = None  # [n_visual] row each token was merged into, -1: none (merging methods only)

    @classmethod
    def from_encoded(cls, page: PageSource, encoded: KeptVectors, keep_ratio: float | None = None,
                     method: str = "sap", mode: str = "exact") -> PageRow:
        """From a rendered page and what SAP kept of it. ``keep_ratio`` defaults to n_kept / n_visual."""
        n_kept = len(encoded.positions)
        if keep_ratio is None:
            keep_ratio = n_kept / encoded.n_visual if encoded.n_visual else 1.0
        width, height = page.size
        rows, cols = encoded.grid
        global_rows, global_cols = encoded.global_grid or (0, 0)
        return cls(path=page.path, content_hash=page.content_hash, page=page.page, width=width,
                   height=height, grid=(rows, cols), n_visual=encoded.n_visual,
                   positions=encoded.positions, vectors=encoded.vectors,
                   keep_ratio=float(keep_ratio), method=method, mode=mode,
                   global_grid=(global_rows, global_cols), scores=encoded.scores,
                   cover=getattr(encoded, "cover", None))
