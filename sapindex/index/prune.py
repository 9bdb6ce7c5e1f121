"""``sapindex prune``: a smaller index from an existing one, without re-encoding a page.

Why it is exact: the index stores each kept token's SAP ranking score, and the tokens SAP keeps at
ratio ``r`` are the ``keep_count(n_visual, r)`` best by that score (ties to the lower position).
For ``r`` at most the ratio a page was indexed at, those are among its stored tokens, so the
smaller set taken from the stored scores equals the set a fresh ``index --keep-ratio r`` run
keeps (a test compares the two on the micro model).

Atomic: the new index is written to a hidden sibling directory and renamed to ``out`` at the
end, so a killed prune leaves no ``out`` at all (its leftover is removed by the next prune into
the same place). The source is locked while it is read: an ``index`` run into it is refused
meanwhile, and the pruned copy is one consistent version of it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sapindex import sap
from sapindex.compression import PRUNABLE_METHODS
from sapindex.errors import SapIndexError
from sapindex.index.store import Index, IndexWriter, PageRow

CHUNK_PAGES = 512  # pages per read and per commit into the new index


@dataclass
class PruneSummary:
    pages: int = 0
    vectors_before: int = 0
    vectors_after: int = 0
    source_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_ratio(src: Index, version: int, keep_ratio: float) -> int:
    """Refuse what cannot be pruned exactly; return the number of pages."""
    if src.meta.get("mode") == "fast":
        raise SapIndexError(f"{src.path}: a fast-mode index cannot be pruned exactly (each vector was computed "
                            "with the other kept tokens of its page); index again with --mode fast "
                            f"--keep-ratio {keep_ratio}")
    merged = src.methods() - set(PRUNABLE_METHODS)
    if merged:
        raise SapIndexError(f"{src.path}: a {', '.join(sorted(merged))} index cannot be pruned (its vectors are merged "
                            "or budgeted per page, not SAP's ranked tokens); index again at the lower --keep-ratio")
    if "scores" not in src.page_columns():
        raise SapIndexError(f"{src.path}: this index predates stored SAP scores (no scores column); "
                            "re-index the documents to prune, or index them again at the lower ratio")
    pages = 0
    for batch in src.scan_pages(["path", "page", "n_visual", "n_kept", "keep_ratio", "scores"], version=version,
                                chunk_pages=65536):
        nulls = np.asarray(batch.column("scores").is_null())
        if nulls.any():
            i = int(np.argmax(nulls))
            raise SapIndexError(f"{src.path}: {batch.column('path')[i]} page {batch.column('page')[i]} was stored "
                                "without SAP scores (indexed by an older sapindex); re-index it to prune")
        n_visual = batch.column("n_visual").to_numpy()
        n_kept = batch.column("n_kept").to_numpy()
        need = np.asarray([sap.keep_count(int(n), keep_ratio) for n in n_visual])
        over = need > n_kept
        if over.any():
            i = int(np.argmax(over))
            ratio = batch.column("keep_ratio")[i].as_py()
            raise SapIndexError(
                f"--keep-ratio {keep_ratio} is above the ratio {ratio} that {batch.column('path')[i]} page "
                f"{batch.column('page')[i]} was indexed at; prune can only lower it (re-index for more)")
        pages += batch.num_rows
    return pages


def pruned_row(row: dict, keep_ratio: float) -> PageRow:
    """A stored row (``Index.iter_rows``) cut to ``keep_count(n_visual, keep_ratio)`` tokens by its scores."""
    # positions ascend, so ties to the lower index are ties to the lower position, as at index time
    keep = sap.highest(row["scores"], sap.keep_count(int(row["n_visual"]), keep_ratio))
    return PageRow(path=row["path"], content_hash=row["content_hash"], page=row["page"], width=row["width"],
                   height=row["height"], grid=(row["grid_rows"], row["grid_cols"]), n_visual=row["n_visual"],
                   positions=row["positions"][keep], vectors=row["vectors"][keep], keep_ratio=keep_ratio,
                   method=row["method"], mode=row["mode"], global_grid=(row["global_rows"], row["global_cols"]),
                   scores=row["scores"][keep])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging(out: Path) -> Path:
    """This run's hidden sibling of ``out``; removes the ones that killed runs left."""
    prefix = f".{out.name}.prune-"
    for old in out.parent.glob(prefix + "*"):
        pid = old.name[len(prefix):]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return out.parent / f"{prefix}{os.getpid()}"


def prune_index(source: str | Path, out: str | Path, keep_ratio: float,
                progress: Callable[[int, int], None] | None = None) -> PruneSummary:
    """Write ``out``: every page of ``source`` with only its best ``keep_count(n_visual, keep_ratio)``
    tokens; ``progress(pages_done, pages_total)`` after each chunk.

    Args:
        source: The index to prune; locked for writing while it is read, and left unchanged.
        out: The new index directory: must not exist, or be an empty directory.
        keep_ratio: The new keep ratio, in (0, 1], at most the ratio every page was indexed at.
        progress: Called as ``progress(pages_done, pages_total)`` after each chunk of 512 pages and
            once at the end; None: no progress.

    Returns:
        The pages written, vectors before and after, the source's and the new index's bytes on
        disk, and the seconds taken (``PruneSummary``, with ``to_dict()``).

    Raises:
        SapIndexError: ``keep_ratio`` is outside (0, 1]; ``out`` exists and is not an empty
            directory; ``source`` is not an index or another process writes it; it is a fast-mode
            index, holds merged or budgeted pages, or has pages stored without SAP scores; or
            ``keep_ratio`` is above the ratio a page was indexed at. Nothing is written to ``out``.
    """
    if isinstance(keep_ratio, bool) or not 0.0 < float(keep_ratio) <= 1.0:
        raise SapIndexError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
    source, out = Path(source), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SapIndexError(f"{out}: exists and is not empty; prune writes a new index (choose a new directory)")
    started = time.perf_counter()
    summary = PruneSummary()
    with IndexWriter.open_writer(source) as src:
        version = src.version
        total = _check_ratio(src, version, keep_ratio)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging(out)
        meta = {**src.meta, "pruned_from": str(source.resolve()), "keep_ratio": keep_ratio}
        try:
            with IndexWriter.create_or_open(staging, src.bundle_fingerprint, src.dim, meta,
                                      vector_dtype=src.vector_dtype) as dst:
                batch: list[PageRow] = []
                for row in src.iter_rows(chunk_pages=CHUNK_PAGES, version=version):
                    batch.append(pruned_row(row, keep_ratio))
                    summary.vectors_before += len(row["positions"])
                    summary.vectors_after += len(batch[-1].positions)
                    if len(batch) == CHUNK_PAGES:
                        summary.pages += dst.add_pages(batch)
                        batch.clear()
                        if progress:
                            progress(summary.pages, total)
                summary.pages += dst.add_pages(batch)
                dst.add_failures(src.failures())
                dst.compact()  # one fragment per column set and no old versions: the smallest copy
            if out.exists():
                out.rmdir()  # empty, checked above
            os.rename(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        summary.source_bytes = src.stats().bytes_on_disk
    if progress:
        progress(summary.pages, total)
    summary.out_bytes = Index.open(out).stats().bytes_on_disk
    summary.seconds = time.perf_counter() - started
    return summary
