"""The SQL filters the store hands LanceDB: quoted literals and bounded ``IN (...)`` lists.

Why bounded: a delete or a lookup can name thousands of paths or hashes, and one filter string
with all of them grows without limit; lists of at most :data:`IN_LIST` values keep each
filter small, and the callers join or loop over them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

IN_LIST = 500  # values per SQL IN (...) list


def sql_str(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def in_lists(column: str, values: Sequence[Any]) -> list[str]:
    """``column IN (...)`` filters, at most IN_LIST values each."""
    values = list(values)
    out = []
    for i in range(0, len(values), IN_LIST):
        part = values[i:i + IN_LIST]
        lits = ", ".join(sql_str(v) if isinstance(v, str) else str(int(v)) for v in part)
        out.append(f"{column} IN ({lits})")
    return out


def stale_filter(stale: Mapping[str, Iterable[str]]) -> str:
    """SQL filter for the rows of each path under the given content hashes (not another path's
    rows under the same hash: a copy of the file indexed elsewhere keeps its pages)."""
    clauses = []
    for path, hashes in sorted(stale.items()):
        ins = " OR ".join(in_lists("content_hash", sorted(hashes)))
        clauses.append(f"(path = {sql_str(path)} AND ({ins}))")
    return " OR ".join(clauses)


def failure_filters(by_path: Mapping[str, Iterable[int]]) -> list[str]:
    """Filters for the failure rows ``(path, page)`` of each path's pages, at most IN_LIST paths each."""
    clauses = [f"(path = {sql_str(p)} AND page IN ({', '.join(str(n) for n in sorted(ns))}))"
               for p, ns in sorted(by_path.items())]
    return [" OR ".join(clauses[i:i + IN_LIST]) for i in range(0, len(clauses), IN_LIST)]
