"""The service's request bodies: every field typed and bounded, unknown fields refused.

Why strict: a client's typo (``"K": 5``, ``"qurey": ...``) silently ignored gives wrong results
that look right; refusing it with a 422 that names the field is what a client can act on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000  # hits per query: a page of results, not a dump of the index
MAX_BATCH = 256  # queries per /search/batch request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Filters(_Strict):
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="hits per query")
    where: str | None = Field(None, description="SQL filter on page columns, e.g. \"path LIKE '/a/%'\"")
    path_prefix: str | None = Field(None, description="only paths starting with this")
    exact: bool = Field(False, strict=True, description="scan every page even where two-stage search applies")


class SearchRequest(Filters):
    query: str = Field(..., min_length=1, description="the question")


class BatchRequest(Filters):
    queries: list[str] = Field(..., min_length=1, max_length=MAX_BATCH)
