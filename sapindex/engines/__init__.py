"""Hand-offs to the search engines teams already run (torch-free): :mod:`~sapindex.engines.qdrant`
pushes an index's pages into a Qdrant collection and searches it; :mod:`~sapindex.engines.dump`
writes an open Parquet copy of an index and the feed files of Vespa and Elasticsearch.

Each engine's client is an optional extra, imported only when its command runs.
"""
