"""Two-stage search's first stage: every kept vector compressed in a memory-mapped token index,
and the exact float16 vectors beside it on disk, read back for just the pages being rescored.

Why this form (measured in ``bench/first_stage_codecs.py`` and ``bench/million_pages.py``,
RESULTS.md "A million pages"): an archive of 10^6 pages keeps ~7.4*10^7 vectors, 38 GB as float32,
more than a 24 GB machine holds. Each vector is stored as its coarse centroid (an inverted list)
plus a 4-bit product-quantised code of its residual to that centroid (faiss ``IVF,PQx4fs`` with
``by_residual``, which fast scan leaves off by default: coding the raw vector lost 0.40 against 0.52
recall on the micro model's near-duplicate pages; 16 or 32 bytes a vector, scored with SIMD lookup
tables), in a file that is memory-mapped: a query reads only the lists it probes. Each query token
retrieves its ``kprime`` best vectors from the codes; a page's estimate is ``sum_i max_j`` of those
approximate scores, a token that found nothing on the page counting its ``kprime``-th score instead
(the missing-similarity imputation of WARP and XTR), lowered by how far the page's coarse centroids
fall below it (PLAID's centroid interaction, on each vector's list id: ``lists``, 2 bytes a vector,
read from the inverted lists when the stage is opened). The ``depth`` best estimates are rescored
**exactly** from ``vectors.npy`` (float16, read with ``pread`` per page after one read-ahead request
for them all, not mapped: the page cache keeps them without counting against the process; scored by
:mod:`sapindex.search.kernel`), so every returned score is the exact MaxSim; only which pages get
rescored is approximate. faiss was chosen over a numpy PLAID-style stage (centroids + 2-bit
residuals) on the same data: at similar recall it produces candidates 60-85x faster, in 25 B a
vector (bench/first_stage_codecs.py). Recall falls where many pages hold near-identical vectors
(RESULTS.md "A million pages").

Stored beside the pages table: ``first_stage.json`` names a ``first_stage-<stamp>/`` directory::

    tokens.faiss    the token index: coarse quantiser, PQ tables, codes; vector ids are rows of vectors.npy
    trained.faiss   the same, empty: pages indexed after the build are coded with it in memory
    vectors.npy     [n, dim] float16, the kept vectors page after page (the index's own order at build)
    offsets.npy     [pages + 1] int64, page j owns rows offsets[j]:offsets[j + 1]
    pages.arrow     Arrow IPC file, one row per page: path, content_hash, page (memory-mapped)

``first_stage.json`` also records the pages table version and the newest ``indexed_at`` it saw:
a searcher takes pages indexed later from the table (coded with ``trained.faiss``) and masks
pages deleted since. Building is streamed (pages are read once, in chunks, into ``vectors.npy``;
the codebook is trained on a sample; the codes are added in batches) and atomic (a new
directory, then ``first_stage.json`` replaced): killed at any moment, the previous stage stays.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sapindex.errors import SapIndexError
from sapindex.formats import read_artifact, write_json_atomic

FORMAT = "sapindex-first-stage"
FORMAT_VERSION = 2
KIND = "ivf-pq"
META = "first_stage.json"
READ_PAGES = 4096  # pages per chunk read from the table while building
ADD_VECTORS = 1 << 20  # vectors coded per faiss call (4 bytes x dim each as float32: 512 MB at 128)
PQ_BYTES = 16  # bytes of residual code per vector: 2 x 4-bit sub-quantisers per byte (bench/first_stage_codecs.py)
HNSW_LINKS = 32  # the coarse quantiser is an HNSW graph over the centroids: assignment without a full scan

_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)  # Linux: read-ahead of the pages about to be rescored

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _faiss():
    import faiss  # noqa: PLC0415 - loaded when a stage is built or searched, not at import

    return faiss


def n_lists_for(n_vectors: int) -> int:
    """Inverted lists: a power of two near 2 sqrt(n), in [64, 16384], with >= 39 training vectors per
    list (faiss's own minimum). 16,384 at 10^6 pages keeps a probed list to ~4,500 vectors; more
    lists cost k-means time that ``optimize``'s hour at 10^6 pages does not have."""
    target = 2 ** round(np.log2(2 * np.sqrt(max(n_vectors, 1))))
    return int(max(min(target, 16384, 2 ** int(np.log2(max(n_vectors // 39, 64)))), 64))


def sample_size(n_lists: int, n_vectors: int) -> int:
    """Training vectors: 64 per list, at least 2^18, at most every vector."""
    return int(min(n_vectors, max(64 * n_lists, 1 << 18)))


@dataclass
class StoredStage:
    """A built first stage, opened: the token index and page table mapped, the vectors read on demand."""

    path: Path
    info: dict
    tokens: object  # faiss index, memory-mapped
    offsets: np.ndarray  # [pages + 1] int64
    pages: pa.Table  # path, content_hash, page (memory-mapped)
    _fd: int
    _data_offset: int
    dim: int
    lists: np.ndarray  # [vectors] each vector's coarse list (uint16, or uint32 beyond 65,536 lists)
    centroids: np.ndarray  # [lists, dim] float16, the coarse centroids (for estimates only)

    @property
    def n_pages(self) -> int:
        return len(self.offsets) - 1

    def empty_tokens(self):
        """A new in-memory token index with this stage's codebook and no vectors."""
        return _faiss().read_index(str(self.path / "trained.faiss"))

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The coarse list of each of ``vectors`` (float32), as coding them would choose it."""
        _, lists = _faiss().extract_index_ivf(self.tokens).quantizer.search(vectors, 1)
        return lists[:, 0].astype(self.lists.dtype)

    def read_pages(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float16 vectors of ``pages`` one after another, each page's first row), read with pread."""
        starts, ends = self.offsets[pages], self.offsets[pages + 1]
        out = np.empty((int((ends - starts).sum()), self.dim), np.float16)
        # ignore: numpy's stubs give ndarray a __buffer__ on Python >= 3.12 only
        into, row, at = memoryview(out.reshape(-1)).cast("B"), 2 * self.dim, 0  # type: ignore[arg-type]
        if _WILLNEED is not None:  # every read queued before the first: the disk serves them in parallel
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                os.posix_fadvise(self._fd, self._data_offset + s * row, (e - s) * row, _WILLNEED)
        # straight into ``out``: no buffer per page, no concatenation
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            size = (e - s) * row
            if os.preadv(self._fd, [into[at:at + size]], self._data_offset + s * row) != size:
                raise SapIndexError(f"{self.path / 'vectors.npy'}: shorter than its offsets; run optimize again")
            at += size
        first = np.concatenate([[0], np.cumsum(ends - starts)[:-1]]).astype(np.int64)
        return out, first

    def read_range(self, first_page: int, last_page: int) -> np.ndarray:
        """float16 vectors of pages ``first_page`` to ``last_page - 1``, in one sequential read."""
        return self._rows(int(self.offsets[first_page]), int(self.offsets[last_page]))

    def _rows(self, start: int, end: int) -> np.ndarray:
        """float16 rows ``start:end`` of vectors.npy, one pread."""
        row = 2 * self.dim
        buf = os.pread(self._fd, (end - start) * row, self._data_offset + start * row)
        return np.frombuffer(buf, np.float16).reshape(-1, self.dim)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


def search_tokens(tokens, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(approximate scores, vector ids; -1 where fewer than ``k``) of each row of ``q``'s ``k`` best
    vectors in the token index ``tokens``, from its ``nprobe`` nearest lists.

    The coarse quantiser's HNSW search is asked for ``2 * nprobe`` candidates: left at faiss's
    default (16), it returned fewer lists than ``nprobe`` for inner products (label -1), and the
    fast-scan kernel then scored some vectors from a list -1 as ~2e31 (found at nprobe >= 128 on
    256 lists, >= 512 on 4,096; tests/search/test_first_stage.py)."""
    faiss = _faiss()
    quantizer = faiss.SearchParametersHNSW(efSearch=2 * nprobe)  # a local: ``params`` holds only a pointer to it
    params = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=quantizer)
    return tokens.search(np.ascontiguousarray(q, np.float32), k, params=params)


def load_info(index_path: str | Path) -> dict | None:
    """``first_stage.json`` of an index, or None (none built, or one of an older format: it is
    ignored, and search is exact until ``optimize`` builds a new one)."""
    path = Path(index_path) / META
    if not path.is_file():
        return None
    info = read_artifact(path, FORMAT, FORMAT_VERSION, "first stage")
    return info if info.get("format_version") == FORMAT_VERSION else None


def outdated(index_path: str | Path) -> bool:
    """True when the index holds a first stage of an older format, which search ignores."""
    path = Path(index_path) / META
    return path.is_file() and load_info(index_path) is None


def load(index_path: str | Path) -> StoredStage | None:
    """The index's first stage, mapped (None when there is none of this format)."""
    index_path = Path(index_path)
    info = load_info(index_path)
    if info is None:
        return None
    d = index_path / info["dir"]
    faiss = _faiss()
    try:
        tokens = faiss.read_index(str(d / "tokens.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        offsets = np.load(d / "offsets.npy")
        pages = pa.ipc.open_file(pa.memory_map(str(d / "pages.arrow"))).read_all()
        vectors = np.load(d / "vectors.npy", mmap_mode="r")
        data_offset, dim = vectors.offset, vectors.shape[1]
        del vectors
        if len(offsets) != pages.num_rows + 1 or offsets[-1] != tokens.ntotal:
            raise ValueError("its files disagree on the number of pages or vectors")
        ivf = faiss.extract_index_ivf(tokens)
        lists, centroids = _vector_lists(ivf), ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float16)
    except (OSError, ValueError, RuntimeError, pa.ArrowInvalid) as exc:
        raise SapIndexError(f"{d}: the first stage is unreadable ({str(exc).splitlines()[0]}); "
                            "run sapindex optimize again") from None
    return StoredStage(d, info, tokens, offsets, pages, os.open(d / "vectors.npy", os.O_RDONLY), data_offset, dim,
                       lists, centroids)


def _vector_lists(ivf) -> np.ndarray:
    """Each vector's coarse list, read from the inverted lists' ids (2 bytes a vector: 147 MB at
    10^6 pages, read in ~0.5 s when a stage is opened)."""
    faiss = _faiss()
    out = np.empty(ivf.ntotal, np.uint16 if ivf.nlist <= 1 << 16 else np.uint32)
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        if size:
            ids = ivf.invlists.get_ids(lst)
            out[faiss.rev_swig_ptr(ids, size)] = lst
            ivf.invlists.release_ids(lst, ids)
    return out


def build(index, seed: int = 0, progress: Progress | None = None, pq_bytes: int = PQ_BYTES) -> dict:
    """Read every page of the index once, train the token index on a sample, code every vector,
    store the stage; return its info.

    ``index`` is an :class:`~sapindex.index.store.Index` (held by the caller; a writer lock keeps
    ``index`` runs out while the stage is built). Memory: one chunk of pages, the training sample
    and the codes (``pq_bytes`` + 8 a vector): ~2 GB at 10^6 pages. ``progress(phase, done,
    total)`` is told of each chunk read and each batch coded.
    """
    faiss = _faiss()
    started = time.perf_counter()
    version = index.version
    tell = progress or (lambda *_: None)
    n_pages, n_vectors = 0, 0
    for b in index.scan_pages(["n_kept"], version=version, chunk_pages=65536):
        n_pages += b.num_rows
        n_vectors += int(b.column("n_kept").to_numpy().sum())
    if n_vectors == 0:
        raise SapIndexError(f"{index.path}: the index holds no pages; index some before optimizing")
    n_lists = n_lists_for(n_vectors)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n_vectors, size=sample_size(n_lists, n_vectors), replace=False))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    d = index.path / f"first_stage-{stamp}"
    d.mkdir()
    sample, newest = _copy_pages(index, version, d, n_vectors, take, tell)
    tell("training", 0, 1)
    tokens = faiss.index_factory(index.dim, f"IVF{n_lists}_HNSW{HNSW_LINKS},PQ{2 * pq_bytes}x4fs",
                                 faiss.METRIC_INNER_PRODUCT)
    tokens.cp.seed = seed
    # a small index trains on fewer vectors than faiss's rule of thumb (39 a centroid): its warning, once per
    # sub-quantiser, would flood the terminal; sample_size already decides how many vectors training gets
    tokens.cp.min_points_per_centroid = tokens.pq.cp.min_points_per_centroid = 1
    tokens.by_residual = True  # faiss's fast-scan default codes the raw vector; its residual is finer
    tokens.train(sample)
    del sample
    faiss.write_index(tokens, str(d / "trained.faiss"))
    tell("training", 1, 1)
    data_offset = np.load(d / "vectors.npy", mmap_mode="r").offset
    with open(d / "vectors.npy", "rb") as f:  # read, not mapped: the pages read stay out of the process's memory
        f.seek(data_offset)
        for start in range(0, n_vectors, ADD_VECTORS):
            count = min(ADD_VECTORS, n_vectors - start)
            batch = np.fromfile(f, np.float16, count * index.dim)
            tokens.add(batch.reshape(count, index.dim).astype(np.float32))
            tell("coding", start + count, n_vectors)
    faiss.write_index(tokens, str(d / "tokens.faiss"))
    _fsync_dir(d)
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND, "dir": d.name,
            "n_lists": n_lists, "pq_bytes": pq_bytes, "pages": n_pages, "vectors": n_vectors,
            "bytes_per_vector": round(os.path.getsize(d / "tokens.faiss") / n_vectors, 1),
            "index_version": int(version), "newest_indexed_at": newest.isoformat() if newest else None,
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3)}
    write_json_atomic(index.path / META, info)
    for stale in index.path.glob("first_stage-*"):  # the previous stage, and builds killed before their rename
        if stale.name != d.name:
            shutil.rmtree(stale, ignore_errors=True)
    return info


def _copy_pages(index, version: int, d: Path, n_vectors: int, take: np.ndarray, tell):
    """Stream the pages into ``d`` (vectors.npy, offsets.npy, pages.arrow); return (the vectors at
    rows ``take`` as float32, the newest indexed_at)."""
    from sapindex.index.store._arrow import vectors_from_list

    header = np.lib.format.open_memmap(d / "vectors.npy", mode="w+", dtype=np.float16, shape=(n_vectors, index.dim))
    data_offset = header.offset
    del header  # the header written; the vectors are appended, not mapped (their pages stay out of RSS)
    sample = np.empty((len(take), index.dim), np.float32)
    counts, newest, at, got = [], None, 0, 0
    schema = pa.schema([("path", pa.string()), ("content_hash", pa.string()), ("page", pa.int32())])
    with open(d / "vectors.npy", "r+b") as out, pa.OSFile(str(d / "pages.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, schema) as writer:
        out.seek(data_offset)
        for batch in index.scan_pages(["path", "content_hash", "page", "vectors", "indexed_at"], version=version,
                                      chunk_pages=READ_PAGES):
            vecs, offsets = vectors_from_list(batch.column("vectors"), index.dim, dtype=None)
            n = len(vecs)
            if at + n > n_vectors:
                raise SapIndexError(f"{index.path}: the index changed while optimize read it; run it again")
            out.write(np.ascontiguousarray(vecs, np.float16).tobytes())
            here = take[(take >= at) & (take < at + n)]
            sample[got:got + len(here)] = vecs[here - at]
            got += len(here)
            counts.append(np.diff(offsets))
            writer.write_batch(pa.record_batch([batch.column("path"), batch.column("content_hash"),
                                                batch.column("page").cast(pa.int32())], schema=schema))
            t = max(batch.column("indexed_at").to_pylist())
            newest = t if newest is None or t > newest else newest
            at += n
            tell("reading", at, n_vectors)
    if at != n_vectors:
        raise SapIndexError(f"{index.path}: the index changed while optimize read it; run it again")
    np.save(d / "offsets.npy", np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64))
    return sample[:got], newest


def _fsync_dir(d: Path) -> None:
    for f in d.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
