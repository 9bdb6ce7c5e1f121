"""The file readers under eval datasets and calibration pairs: JSON Lines, parquet rows, image cells.

Why one module: ``sapindex eval`` and ``sapindex calibrate`` read the same (query, image) files
(JSONL pairs, ViDoRe parquet), so they read them with the same code. What a row *means* differs
(eval de-duplicates queries and pages, calibration keeps every row as a pair) and lives in
:mod:`sapindex.eval.datasets`; how a file is opened, streamed and its images checked lives here.

- Bad lines and rows are reported, never raised: :func:`iter_objects` yields a reason for a line
  that is not a JSON object, :func:`image_problem` says why an image cannot be used.
- Structural problems (an unreadable file, missing columns) raise :class:`SapIndexError` naming
  the file.
- Parquet is streamed a few rows at a time (image columns are large); images are checked cheaply
  (``Image.open`` + ``verify``, no decode) and decoded only by :func:`open_image`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sapindex.errors import SapIndexError

__all__ = ["UNREADABLE", "iter_objects", "parquet_rows", "image_source", "image_problem", "open_image"]

UNREADABLE = "unreadable image"
_BATCH_ROWS = 64  # parquet rows read at a time: image columns are large


def iter_objects(file: Path) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yield ``(where, object, None)`` per JSON object line, or ``(where, None, reason)`` for a bad line.

    ``where`` is ``"file:line"``. Blank lines are skipped; an unreadable file is a :class:`SapIndexError`.
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


def parquet_rows(file: Path, required: tuple[str, ...], *,
                 missing_label: str = "missing column(s)") -> Iterator[tuple[int, dict]]:
    """(1-based row, {column: value}) for the required columns, read in small batches.

    A file that is not parquet, or whose data cannot be read, is a :class:`SapIndexError`; so is a
    missing column (``missing_label`` starts that message: eval and calibration word it as they
    always have).
    """
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
        names = reader.schema_arrow.names
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise SapIndexError(f"{file}: not a readable parquet file: {exc}") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise SapIndexError(f"{file}: {missing_label} {', '.join(missing)} (has {', '.join(names) or 'none'})")
    batches = reader.iter_batches(batch_size=_BATCH_ROWS, columns=list(required))
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (OSError, ValueError) as exc:  # a corrupt data page further down the file
            raise SapIndexError(f"{file}: not a readable parquet file: {exc}") from None
        if batch is None:
            return
        for values in batch.to_pylist():
            row += 1
            yield row, values


def image_source(value, file: Path) -> tuple[bytes | None, Path | None]:
    """An image cell (struct ``{bytes, path}`` or raw binary) -> bytes, or a path next to the file."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        if value.get("path"):
            return None, file.parent / value["path"]
    return None, None


def image_problem(handle) -> str | None:
    """Why ``handle`` (a path or file object) is not a readable image, or None (header check, no decode)."""
    try:
        with Image.open(handle) as img:
            img.verify()
    except FileNotFoundError:
        return "image file not found"
    except UnidentifiedImageError:  # its message names a BytesIO object: useless to the user
        return f"{UNREADABLE} (not a known image format)"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"{UNREADABLE} ({exc})"
    return None


def open_image(source: str, path: Path | None, data: bytes | None) -> Image.Image:
    """The image at ``path`` (or in ``data``) as RGB; :class:`SapIndexError` naming ``source`` if it
    cannot be decoded."""
    try:
        with Image.open(path if path is not None else io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise SapIndexError(f"{source}: cannot decode image: {exc}") from None
