"""Two-stage search's first stage: token centroids, each page's token codes, and candidate scoring.

Why centroids (measured against LanceDB's multivector index and MUVERA encodings in
``bench/two_stage.py``, RESULTS.md "Two-stage search"): a SAP-pruned page keeps a few dozen
vectors, and a k-means codebook over all of them turns each page into a few dozen small integer
codes. A query's tokens score every centroid in one small matmul; each token then looks at the
pages holding one of its ``nprobe`` best centroids (inverted lists), a page's estimate being
``sum_i max_j S[i, code_j]`` over those (the ``nprobe``-th best centroid score stands in for a
token whose centroids the page lacks). The ``depth`` best estimates are rescored exactly from the
resident vectors, so every returned score is the exact MaxSim; only which pages get rescored is
approximate (PLAID's centroid interaction, without its compression: the vectors stay as stored).

Between the two, a cheaper rescoring narrows the candidates: MaxSim over the vectors projected on
their top principal axes (PCA on the same sample; the fewest of 16, 32 or 64 axes that keep 90 %
of the variance). The centroid estimate's ``candidates`` best pages (4,096) are rescored that
way, and only its ``depth`` best (256) exactly: at 10^5 pages, centroids alone need 2,048 exact
rescorings for recall@10 0.957, with the projection 256 give 0.997 (bench/two_stage.py).

Built by ``sapindex optimize`` and stored beside the pages table (``first_stage.json`` naming a
``first_stage-<stamp>/`` directory with ``centroids.npy``, ``projection.npy`` and the codes of every page it saw,
keyed by (content_hash, page)). Pages indexed later are coded with the stored centroids when the
searcher loads them, so new pages are never missed; ``optimize`` again retrains the centroids.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sapindex.errors import SapIndexError
from sapindex.formats import read_artifact, write_json_atomic

FORMAT = "sapindex-first-stage"
FORMAT_VERSION = 1
META = "first_stage.json"
ASSIGN_CHUNK = 65536  # vectors coded per matmul


def n_centroids_for(n_vectors: int) -> int:
    """A power of two near 8 sqrt(n_vectors), in [1024, 8192]: 2,048 centroids at 10^3 pages, 8,192
    from 10^4 on (a finer codebook ranks candidates better: at 10^4 pages, depth 512, recall@10 0.958
    with 4,096 centroids, 0.994 with 8,192; bench/two_stage.py)."""
    return int(np.clip(2 ** round(np.log2(8 * np.sqrt(max(n_vectors, 1)))), 1024, 8192))


@dataclass(frozen=True)
class Codebook:
    """``[K, dim]`` unit-norm centroids; a vector's code is its most similar centroid (max dot)."""

    centroids: np.ndarray

    @property
    def size(self) -> int:
        return len(self.centroids)

    @staticmethod
    def train(sample: np.ndarray, k: int, seed: int = 0) -> Codebook:
        """k-means (scikit-learn's mini-batch) on unit vectors, centroids renormalised."""
        from sklearn.cluster import MiniBatchKMeans

        sample = np.asarray(sample, np.float32)
        k = min(k, len(sample))
        km = MiniBatchKMeans(n_clusters=k, batch_size=8192, n_init=1, max_iter=10, random_state=seed,
                             compute_labels=False).fit(sample)
        c = km.cluster_centers_.astype(np.float32)
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        return Codebook(c)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """``[n]`` uint16 codes of ``[n, dim]`` vectors (any float dtype), in chunks."""
        out = np.empty(len(vectors), np.uint16)
        ct = self.centroids.T
        for i in range(0, len(vectors), ASSIGN_CHUNK):
            out[i:i + ASSIGN_CHUNK] = np.argmax(np.asarray(vectors[i:i + ASSIGN_CHUNK], np.float32) @ ct, axis=1)
        return out


PROJECTION_DIMS = (16, 32, 64)
VARIANCE_KEPT = 0.90


