"""``sapindex serve``: the HTTP JSON service over a :class:`~sapindex.search.Searcher` (torch-free;
FastAPI + uvicorn, the ``serve`` extra). ``app`` holds the routes and the error policy,
``requests`` the request bodies and their limits."""
