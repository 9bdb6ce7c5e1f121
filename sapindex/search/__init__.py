"""Search that stays loaded (torch-free): the :class:`Searcher` (index + query encoder opened once),
the three ways it holds an index's pages (``resident`` in memory, ``compressed`` through the first
stage that ``optimize`` builds in ``first_stage``, ``streamed`` from disk), concurrent searches in
batches (``batching``), and the query files and run formats that ``sapindex search --queries``
reads and writes (``runs``). The HTTP service is ``sapindex.serve``.
"""

from sapindex.search.searcher import MAX_QUERY_TOKENS, Searcher

__all__ = ["MAX_QUERY_TOKENS", "Searcher"]
