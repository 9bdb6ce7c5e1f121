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

import os
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Nothing phones home, air-gapped or not (set before any of these libraries starts; a user's own value
# wins): ONNX Runtime >= 1.29 sends usage telemetry from Linux too unless ORT_DISABLE_TELEMETRY is set
# before it initialises; Ray reports usage statistics of a cluster it starts; huggingface_hub (pulled
# in by tokenizers) has its own switch. tests/test_offline.py watches every lookup of a host name.
TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)

# public name -> the module that defines it
_API = {
    "Bundle": "sapindex.runtime.bundle",
    "Encoder": "sapindex.runtime.encoder",
    "default_bundle_path": "sapindex.runtime.defaults",
    "Index": "sapindex.index.store",
    "IndexWriter": "sapindex.index.store",
    "Hit": "sapindex.index.store",
    "run_index": "sapindex.index.indexer",
    "IndexSummary": "sapindex.index.indexer",
    "IndexOptions": "sapindex.runtime.options",
    "run_index_on_ray": "sapindex.cluster",
    "prune_index": "sapindex.index.prune",
    "Searcher": "sapindex.search",
    "search_index": "sapindex.search.scan",
    "explain": "sapindex.search.explain",
    "SapIndexError": "sapindex.errors",
}

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time each name loads on first use
    from sapindex.cluster import run_index_on_ray
    from sapindex.errors import SapIndexError
    from sapindex.index.indexer import IndexSummary, run_index
    from sapindex.index.prune import prune_index
    from sapindex.index.store import Hit, Index, IndexWriter
    from sapindex.runtime.bundle import Bundle
    from sapindex.runtime.defaults import default_bundle_path
    from sapindex.runtime.encoder import Encoder
    from sapindex.runtime.options import IndexOptions
    from sapindex.search import Searcher
    from sapindex.search.explain import explain
    from sapindex.search.scan import search_index

__all__ = [  # spelt out, so that type checkers see it; tests/test_public_api.py holds it equal to _API
    "__version__",
    "Bundle",
    "Encoder",
    "default_bundle_path",
    "Index",
    "IndexWriter",
    "Hit",
    "run_index",
    "IndexSummary",
    "IndexOptions",
    "run_index_on_ray",
    "prune_index",
    "Searcher",
    "search_index",
    "explain",
    "SapIndexError",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'sapindex' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
