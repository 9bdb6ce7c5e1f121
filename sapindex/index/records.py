"""The records that the input layer produces and the store keeps (torch-free, no I/O).

Why a module of their own: :mod:`sapindex.index.documents` yields pages and failures, and
:mod:`sapindex.index.store` records failures and reads them back. With the types here, the store
does not depend on the input layer (it never renders a page) and the input layer does not depend
on the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Failure", "FileInfo", "Page"]


@dataclass(frozen=True)
class Failure:
    """A path (or one page of it) that cannot be used, with a one-line reason."""

    path: str
    reason: str
    page: int | None = None  # 1-based page when only that page failed; None for the whole file

    def __str__(self) -> str:
        where = self.path if self.page is None else f"{self.path} page {self.page}"
        return f"{where}: {self.reason}"


@dataclass
class Page:
    """One rendered page. ``page`` is 1-based (always 1 for a single image)."""

    path: str
    page: int
    content_hash: str
    image: Image.Image | None = field(repr=False)  # None on the Ray driver: the node that rendered it encoded it
    size: tuple[int, int]  # (width, height) of ``image`` in pixels
    n_pages: int = 1  # pages in the whole file


@dataclass(frozen=True)
class FileInfo:
    """What is known about a file before any page is rendered."""

    path: str
    content_hash: str  # sha256 hex of the file's bytes
    n_pages: int
    kind: str  # "pdf" or "image"
    n_bytes: int
    mtime_ns: int = 0  # modification time when it was hashed (a later change shows here)
