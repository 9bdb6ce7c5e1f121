"""What a directory on disk is, and what it holds: a bundle or an index (torch-free).

Why: ``sapindex inspect`` takes either and must tell them apart the way the formats define
them (an index by its metadata file, a bundle by its manifest); that knowledge belongs beside the
formats, not in the command line. The store (pyarrow) and the bundle reader are imported when
called, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path


def describe(path: str | Path) -> tuple[str, dict]:
    """``("index", summary)`` for an index, else ``("bundle", summary)`` of the bundle (every file's sha256
    verified); a directory that is neither raises :class:`sapindex.errors.SapIndexError` naming it."""
    from sapindex.index.store import META_FILE, Index

    if (Path(path) / META_FILE).is_file():
        from sapindex.search.first_stage import load_info, outdated

        with Index.open(path) as idx:
            return "index", {"path": str(path), "bundle_fingerprint": idx.bundle_fingerprint, "dim": idx.dim,
                             "vector_dtype": idx.vector_dtype, "mode": idx.meta.get("mode", "exact"),
                             "method": ", ".join(sorted(idx.methods())) or None,
                             "meta": idx.meta, **idx.stats().to_dict(),
                             "version": idx.version, "sap_scores": "scores" in idx.page_columns(),
                             "first_stage": {"outdated": True} if outdated(path) else load_info(path),
                             "failure_list": [str(f) for f in idx.failures()]}
    from sapindex.runtime.bundle import Bundle

    return "bundle", Bundle.open(path).summary()
