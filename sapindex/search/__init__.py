"""Search that stays loaded (torch-free): the :class:`Searcher` (index + query encoder opened once),
its resident copy of the kept vectors (``resident``), and the query files and run formats that
``sapindex search --queries`` reads and writes (``runs``). The HTTP service is ``sapindex.serve``.
"""

from sapindex.search.searcher import MAX_QUERY_TOKENS, Searcher

__all__ = ["MAX_QUERY_TOKENS", "Searcher"]
