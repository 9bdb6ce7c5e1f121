"""Indexing spread over a Ray cluster: ``sapindex index --ray`` (torch-free; the ``ray`` extra).

Modules: :mod:`~sapindex.cluster.driver` (the run: waves through Ray Data, commits on the
driver), :mod:`~sapindex.cluster.listing` (listing, skip check, waves), :mod:`~sapindex.cluster.workers`
(rendering tasks, encoder actors, the rows between them), :mod:`~sapindex.cluster.connect` (joining
a cluster, checking its resources). Ray itself is imported only when a run starts.
"""

from sapindex.cluster.driver import run_index_on_ray

__all__ = ["run_index_on_ray"]
