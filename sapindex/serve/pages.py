"""What the search page shows of the documents themselves: page thumbnails and the source files.

Why a module of its own: these routes read files from disk on a client's request, so they are where
a service can leak what it should not. Only files the index holds are ever opened: a ``(path, page)``
is looked up in the index first and anything else is a 404 (no path traversal, no arbitrary file
read). A file that is gone or has changed since it was indexed is never a 500: the thumbnail is a
placeholder picture whose message says what happened (``X-Sapindex-Note``), and the source route
refuses with 409. Thumbnails are kept in a small LRU cache keyed by the page's content hash, and
carry an ``ETag`` and ``Cache-Control`` so a browser asks again only when the page changed.
"""

from __future__ import annotations

import mimetypes
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from sapindex.errors import SapIndexError
from sapindex.index.documents import describe, render_page
from sapindex.index.store import Index
from sapindex.index.store._sql import sql_str
from sapindex.search.explain import png_bytes

MIN_WIDTH, MAX_WIDTH = 64, 1600
RENDER_DPI = 96.0  # a letter page is ~816 px wide at this resolution: enough for a thumbnail or a preview
CACHE_ENTRIES = 256  # ~256 PNGs of a few tens of KB each


@dataclass(frozen=True)
class Thumbnail:
    """A rendered page, or a placeholder saying why there is none.

    Attributes:
        png: The PNG bytes.
        etag: A tag that changes when the page's content does (the indexed content hash, the page, the width).
        note: Why this is a placeholder (the file is gone, changed or unreadable); None for the page itself.
    """

    png: bytes
    etag: str
    note: str | None = None


class PageImages:
    """Thumbnails of indexed pages and the paths of indexed files, for the search page's routes."""

    def __init__(self, index: Index):
        self.index = index
        self._cache: OrderedDict[tuple, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()

    def thumbnail(self, path: str, page: int, width: int) -> Thumbnail:
        """Page ``page`` of ``path``, ``width`` pixels wide at most (clamped to 64..1600).

        Raises:
            LookupError: The index does not hold that page.
        """
        width = max(MIN_WIDTH, min(MAX_WIDTH, int(width)))
        content_hash = self._indexed_hash(path, page)
        key = (path, page, width, content_hash)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        etag = f'"{content_hash[:16]}-{page}-{width}"'
        try:
            image, info = render_page(path, page, dpi=RENDER_DPI)
            if info.content_hash != content_hash:
                raise SapIndexError(f"{path} changed since it was indexed; re-index it")
            image.thumbnail((width, width * 4))
            thumb = Thumbnail(png_bytes(image), etag)
        except SapIndexError as exc:
            return Thumbnail(png_bytes(_placeholder(width, str(exc))), etag + "-x", _one_line(str(exc)))
        with self._lock:
            self._cache[key] = thumb
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return thumb

    def source(self, path: str) -> tuple[Path, str]:
        """The file at ``path`` and its media type, when the index holds it and it is unchanged.

        Raises:
            LookupError: The index holds no page of ``path``.
            SapIndexError: The file is gone or has changed since it was indexed.
        """
        hashes = {r["content_hash"] for b in self.index.scan_pages(["content_hash"], where=f"path = {sql_str(path)}")
                  for r in b.to_pylist()}
        if not hashes:
            raise LookupError(f"{path} is not in the index")
        if describe(path).content_hash not in hashes:
            raise SapIndexError(f"{path} changed since it was indexed; re-index it")
        return Path(path), mimetypes.guess_type(path)[0] or "application/octet-stream"

    def _indexed_hash(self, path: str, page: int) -> str:
        where = f"path = {sql_str(path)} AND page = {int(page)}"
        rows = [r for b in self.index.scan_pages(["content_hash", "indexed_at"], where=where) for r in b.to_pylist()]
        if not rows:
            raise LookupError(f"{path} page {page} is not in the index")
        return max(rows, key=lambda r: r["indexed_at"])["content_hash"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _placeholder(width: int, message: str) -> Image.Image:
    """A grey page-shaped picture with ``message`` written on it, wrapped to its width."""
    height = int(width * 1.3)
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(160, 160, 160))
    per_line = max(8, width // 7)
    words, lines, line = _one_line(message).split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > per_line and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines[: max(1, (height - 20) // 14)]):
        draw.text((6, 10 + 14 * i), text, fill=(60, 60, 60))
    return image
