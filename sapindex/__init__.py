"""sapindex: offline Structural Anchor Pruning (SAP) indexer for ColPali-family visual retrievers.

Import-light on purpose: importing ``sapindex`` (or ``sapindex.sap`` / ``sapindex.runtime``)
never pulls in torch or transformers; only ``sapindex.exporter`` and ``sapindex.models`` do.
"""

__version__ = "0.1.0"
