"""The HTTP routes over one :class:`~sapindex.search.Searcher`, and the service's error policy.

Errors: every refused request gets a JSON body ``{"error": "<one line naming the field and the
reason>"}`` and a 4xx status: 400 for a body that is not JSON or a query the model refuses (too
long, a malformed ``where``), 401 without the bearer token (when one is configured), 404 for a page
the index does not hold, 409 for an ``/explain`` page whose file is gone or changed, 422 for a field
that is missing, unknown, mistyped or out of range, 415 for a body sent as something other than
JSON. An unexpected exception in one request answers 500 with its one-line reason and leaves the
service running. Sync routes run in the server's thread pool, so slow requests do not block
``/health``; the searcher is thread-safe. Concurrent ``/search`` requests are answered in batches
(:mod:`sapindex.search.batching`): one text-graph call and one search for those that wait together.
"""

from __future__ import annotations

import hmac
import time

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sapindex import __version__
from sapindex.errors import SapIndexError
from sapindex.index.store import Hit
from sapindex.search import Searcher, explain
from sapindex.search.batching import QueryBatcher
from sapindex.serve.requests import MAX_BATCH, MAX_K, BatchRequest, SearchRequest


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return 400, "the request body is not valid JSON"
    loc = [str(x) for x in first.get("loc", ())]
    loc = loc[1:] if loc and loc[0] in ("body", "query") else loc  # where it was sent, not its name
    if not loc:  # no body, or a body that is not an object (a list, a number)
        return 422, "the request body must be a JSON object"
    field = ".".join(loc)
    if first.get("type") == "extra_forbidden":
        return 422, f"{field}: unknown field"
    return 422, f"{field}: {first.get('msg', 'invalid')}"


def _hits(hits: list[Hit]) -> list[dict]:
    return [{"rank": r, "path": h.path, "page": h.page, "score": h.score} for r, h in enumerate(hits, start=1)]


def create_app(searcher: Searcher, token: str | None = None) -> FastAPI:
    """The service for ``searcher``; with ``token``, every request must send ``Authorization: Bearer <token>``."""

    def authorized(request: Request) -> None:
        if token is None:
            return
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise _Refused(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": "Bearer"})

    # strict_content_type=False: a JSON body is read as JSON whatever Content-Type the client sent
    # (curl -d sends form-encoded), rather than refused as "not an object"
    app = FastAPI(title="sapindex", version=__version__, dependencies=[Depends(authorized)],
                  strict_content_type=False, description="Exact MaxSim search over a SAP-pruned index.")
    batcher = app.state.batcher = QueryBatcher(searcher)  # concurrent /search requests share a batch

    @app.exception_handler(_Refused)
    def refused(_request, exc: _Refused):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError):
        sent = request.headers.get("content-type", "")
        if sent and "json" not in sent.lower():
            return _error(415, f"the body was sent as {sent.split(';')[0]}; send JSON with "
                               "Content-Type: application/json")
        return _error(*_validation_message(exc))

    @app.exception_handler(SapIndexError)
    def bad_input(_request, exc: SapIndexError):
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    def http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    def internal(_request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}")

    def _path(exact: bool) -> str:
        """How the hits were found: "exact" (every page scored) or "two-stage" (candidates rescored exactly)."""
        return "two-stage" if searcher.two_stage(exact) else "exact"

    @app.get("/health")
    def health() -> dict:
        """Liveness: the service answers, and the index version it searches."""
        return {"status": "ok", "version": searcher.index.version}

    @app.get("/stats")
    def stats() -> dict:
        """Pages, vectors and index version as searched now, and the bundle."""
        return {**searcher.stats(), "batching": batcher.stats(),
                "limits": {"k": MAX_K, "batch": MAX_BATCH, "query_tokens": searcher.max_query_tokens}}

    @app.post("/search")
    def search(body: SearchRequest) -> dict:
        """The ``k`` best pages for one query: ``{"hits": [{rank, path, page, score}], ...}``."""
        started = time.perf_counter()
        hits = batcher.search(body.query, body.k, where=body.where, path_prefix=body.path_prefix, exact=body.exact)
        return {"hits": _hits(hits), "version": searcher.version, "search": _path(body.exact),
                "took_ms": round(1000 * (time.perf_counter() - started), 3)}

    @app.post("/search/batch")
    def search_batch(body: BatchRequest) -> dict:
        """The ``k`` best pages for each query, in order: ``{"results": [{"hits": [...]}, ...]}``."""
        started = time.perf_counter()
        results = searcher.search_many(body.queries, body.k, where=body.where, path_prefix=body.path_prefix,
                                       exact=body.exact, names=[f"queries[{i}]" for i in range(len(body.queries))])
        return {"results": [{"hits": _hits(h)} for h in results], "version": searcher.version,
                "search": _path(body.exact), "took_ms": round(1000 * (time.perf_counter() - started), 3)}

    @app.get("/explain")
    def explain_hit(query: str = Query(..., min_length=1), path: str = Query(...), page: int = Query(..., ge=1),
                    format: str = Query("png", pattern="^(png|json)$")):
        """Why ``path`` page ``page`` matched ``query``: a PNG (kept patches outlined, the patches the
        query's tokens matched filled by their contribution) or, with ``format=json``, the numbers."""
        try:
            ex = explain.explain(searcher, query, path, page)
        except LookupError as exc:
            raise _Refused(404, str(exc)) from None
        if format == "json":
            return ex.to_dict()
        try:
            image = explain.picture(ex)
        except SapIndexError as exc:
            raise _Refused(409, f"cannot draw the page: {exc}") from None
        return Response(explain.png_bytes(image), media_type="image/png")

    return app
