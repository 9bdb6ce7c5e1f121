"""Pages in, pruned vectors stored, hits out (torch-free).

``inputs`` (files -> rendered pages), ``records`` (the page and failure records they share with
the store), ``indexer`` (the indexing run and search), ``store/`` (the LanceDB index) and
``overlay`` (the kept-patches picture).
"""
