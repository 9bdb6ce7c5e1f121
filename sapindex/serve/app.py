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

The search page: ``GET /`` and its script and style (``/ui/app.js``, ``/ui/app.css``, shipped in
``sapindex/assets/ui/``) need no token, they hold no data; everything they ask for does
(``/search``, ``/stats``, ``/explain``, the thumbnails of ``/page`` and the files of ``/file``:
:mod:`sapindex.serve.pages`). Every response carries a Content-Security-Policy that allows only the
service's own origin (and ``blob:`` images, the thumbnails the page fetched with its token), and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import hmac
import time
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sapindex import __version__
from sapindex.errors import SapIndexError
from sapindex.index.store import Hit
from sapindex.search import Searcher, explain
from sapindex.search.batching import QueryBatcher
from sapindex.serve.pages import PageImages
from sapindex.serve.requests import MAX_BATCH, MAX_K, BatchRequest, SearchRequest

UI_FILES = {"app.js": "text/javascript", "app.css": "text/css"}  # what /ui/ serves, nothing else
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


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
    app = FastAPI(title="sapindex", version=__version__, strict_content_type=False,
                  description="Exact MaxSim search over a SAP-pruned index.")
    api = APIRouter(dependencies=[Depends(authorized)])  # every route but the page itself
    batcher = app.state.batcher = QueryBatcher(searcher)  # concurrent /search requests share a batch
    images = PageImages(searcher.index)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

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

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        """The search page (no token needed: it holds no data, and asks for the token when the service has one)."""
        return Response(_ui("index.html"), media_type="text/html; charset=utf-8")

    @app.get("/ui/{name}", include_in_schema=False)
    def ui(name: str) -> Response:
        if name not in UI_FILES:
            raise _Refused(404, f"no /ui/{name}")
        return Response(_ui(name), media_type=UI_FILES[name], headers={"Cache-Control": "no-cache"})

    @api.get("/health")
    def health() -> dict:
        """Liveness: the service answers, and the index version it searches."""
        return {"status": "ok", "version": searcher.index.version}

    @api.get("/stats")
    def stats() -> dict:
        """Pages, vectors and index version as searched now, and the bundle."""
        return {**searcher.stats(), "batching": batcher.stats(),
                "limits": {"k": MAX_K, "batch": MAX_BATCH, "query_tokens": searcher.max_query_tokens}}

    @api.post("/search")
    def search(body: SearchRequest) -> dict:
        """The ``k`` best pages for one query: ``{"hits": [{rank, path, page, score}], ...}``."""
        started = time.perf_counter()
        hits = batcher.search(body.query, body.k, where=body.where, path_prefix=body.path_prefix, exact=body.exact)
        return {"hits": _hits(hits), "version": searcher.version, "search": _path(body.exact),
                "took_ms": round(1000 * (time.perf_counter() - started), 3)}

    @api.post("/search/batch")
    def search_batch(body: BatchRequest) -> dict:
        """The ``k`` best pages for each query, in order: ``{"results": [{"hits": [...]}, ...]}``."""
        started = time.perf_counter()
        results = searcher.search_many(body.queries, body.k, where=body.where, path_prefix=body.path_prefix,
                                       exact=body.exact, names=[f"queries[{i}]" for i in range(len(body.queries))])
        return {"results": [{"hits": _hits(h)} for h in results], "version": searcher.version,
                "search": _path(body.exact), "took_ms": round(1000 * (time.perf_counter() - started), 3)}

    @api.get("/explain")
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

    @api.get("/page")
    def page_image(request: Request, path: str = Query(...), page: int = Query(..., ge=1),
                   width: int = Query(320, ge=1)):
        """Page ``page`` of the indexed file ``path``, ``width`` pixels wide at most (64-1600), as PNG; a
        placeholder saying why when the file is gone or changed (``X-Sapindex-Note``). 404 unless indexed."""
        try:
            thumb = images.thumbnail(path, page, width)
        except LookupError as exc:
            raise _Refused(404, str(exc)) from None
        headers = {"ETag": thumb.etag, "Cache-Control": "private, max-age=3600"}
        if thumb.note:
            note = thumb.note.encode("ascii", "replace").decode()  # a header is latin-1: paths may not be
            headers.update({"X-Sapindex-Note": note, "Cache-Control": "no-store"})
        if request.headers.get("if-none-match") == thumb.etag:
            return Response(status_code=304, headers=headers)
        return Response(thumb.png, media_type="image/png", headers=headers)

    @api.get("/file")
    def source_file(path: str = Query(...)):
        """The indexed file ``path`` itself (a PDF opens in the browser's viewer); 404 unless indexed,
        409 when it is gone or changed since indexing."""
        try:
            file, media_type = images.source(path)
        except LookupError as exc:
            raise _Refused(404, str(exc)) from None
        except SapIndexError as exc:
            raise _Refused(409, str(exc)) from None
        return FileResponse(file, media_type=media_type, headers={"Cache-Control": "private, no-cache"})

    app.include_router(api)
    return app


def _ui(name: str) -> bytes:
    return resources.files("sapindex").joinpath("assets", "ui", name).read_bytes()
