"""File paths -> a stream of page images, one page in memory at a time (torch-free).

:func:`iter_pages` turns paths (and the failures :func:`sapindex.index.sources.iter_sources` gave)
into :class:`Page` objects (an RGB ``PIL.Image`` each) or :class:`Failure` objects. PDFs are
rendered with pypdfium2, one page at a time; a multi-frame TIFF gives one page per frame; any
other image is one page.

Before a file's pages are rendered its sha256 (streamed, 1 MiB at a time) and page count are
known: :func:`describe` gives them for one path, ``iter_pages(on_file=...)`` reports them for
every file, and ``iter_pages(skip=...)`` is asked ``skip(content_hash, page)`` before each page
is rendered, so that an indexer resuming a run never renders a page it already has.
:func:`render_listed` renders given pages of a file that :func:`describe` listed earlier, elsewhere
(a Ray worker), without hashing it again.

Every failure carries a one-line human reason (``str(failure)`` is ``"<path>: <reason>"`` or
``"<path> page <n>: <reason>"``). pypdfium2 is not thread-safe: consume a generator from one
thread.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sapindex.errors import SapIndexError
from sapindex.fingerprint import sha256_file
from sapindex.index.records import Failure, FileInfo, Page
from sapindex.index.sources import PDF_SUFFIXES, SUPPORTED_SUFFIXES, os_reason
from sapindex.runtime.options import DEFAULT_DPI

__all__ = ["DEFAULT_MAX_PIXELS", "Failure", "FileInfo", "InputError", "Page", "describe", "iter_pages", "render_listed",
           "render_page"]

# PIL's own decompression-bomb warning threshold (~89.5 Mpx, e.g. 9459 x 9459): an A4 page scanned
# at 600 dpi is 35 Mpx, so real documents fit with room to spare. Images above it are refused;
# PDF pages above it are rendered at a lower scale instead (see iter_pages).
DEFAULT_MAX_PIXELS = 89_478_485
_MULTI_FRAME_FORMATS = frozenset({"TIFF"})


class InputError(SapIndexError):
    """A file that cannot be read as pages; ``path`` and ``reason`` as in :class:`Failure`."""

    def __init__(self, path: str, reason: str, page: int | None = None):
        self.path, self.reason, self.page = path, reason, page
        super().__init__(str(self.failure))

    @property
    def failure(self) -> Failure:
        return Failure(self.path, self.reason, self.page)


def _too_large(w: int, h: int, max_pixels: int) -> str:
    return (f"image too large: {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            f"(max_pixels)")


def _pdf_reason(err: Exception) -> str:
    import pypdfium2.raw as pdfium_c

    code = getattr(err, "err_code", None)
    if code in (pdfium_c.FPDF_ERR_SUCCESS, pdfium_c.FPDF_ERR_FILE):
        # PDFium leaves its last error untouched when it refuses a document without a parse
        # error (an empty or broken page tree); _PdfDoc primes it with FPDF_ERR_FILE first.
        return "not a usable PDF (no pages or a broken page tree)"
    if code == pdfium_c.FPDF_ERR_PASSWORD:
        return "encrypted PDF: a password is required to open it"
    if code == pdfium_c.FPDF_ERR_SECURITY:
        return "encrypted PDF: unsupported security handler"
    if code == pdfium_c.FPDF_ERR_FORMAT:
        return "not a valid PDF (corrupt or truncated)"
    return f"cannot open PDF ({err})"


class _Doc:
    """An opened file: its hash, page count and a way to render page i (1-based)."""

    kind = "?"
    n_pages = 0

    def render(self, page: int, dpi: float, max_pixels: int) -> Image.Image:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        pass


class _PdfDoc(_Doc):
    kind = "pdf"

    def __init__(self, path: str):
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c

        self.path = path
        self.doc = None
        # PDFium's last-error code is global and not reset by a load that fails silently: set
        # it to FPDF_ERR_FILE (a path that cannot exist) so a stale code is never reported.
        pdfium_c.FPDF_LoadDocument(os.path.join(os.devnull, "sapindex-no-such.pdf").encode(), None)
        try:
            self.doc = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as err:
            raise InputError(path, _pdf_reason(err)) from None
        except OSError as err:
            raise InputError(path, os_reason(err)) from None
        self.n_pages = len(self.doc)
        if self.n_pages == 0:
            self.close()
            raise InputError(path, "PDF has no pages")

    def render(self, page: int, dpi: float, max_pixels: int) -> Image.Image:
        assert self.doc is not None  # open until close()
        pdf_page = self.doc[page - 1]
        try:
            w_pt, h_pt = pdf_page.get_size()
            if not (w_pt > 0 and h_pt > 0):
                raise InputError(self.path, f"page has an empty size ({w_pt} x {h_pt} pt)", page)
            scale = dpi / 72.0
            if w_pt * h_pt * scale * scale > max_pixels:
                # A poster or a map, not a bomb: render it smaller rather than refuse it.
                scale = math.sqrt(max_pixels / (w_pt * h_pt)) * 0.999
            bitmap = pdf_page.render(scale=scale)
            try:
                image = bitmap.to_pil().convert("RGB")  # convert copies out of pdfium's buffer
            finally:
                bitmap.close()
        finally:
            pdf_page.close()
        return image

    def close(self) -> None:
        doc, self.doc = getattr(self, "doc", None), None
        if doc is not None:
            doc.close()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # high bit depth greyscale: stretch to 8 bits instead of clipping at 255
        arr = np.asarray(image, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        arr = arr * (255.0 / top) if top > 0 else arr
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))  # paper white under transparency
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


class _ImageDoc(_Doc):
    kind = "image"

    def __init__(self, path: str, max_pixels: int):
        self.path = path
        self.max_pixels = max_pixels
        self.image = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.image = Image.open(path)
            self._check_size()
            n = getattr(self.image, "n_frames", 1) if self.image.format in _MULTI_FRAME_FORMATS else 1
            self.n_pages = max(1, int(n))
        except InputError:
            self.close()
            raise
        except Image.DecompressionBombError as err:
            self.close()
            raise InputError(path, f"image too large (decompression bomb guard): {err}") from None
        except UnidentifiedImageError:
            self.close()
            suffix = os.path.splitext(path)[1].lower()
            raise InputError(path, f"not a readable image (the {suffix} file's content is not a "
                                   f"known image format)") from None
        except OSError as err:
            self.close()
            raise InputError(path, os_reason(err) if err.errno else f"cannot read image: {err}") from None
        except Exception as err:  # third-party decoders on untrusted bytes raise anything
            self.close()
            raise InputError(path, f"cannot read image ({type(err).__name__}: {err})") from None

    def _check_size(self) -> None:
        assert self.image is not None  # open until close()
        w, h = self.image.size
        if w <= 0 or h <= 0:
            raise InputError(self.path, f"image has an empty size ({w}x{h})")
        if w * h > self.max_pixels:
            raise InputError(self.path, _too_large(w, h, self.max_pixels))

    def render(self, page: int, dpi: float, max_pixels: int) -> Image.Image:
        try:
            assert self.image is not None  # open until close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if self.n_pages > 1 or page != 1:
                    self.image.seek(page - 1)
                    self._check_size()
                frame: Image.Image = self.image
                frame.load()
                if page == 1 and self.n_pages == 1:
                    frame = ImageOps.exif_transpose(frame)  # phone photos of paper
                return _to_rgb(frame)
        except InputError as err:
            raise InputError(self.path, err.reason, page if self.n_pages > 1 else None) from None
        except Image.DecompressionBombError as err:
            raise InputError(self.path, f"image too large (decompression bomb guard): {err}",
                             page if self.n_pages > 1 else None) from None
        except Exception as err:  # truncated data, bad compression, ... (OSError, SyntaxError, ...)
            raise InputError(self.path, f"cannot decode image ({type(err).__name__}: {err})",
                             page if self.n_pages > 1 else None) from None

    def close(self) -> None:
        image, self.image = self.image, None
        if image is not None:
            image.close()


def _open(path: str, max_pixels: int, listed: FileInfo | None = None) -> tuple[_Doc, FileInfo]:
    """Hash and open one file; raise InputError with the reason when it cannot be used.

    ``listed``: what an earlier :func:`describe` of this path found; the file is not hashed again
    but must still have the size and modification time it had then."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(path, f"unsupported file type {suffix or '(none)'!r}")
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(path, "is a directory" if stat.S_ISDIR(st.st_mode)
                             else "not a regular file (device, socket or pipe)")
        if st.st_size == 0:
            raise InputError(path, "empty file (0 bytes)")
        if listed is not None and (st.st_size, st.st_mtime_ns) != (listed.n_bytes, listed.mtime_ns):
            raise InputError(path, "changed since it was listed; run again to index the new content")
        content_hash = sha256_file(path) if listed is None else listed.content_hash
    except OSError as err:
        raise InputError(path, os_reason(err)) from None
    doc: _Doc = _PdfDoc(path) if suffix in PDF_SUFFIXES else _ImageDoc(path, max_pixels)
    return doc, FileInfo(path, content_hash, doc.n_pages, doc.kind, st.st_size, st.st_mtime_ns)


