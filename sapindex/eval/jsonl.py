"""JSON Lines reading shared by calibration pairs and eval datasets: one object per line,
bad lines reported as ``file:line: reason`` instead of raised."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from sapindex.errors import SapIndexError


def iter_objects(file: Path) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yield ``(where, object, None)`` per JSON object line, or ``(where, None, reason)`` for a bad line.

    Blank lines are skipped; an unreadable file is a :class:`SapIndexError`.
    """
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SapIndexError(f"{file}: unreadable: {exc}") from None
    for lineno, line in enumerate(lines, start=1):
        where = f"{file}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, None, f"invalid JSON ({exc.msg})"
            continue
        if not isinstance(row, dict):
            yield where, None, "expected an object with 'query' and 'image'"
            continue
        yield where, row, None
