"""sapindex: offline Structural Anchor Pruning (SAP) indexer for ColPali-family visual retrievers.

The public Python API, the same objects the CLI uses (docs/reference/python-api.md)::

    import sapindex

    summary = sapindex.run_index(sapindex.default_bundle_path(), ["pages/"], "my-index")
    with sapindex.Searcher.open("my-index") as searcher:
        hits = searcher.search("annual revenue", k=5)

Import-light on purpose: the names load on first use, and none of them imports torch or
transformers. The torch side (``sapindex.calibration``, ``sapindex.exporter``,
``sapindex.models``, ``sapindex.micro``, ``sapindex.testing.tiny``) is imported explicitly.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "Bundle": "sapindex.runtime.bundle",
    "Encoder": "sapindex.runtime.encoder",
    "default_bundle_path": "sapindex.runtime.defaults",
    "Index": "sapindex.index.store",
    "IndexWriter": "sapindex.index.store",
    "Hit": "sapindex.index.store",
    "run_index": "sapindex.index.indexer",
    "IndexOptions": "sapindex.runtime.options",
    "Searcher": "sapindex.search",
    "SapIndexError": "sapindex.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'sapindex' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
