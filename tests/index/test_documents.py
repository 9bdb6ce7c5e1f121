"""sapindex.index.documents: page rendering, and every way a file can be unusable."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import only_failure
from PIL import Image

from sapindex import fingerprint
from sapindex.errors import SapIndexError
from sapindex.index import documents as inputs
from sapindex.index.documents import Failure, FileInfo, Page, describe, iter_pages
from sapindex.index.sources import iter_sources

# --------------------------------------------------------------------------- builders


def colour_pdf(path, colours, size=(200, 300)):
    """One page per colour, ``size`` points (resolution 72: one pixel per point)."""
    images = [Image.new("RGB", size, c) for c in colours]
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return path


def hand_pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A PDF with a correct xref table: object i+1 is objects[i], object 1 is the catalog."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer_extra
    out += b">>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


ONE_PAGE = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] >>"]

# PDF Standard security handler, revision 2 (RC4 40-bit), PDF 1.7 spec algorithms 2, 3 and 4.
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def encrypted_pdf(user_password: bytes = b"secret", owner_password: bytes = b"owner") -> bytes:
    """A one-page PDF that opens only with a password (nothing inside needs decrypting)."""
    def pad(pw):
        return (pw + _PAD)[:32]
    perms, file_id = -44, bytes(range(16))
    o_entry = _rc4(hashlib.md5(pad(owner_password)).digest()[:5], pad(user_password))
    key = hashlib.md5(pad(user_password) + o_entry + struct.pack("<i", perms) + file_id).digest()[:5]
    u_entry = _rc4(key, _PAD)
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>" % (
        o_entry.hex().encode(), u_entry.hex().encode(), perms)
    trailer = b"/Encrypt 4 0 R /ID [<%s> <%s>] " % (file_id.hex().encode(), file_id.hex().encode())
    return hand_pdf(ONE_PAGE + [encrypt], trailer)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries one tiny IDAT (a decompression-bomb shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- pages


def test_multipage_pdf_numbering_hash_and_dpi(tmp_path):
    pdf = colour_pdf(tmp_path / "three.pdf", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    pages = list(iter_pages([str(pdf)], dpi=144))
    assert [p.page for p in pages] == [1, 2, 3]
    assert all(isinstance(p, Page) and p.path == str(pdf) and p.n_pages == 3 for p in pages)
    assert {p.content_hash for p in pages} == {sha(pdf)}
    for p, colour in zip(pages, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], strict=True):
        assert p.image.mode == "RGB"
        assert p.size == p.image.size == (400, 600)  # 200 x 300 pt at 144 dpi
        assert np.abs(np.subtract(p.image.getpixel((200, 300)), colour)).max() <= 3  # JPEG inside
    small = next(iter_pages([str(pdf)], dpi=36))
    assert small.size == (100, 150)


def test_huge_pdf_page_is_rendered_within_max_pixels(tmp_path):
    poster = tmp_path / "poster.pdf"
    poster.write_bytes(hand_pdf(ONE_PAGE[:2] + [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 7200] >>"]))
    (page,) = list(iter_pages([str(poster)], dpi=144, max_pixels=1_000_000))
    w, h = page.size
    assert w * h <= 1_000_000 and w > 1000 and abs(w / h - 2) < 0.01


def test_truncated_pdf(tmp_path):
    data = colour_pdf(tmp_path / "ok.pdf", [(1, 2, 3)] * 2).read_bytes()
    bad = tmp_path / "truncated.pdf"
    bad.write_bytes(data[: len(data) // 2])
    f = only_failure(list(iter_pages([str(bad)])))
    assert f.path == str(bad) and f.page is None and "corrupt or truncated" in f.reason


def test_encrypted_pdf(tmp_path):
    import pypdfium2 as pdfium

    enc = tmp_path / "locked.pdf"
    enc.write_bytes(encrypted_pdf())
    assert len(pdfium.PdfDocument(str(enc), password="secret")) == 1  # a genuine encrypted PDF
    f = only_failure(list(iter_pages([str(enc)])))
    assert "encrypted PDF" in f.reason and "password" in f.reason
    with pytest.raises(SapIndexError, match="password"):
        describe(enc)


def test_empty_and_zero_byte_and_garbage_pdfs(tmp_path):
    empty = tmp_path / "nopages.pdf"
    empty.write_bytes(hand_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]))
    zero = tmp_path / "zero.pdf"
    zero.write_bytes(b"")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"this is not a pdf at all\n" * 10)
    enc = tmp_path / "locked.pdf"
    enc.write_bytes(encrypted_pdf())
    # the encrypted one first: PDFium keeps its last error code, which must not leak into the next
    got = list(iter_pages([str(enc), str(empty), str(zero), str(junk), str(empty)]))
    assert len(got) == 5 and all(isinstance(f, Failure) for f in got)
    assert "password" in got[0].reason
    assert "no pages" in got[1].reason and "no pages" in got[4].reason
    assert got[2].reason == "empty file (0 bytes)"
    assert "not a valid PDF" in got[3].reason


def test_bad_images(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("I am text with an image suffix")
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    got = list(iter_pages([str(fake), str(zero), str(cut)]))
    assert all(isinstance(f, Failure) and "\n" not in f.reason for f in got), got
    assert "not a readable image" in got[0].reason
    assert got[1].reason == "empty file (0 bytes)"
    assert got[2].path == str(cut) and "cannot decode image" in got[2].reason


def test_huge_image_header_is_refused_naming_its_size(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))  # 10 Gpx: PIL's own guard fires at open
    f = only_failure(list(iter_pages([str(bomb)])))
    assert "too large" in f.reason and "10000000000" in f.reason
    big = tmp_path / "big.png"
    big.write_bytes(png_header(10_000, 5_000))  # 50 Mpx: under PIL's guard, over ours
    f = only_failure(list(iter_pages([str(big)], max_pixels=10_000_000)))
    assert "10000x5000" in f.reason and "10,000,000" in f.reason


def test_multiframe_tiff_and_image_modes(tmp_path):
    frames = [Image.new("L", (30, 20), v) for v in (10, 128, 250)]
    tif = tmp_path / "scan.tiff"
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    pages = list(iter_pages([str(tif)]))
    assert [(p.page, p.n_pages, p.image.mode) for p in pages] == [(1, 3, "RGB"), (2, 3, "RGB"), (3, 3, "RGB")]
    assert [p.image.getpixel((0, 0)) for p in pages] == [(10,) * 3, (128,) * 3, (250,) * 3]
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    png = tmp_path / "clear.png"
    rgba.save(png)
    (page,) = list(iter_pages([str(png)]))
    assert page.page == 1 and page.image.getpixel((3, 3)) == (255, 255, 255)  # paper white


def test_unreadable_file_is_a_failure(tmp_path, monkeypatch):
    locked = colour_pdf(tmp_path / "locked.pdf", [(0, 0, 0)])
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads anything: make opening the file refuse like a chmod 000 would
        real_open = open

        def refusing_open(file, *args, **kwargs):
            if os.fspath(file) == str(locked):
                raise PermissionError(13, "Permission denied", str(locked))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(fingerprint, "open", refusing_open, raising=False)  # the content hash reads first
    try:
        f = only_failure(list(iter_pages([str(locked)])))
        assert f.reason == "permission denied"
    finally:
        locked.chmod(0o644)


def test_failures_pass_through_and_the_stream_goes_on(tmp_path):
    a = colour_pdf(tmp_path / "a.pdf", [(9, 9, 9)] * 2)
    zero = tmp_path / "z.png"
    zero.write_bytes(b"")
    got = list(iter_pages(iter_sources([str(tmp_path / "missing.pdf"), str(zero), str(a)])))
    assert [type(x).__name__ for x in got] == ["Failure", "Failure", "Page", "Page"]
    assert str(got[0]) == f"{tmp_path / 'missing.pdf'}: no such file or directory"


def test_skip_predicate_prevents_rendering_and_pages_are_lazy(tmp_path, monkeypatch):
    pdf = colour_pdf(tmp_path / "four.pdf", [(i * 50, 0, 0) for i in range(4)])
    rendered = []
    real = inputs._PdfDoc.render

    def counting(self, page, dpi, max_pixels):
        rendered.append(page)
        return real(self, page, dpi, max_pixels)

    monkeypatch.setattr(inputs._PdfDoc, "render", counting)
    asked, files = [], []

    def skip(content_hash, page):
        asked.append((content_hash, page))
        return page in (1, 3)

    stream = iter_pages([str(pdf)], skip=skip, on_file=files.append)
    first = next(stream)
    assert first.page == 2 and rendered == [2]  # one page rendered at a time, skipped ones never
    assert files == [FileInfo(str(pdf), sha(pdf), 4, "pdf", pdf.stat().st_size, pdf.stat().st_mtime_ns)]
    rest = list(stream)
    assert [p.page for p in rest] == [4] and rendered == [2, 4]
    assert asked == [(sha(pdf), n) for n in (1, 2, 3, 4)]


def test_describe_gives_hash_and_page_count_without_rendering(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("rendered")

    monkeypatch.setattr(inputs._PdfDoc, "render", boom)
    monkeypatch.setattr(inputs._ImageDoc, "render", boom)
    pdf = colour_pdf(tmp_path / "two.pdf", [(0, 0, 0)] * 2)
    png = tmp_path / "one.png"
    Image.new("RGB", (5, 5)).save(png)
    assert describe(pdf) == FileInfo(str(pdf), sha(pdf), 2, "pdf", pdf.stat().st_size, pdf.stat().st_mtime_ns)
    assert describe(png).n_pages == 1 and describe(png).content_hash == sha(png)
    # a skip-everything run hashes and counts but renders nothing
    assert list(iter_pages([str(pdf), str(png)], skip=lambda h, n: True)) == []
    with pytest.raises(SapIndexError, match="empty file"):
        zero = tmp_path / "zero.pdf"
        zero.write_bytes(b"")
        describe(zero)