def render_page(path: str | os.PathLike, page: int, dpi: float = DEFAULT_DPI,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, FileInfo]:
    """One page (1-based) of a file as RGB, and the file's info (its content hash tells whether it
    is still the file that was indexed); InputError with the reason when it cannot be rendered."""
    doc, info = _open(os.fspath(path), max_pixels)
    try:
        if not 1 <= page <= info.n_pages:
            raise InputError(info.path, f"has {info.n_pages} page(s), no page {page}")
        return doc.render(page, dpi, max_pixels), info
    finally:
        doc.close()


def describe(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileInfo:
    """Content hash and page count of one file, without rendering any page.

    Raises :class:`InputError` (a :class:`~sapindex.errors.SapIndexError`) with the one-line
    reason when the file cannot be used (``err.failure`` is the matching :class:`Failure`).
    """
    doc, info = _open(os.fspath(path), max_pixels)
    doc.close()
    return info


def iter_pages(
    sources: Iterable[str | os.PathLike | Failure],
    dpi: float = DEFAULT_DPI,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip: Callable[[str, int], bool] | None = None,
    on_file: Callable[[FileInfo], None] | None = None,
) -> Iterator[Page | Failure]:
    """Yield the pages of every source, one rendered page at a time, or a :class:`Failure`.

    ``sources`` are paths (e.g. from :func:`iter_sources`; its failures pass through unchanged).
    PDFs are rendered at ``dpi`` (scale ``dpi / 72``); a PDF page whose render would exceed
    ``max_pixels`` is rendered at the largest scale that fits (posters and maps are kept), while
    an image over ``max_pixels`` is a failure naming its size. ``on_file(info)`` is called once per
    usable file before its first page; ``skip(content_hash, page)`` is called before each page and
    a page it accepts is neither rendered nor yielded. A page that fails alone yields a Failure
    with ``page`` set and the other pages go on.
    """
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    for source in sources:
        if isinstance(source, Failure):
            yield source
            continue
        path = os.fspath(source)
        try:
            doc, info = _open(path, max_pixels)
        except InputError as err:
            yield err.failure
            continue
        try:
            if on_file is not None:
                on_file(info)
            numbers = (n for n in range(1, info.n_pages + 1)
                       if skip is None or not skip(info.content_hash, n))
            yield from _render_each(doc, info, numbers, dpi, max_pixels)
        finally:
            doc.close()


def _render_each(doc: _Doc, info: FileInfo, numbers: Iterable[int], dpi: float,
                 max_pixels: int) -> Iterator[Page | Failure]:
    """The given pages of an opened file, in order; a page that fails alone is a Failure with
    ``page`` set and the others go on, a failure of the whole file ends the stream."""
    for number in numbers:
        try:
            image = doc.render(number, dpi, max_pixels)
        except InputError as err:
            yield err.failure
            if err.page is None:  # the whole file is unusable: stop here
                return
            continue
        except Exception as err:  # a PDF page pdfium cannot load or render
            yield Failure(info.path, f"cannot render page ({type(err).__name__}: {err})", number)
            continue
        yield Page(info.path, number, info.content_hash, image, image.size, info.n_pages)
        del image


def render_listed(listed: FileInfo, numbers: Iterable[int], dpi: float = DEFAULT_DPI,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Page | Failure]:
    """Pages of a file that :func:`describe` listed earlier, rendered elsewhere (a Ray worker).

    The file is not hashed again (a task per batch would read a large PDF once per batch); its size
    and modification time must be those it was listed with, else its pages would be stored under
    a hash that is no longer its content: that is a Failure asking for another run."""
    try:
        doc, info = _open(listed.path, max_pixels, listed)
    except InputError as err:
        yield err.failure
        return
    try:
        yield from _render_each(doc, info, numbers, dpi, max_pixels)
    finally:
        doc.close()