def projection(sample: np.ndarray) -> tuple[np.ndarray, float]:
    """``[dim, d]`` principal axes of ``sample`` (the fewest of :data:`PROJECTION_DIMS` keeping
    :data:`VARIANCE_KEPT` of its variance, else the most) and the variance they keep."""
    centred = np.asarray(sample, np.float64) - sample.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    kept = np.cumsum(sv ** 2) / max(float((sv ** 2).sum()), 1e-30)
    dims = [d for d in PROJECTION_DIMS if d < len(sv)] or [len(sv)]
    d = next((d for d in dims if kept[d - 1] >= VARIANCE_KEPT), dims[-1])
    return np.ascontiguousarray(vt[:d].T, dtype=np.float32), float(kept[d - 1])


class Postings:
    """For each centroid, the (snapshot-order) indices of the pages holding it: CSR, unique per page."""

    def __init__(self, codes: np.ndarray, page_of_token: np.ndarray, n_pages: int, k: int):
        key = np.unique(codes.astype(np.int64) * n_pages + page_of_token)  # sorted by code, then page
        self.pages = (key % n_pages).astype(np.int32)
        self.starts = np.searchsorted(key // n_pages, np.arange(k + 1)).astype(np.int64)
        self.n_pages = n_pages

    def candidates(self, centroid_scores: np.ndarray, nprobe: int, depth: int,
                   allowed: np.ndarray | None = None) -> np.ndarray:
        """The ``depth`` pages with the best estimate for one query (``centroid_scores [M, K]``),
        restricted to ``allowed`` (bool ``[n_pages]``) when given; unordered."""
        m, k = centroid_scores.shape
        nprobe = min(nprobe, k)
        top = np.argpartition(-centroid_scores, nprobe - 1, axis=1)[:, :nprobe]  # [M, nprobe]
        top_scores = np.take_along_axis(centroid_scores, top, axis=1)
        est = np.repeat(top_scores.min(axis=1, keepdims=True), self.n_pages, axis=1)  # [M, P]: imputed floor
        lengths = self.starts[top + 1] - self.starts[top]  # [M, nprobe]
        rows = np.repeat(np.arange(m), lengths.sum(axis=1))
        idx = np.concatenate([self.pages[self.starts[c]:self.starts[c + 1]] for c in top.ravel()])
        vals = np.repeat(top_scores.ravel(), lengths.ravel())
        flat = est.reshape(-1)
        np.maximum.at(flat, rows * self.n_pages + idx, vals)
        total = est.sum(axis=0)
        if allowed is not None:
            total[~allowed] = -np.inf
        depth = min(depth, int(np.isfinite(total).sum()))
        if depth <= 0:
            return np.zeros(0, np.int64)
        return np.argpartition(-total, depth - 1)[:depth]


@dataclass(frozen=True)
class StoredStage:
    """A built first stage as stored: the codebook and the codes of the pages it saw."""

    codebook: Codebook
    codes: dict[tuple[str, int], np.ndarray]  # (content_hash, page) -> [n_kept] uint16
    info: dict
    projection: np.ndarray  # [dim, d] principal axes for the cheaper rescoring

    def codes_for(self, hashes, pages, vectors: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The codes of a block of pages (stored ones by key, the rest assigned now), flat like ``vectors``."""
        out = np.empty(len(vectors), np.uint16)
        ends = np.append(starts[1:], len(vectors))
        missing = []
        for j, key in enumerate(zip(hashes, pages.tolist())):
            stored = self.codes.get(key)
            if stored is not None and len(stored) == ends[j] - starts[j]:
                out[starts[j]:ends[j]] = stored
            else:
                missing.append(j)
        if missing:
            sel = np.concatenate([np.arange(starts[j], ends[j]) for j in missing])
            out[sel] = self.codebook.assign(vectors[sel])
        return out


def load(index_path: str | Path) -> StoredStage | None:
    """The index's first stage, or None when ``optimize`` has not built one."""
    index_path = Path(index_path)
    if not (index_path / META).is_file():
        return None
    info = read_artifact(index_path / META, FORMAT, FORMAT_VERSION, "first stage")
    d = index_path / info["dir"]
    try:
        centroids = np.load(d / "centroids.npy")
        axes = np.load(d / "projection.npy")
        flat = np.load(d / "codes.npy")
        offsets = np.load(d / "offsets.npy")
        hashes = np.load(d / "hashes.npy")
        pages = np.load(d / "pages.npy")
    except (OSError, ValueError) as exc:
        raise SapIndexError(f"{d}: the first stage is unreadable ({exc}); run sapindex optimize again") from None
    codes = {(str(h), int(p)): flat[offsets[i]:offsets[i + 1]] for i, (h, p) in enumerate(zip(hashes, pages))}
    return StoredStage(Codebook(centroids), codes, info, axes)


def build(index, sample_vectors: int = 262144, seed: int = 0,
          progress=None) -> dict:
    """Train a codebook on the index's kept vectors, code every page, store both; return the info.

    ``index`` is an :class:`~sapindex.index.store.Index` (held by the caller; a writer lock keeps
    ``index`` runs out while the stage is built). Atomic: files go to a new directory, then
    ``first_stage.json`` is replaced to name it, then the previous directory is removed.
    """
    from sapindex.index.store._arrow import vectors_from_list

    started = time.perf_counter()
    version = index.version
    batches = list(index.scan_pages(["content_hash", "page", "vectors"], version=version, chunk_pages=4096))
    blocks = [(b.column("content_hash").to_pylist(), b.column("page").to_pylist(),
               *vectors_from_list(b.column("vectors"), index.dim, dtype=None)) for b in batches]
    n_vectors = sum(len(v) for _, _, v, _ in blocks)
    if n_vectors == 0:
        raise SapIndexError(f"{index.path}: the index holds no pages; index some before optimizing")
    k = n_centroids_for(n_vectors)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n_vectors, size=min(sample_vectors, n_vectors), replace=False))
    all_offsets = np.cumsum([0] + [len(v) for _, _, v, _ in blocks])
    sample = np.concatenate([blocks[b][2][take[(take >= all_offsets[b]) & (take < all_offsets[b + 1])]
                                          - all_offsets[b]] for b in range(len(blocks))]).astype(np.float32)
    codebook = Codebook.train(sample, k, seed)
    axes, variance = projection(sample)
    codes, hashes, pages, counts = [], [], [], []
    for done, (h, p, vecs, offsets) in enumerate(blocks, start=1):
        codes.append(codebook.assign(vecs))
        hashes.extend(h)
        pages.extend(p)
        counts.append(np.diff(offsets))
        if progress:
            progress(done, len(blocks))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    d = index.path / f"first_stage-{stamp}"
    d.mkdir()
    np.save(d / "centroids.npy", codebook.centroids)
    np.save(d / "projection.npy", axes)
    np.save(d / "codes.npy", np.concatenate(codes))
    np.save(d / "offsets.npy", np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64))
    np.save(d / "hashes.npy", np.asarray(hashes, dtype="U64"))
    np.save(d / "pages.npy", np.asarray(pages, np.int32))
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "centroids", "dir": d.name,
            "n_centroids": codebook.size, "projection_dims": int(axes.shape[1]),
            "projection_variance": round(variance, 4), "pages": len(pages), "vectors": int(n_vectors),
            "index_version": int(version), "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3)}
    previous = load_info(index.path)
    write_json_atomic(index.path / META, info)
    if previous and previous["dir"] != d.name:
        shutil.rmtree(index.path / previous["dir"], ignore_errors=True)
    for stale in index.path.glob("first_stage-*"):  # directories of builds killed before their rename
        if stale.name != d.name:
            shutil.rmtree(stale, ignore_errors=True)
    return info


def load_info(index_path: str | Path) -> dict | None:
    """``first_stage.json`` of an index, or None."""
    path = Path(index_path) / META
    return read_artifact(path, FORMAT, FORMAT_VERSION, "first stage") if path.is_file() else None
