"""Seeded document pages with exact word-level layout ground truth (PIL + numpy only).

Why this exists: a retriever trained from scratch must learn to read, so its pages need real
words in a real font laid out like documents (titles, paragraphs, two columns, tables, bar
charts; A4, letter, landscape, 16:9 slides, narrow receipts), and a dense training signal needs
the pixel box and role of every word drawn. Each word is drawn on its own, and its box is the
ink bounding box of the very coverage mask PIL pasted (``font.getmask2``; ``textbbox`` would add
side bearings): ground truth by construction, not by OCR.

**Vocabulary** (:func:`vocabulary`): English words taken from the Python standard library's own
documentation, which every machine that runs sapindex has offline: the docstrings and comments of
the stdlib ``*.py`` files (tests, idlelib, lib2to3 and site-packages excluded) and
``pydoc_data.topics`` (the Language Reference text behind ``help()``). Only prose lines count (6+
words, 2+ of them function words such as "the"/"of", so code inside docstrings is skipped), and
only bare tokens (a word with at most punctuation around it: ``self.x``, ``"name"``, ``**kwargs``
are code). A word is kept if it has 3-12 ASCII letters and a vowel, is used in 2+ files 3+ times,
at least as often bare as glued to code, mostly in lowercase (drops authors' names), and is not a
Python keyword, builtin or stdlib module name. Order: most files first, then most uses, then
alphabetical, so "the first N words" (``vocab_size``, the curriculum knob) are the most common.
The list depends on the Python minor version (about 3,500 words on 3.11); benchmarks write the
list they used (``vocabulary.txt``), and every function takes an explicit ``vocabulary`` to pin it.

**Split partition** (:class:`PhraseSampler`): every ordered pair of vocabulary words belongs to
the test split or to the train split, by a fixed hash of the two word strings (20 % test). Text
is sampled as phrases (a title, a sentence, a header, a label, a caption) in which every adjacent
pair is of the page's own split, so no phrase of two or more vocabulary words inside one text
unit ever occurs in both splits. Single words are shared (realistic: one language).

**Determinism**: one ``numpy.random.Generator`` per page decides everything; fonts are the DejaVu
TTFs bundled with matplotlib, laid out with PIL's BASIC engine (libraqm may be absent or differ
between machines); PNGs are encoded with fixed options.

**Modules**: this one holds the public API (it re-exports the records and :func:`get_font`) and the
page composition: a format, a title, then blocks top to bottom. The drawing lives below it, each
part in a module of its own: :mod:`~sapindex.benchdata._canvas` (fonts, page formats, the records
:class:`Word`, :class:`Table`, :class:`Chart`, and the primitive that gives each word its box),
then one module per block layout, each a function of the canvas and a vertical band that returns
the bottom it reached: :mod:`~sapindex.benchdata._paragraphs` ("paragraphs", "two-column"),
:mod:`~sapindex.benchdata._table`, :mod:`~sapindex.benchdata._chart`.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import keyword
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sapindex.benchdata._canvas import FORMAT_SPECS, Canvas, Chart, Table, Word, get_font
from sapindex.benchdata._chart import draw_chart
from sapindex.benchdata._paragraphs import draw_columns
from sapindex.benchdata._table import draw_table

__all__ = ["ROLES", "LAYOUTS", "FORMATS", "SPLITS", "Word", "Table", "Chart", "Page", "RenderOptions",
           "PhraseSampler", "vocabulary", "is_test_pair", "page_rng", "render_page",
           "normalize", "encode_png", "get_font", "VOCABULARY_SOURCE"]

ROLES = ("title", "body", "table-header", "table-cell", "chart-label", "chart-axis", "caption")
LAYOUTS = ("paragraphs", "two-column", "table", "chart")
FORMATS = ("a4", "letter", "landscape", "slide", "receipt")
SPLITS = ("train", "test")
TEST_PAIR_PERMILLE = 200  # share of ordered word pairs reserved for the test split
# Word i of the vocabulary is drawn with weight 1 / (i + 5) ** 1.2 (Zipf-Mandelbrot): "the" is ~5 % of
# the text, as in English, and the tail is rare enough that a corpus has words found on one page only.
ZIPF_OFFSET, ZIPF_EXPONENT = 5, 1.2
CONTENT_SKIP = 100  # titles, headers and labels skip this many most common words
MIN_VOCAB = 50  # below this, some words have no successor of the test split

VOCABULARY_SOURCE = ("Python standard library documentation: docstrings and comments of the stdlib *.py "
                     "files and pydoc_data.topics, prose lines only, filtered to lowercase ASCII words of "
                     "3-12 letters (see sapindex.benchdata.render)")

# --------------------------------------------------------------------------- vocabulary

_FUNCTION_WORDS = frozenset("the of and to is in a an for that this be are or with it as by if on not from".split())
_BARE = re.compile(r"[(\[]?([A-Za-z]+)[,.;:)\]!?]*")  # a word with at most punctuation around it
_DOC_TEXT = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'|#([^\n]*)', re.S)
_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"})


def _documentation_texts() -> Iterator[str]:
    """Every stdlib file's docstrings and comments (files in sorted order), then the pydoc topics."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.isdisjoint(path.relative_to(root).parts):
            source = path.read_text(encoding="utf-8", errors="replace")
            yield "\n".join(m.group(1) or m.group(2) or m.group(3) or "" for m in _DOC_TEXT.finditer(source))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split it out; the docstrings alone still give ~3,000 words
        return
    for name in sorted(topics):
        yield topics[name]


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The default vocabulary, most common word first (derived once per process, about 2 s)."""
    bare, lower, glued, files = Counter(), Counter(), Counter(), Counter()
    for text in _documentation_texts():
        seen = set()
        for line in text.splitlines():
            tokens = line.split()
            if len(tokens) < 6 or sum(t.lower() in _FUNCTION_WORDS for t in tokens) < 2:
                continue
            for token in tokens:
                m = _BARE.fullmatch(token)
                word = m.group(1) if m else ""
                if word and word[1:].islower() or word.islower():
                    w = word.lower()
                    bare[w] += 1
                    lower[w] += word.islower()
                    seen.add(w)
                else:
                    glued.update(re.findall(r"[a-z]+", token.lower()))
        files.update(seen)
    excluded = set(keyword.kwlist) | {n.lower() for n in dir(builtins)} | set(sys.stdlib_module_names)
    words = [w for w, n in bare.items()
             if 3 <= len(w) <= 12 and w.isascii() and re.search("[aeiouy]", w) and n >= 3 and files[w] >= 2
             and n >= glued[w] and 2 * lower[w] >= n and w not in excluded]
    words.sort(key=lambda w: (-files[w], -bare[w], w))
    if len(words) < 1000:
        raise RuntimeError(f"only {len(words)} words found in the Python documentation at "
                           f"{sysconfig.get_paths()['stdlib']}; pass an explicit vocabulary")
    return tuple(words)


# --------------------------------------------------------------------------- split partition


def _word_hashes(words: Sequence[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8, person=b"sapindex-pair").digest(),
                                    "little") for w in words], dtype=np.uint64)


def _pairs_are_test(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """splitmix64 of the two word hashes -> True where the ordered pair belongs to the test split."""
    x = (first * np.uint64(0x9E3779B97F4A7C15)) ^ second
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(1000)) < np.uint64(TEST_PAIR_PERMILLE)


def is_test_pair(first: str, second: str) -> bool:
    """Whether the ordered word pair (lowercase) is reserved for the test split."""
    h = _word_hashes([first, second])
    return bool(_pairs_are_test(h[:1], h[1:])[0])


class PhraseSampler:
    """Random phrases from the first ``vocab_size`` words, Zipf-weighted, within one split's word pairs.

    The pair constraint is what makes splits disjoint beyond their page seeds; it depends only on
    the word strings, so it holds across vocabulary sizes and orders.
    """

    def __init__(self, words: Sequence[str], vocab_size: int | None = None, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.words = tuple(words[:vocab_size] if vocab_size else words)
        if len(self.words) < MIN_VOCAB:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB}, got {len(self.words)}")
        self.split = split
        n = len(self.words)
        weights = 1.0 / (np.arange(n) + ZIPF_OFFSET) ** ZIPF_EXPONENT
        self._cdf = np.cumsum(weights) / weights.sum()
        self._content_start = min(CONTENT_SKIP, n // 5)
        tail = weights[self._content_start:]
        self._content_cdf = np.cumsum(tail) / tail.sum()
        self._hash = _word_hashes(self.words)
        self._test = split == "test"

    def _draw(self, rng: np.random.Generator, k: int, content: bool) -> np.ndarray:
        cdf, start = (self._content_cdf, self._content_start) if content else (self._cdf, 0)
        return start + np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), len(cdf) - 1)

    def phrase(self, rng: np.random.Generator, n: int, content: bool = False) -> list[str]:
        """``n`` words (fewer in the rare case a word has no successor in this split); ``content``
        skips the most common words (for titles, headers and labels: "The" is no column header)."""
        ids = [int(self._draw(rng, 1, content)[0])]
        while len(ids) < n:
            prev = ids[-1]
            for _ in range(8):
                cand = self._draw(rng, 16, content)
                ok = (_pairs_are_test(self._hash[[prev]], self._hash[cand]) == self._test) & (cand != prev)
                if ok.any():
                    ids.append(int(cand[np.argmax(ok)]))
                    break
            else:
                break
        return [self.words[i] for i in ids]


# --------------------------------------------------------------------------- page model


@dataclass
class Page:
    """A rendered page and its ground truth; ``words`` is in reading order (title, then blocks top
    to bottom, a column before the next, tables row by row)."""

    image: Image.Image
    words: list[Word]
    format: str
    layouts: tuple[str, ...]  # the blocks drawn below the title, in order
    tables: list[Table]
    charts: list[Chart]

    def units(self, role: str) -> list[tuple[int, ...]]:
        """Word indices of each unit of a role (e.g. every title or body sentence), in order."""
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(self.words):
            if w.role == role:
                groups.setdefault(w.unit, []).append(i)
        return [tuple(g) for g in groups.values()]

    def tokens(self) -> list[str]:
        """Every word normalised, in reading order: what queries are matched against."""
        return [normalize(w.text) for w in self.words]


def normalize(text: str) -> str:
    """A drawn word as queries spell it: lowercase, surrounding punctuation removed ("Value," -> "value")."""
    return text.lower().strip(".,;:()[]!?")


@dataclass(frozen=True)
class RenderOptions:
    """Difficulty knobs: ``vocab_size`` (first N words; None = all; applied by the
    :class:`PhraseSampler` built for these options), ``min_font_px`` (no text smaller), and which
    block ``layouts`` and page ``formats`` may be used."""

    vocab_size: int | None = None
    min_font_px: int = 10
    layouts: tuple[str, ...] = LAYOUTS
    formats: tuple[str, ...] = FORMATS

    def __post_init__(self):
        if not self.layouts or set(self.layouts) - set(LAYOUTS):
            raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {self.layouts}")
        if not self.formats or set(self.formats) - set(FORMATS):
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}")
        if not 6 <= self.min_font_px <= 40:
            raise ValueError(f"min_font_px must be in [6, 40], got {self.min_font_px}")


def page_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of page ``index`` of ``split``: distinct (split, index) never share a stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def encode_png(image: Image.Image) -> bytes:
    """PNG with fixed options (no metadata, fixed compression), so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- page composition

_TWO_COLUMN_MIN_WIDTH = 440  # content width below which two columns are unreadable


def _compatible(fmt: str, layout: str) -> bool:
    ratio, (lo, _), _, _ = FORMAT_SPECS[fmt]
    width = lo * min(ratio, 1.0)
    return layout != "two-column" or width * 0.88 >= _TWO_COLUMN_MIN_WIDTH


def render_page(rng: np.random.Generator, sampler: PhraseSampler, options: RenderOptions = RenderOptions()) -> Page:
    """One page: a format, a title and 1-3 blocks of the allowed layouts, everything drawn from ``rng``."""
    formats = [f for f in options.formats if any(_compatible(f, k) for k in options.layouts)]
    if not formats:
        raise ValueError(f"no format in {options.formats} can hold layouts {options.layouts}")
    weights = np.array([FORMAT_SPECS[f][3] for f in formats])
    fmt = formats[int(rng.choice(len(formats), p=weights / weights.sum()))]
    return _compose(Canvas(rng, sampler, options.min_font_px, fmt), options.layouts)


def _compose(canvas: Canvas, layouts: Sequence[str]) -> Page:
    """The title, then blocks top to bottom (one on slides, at most two on receipts and three elsewhere),
    then body text, if allowed, where more than a fifth of the page would stay empty."""
    rng = canvas.rng
    y = _title(canvas)
    kinds = [k for k in layouts if _compatible(canvas.format, k)]
    n_blocks = 1 if canvas.format == "slide" else int(rng.integers(1, 3 if canvas.format == "receipt" else 4))
    plan = [kinds[int(i)] for i in rng.integers(0, len(kinds), n_blocks)]
    gap = canvas.body_px * rng.uniform(1.0, 2.0)
    drawn = []
    for i, kind in enumerate(plan):
        remaining = canvas.bottom - y
        if remaining < canvas.body_px * 6:
            break
        if i == len(plan) - 1:
            budget = remaining
        elif kind == "chart":
            budget = min(remaining * 0.7, canvas.height * rng.uniform(0.3, 0.45))
        else:
            budget = remaining * rng.uniform(0.3, 0.6)
        end = _block(canvas, kind, y, y + budget)
        if end > y:
            drawn.append(kind)
            y = end + gap
    text_kinds = [k for k in ("paragraphs", "two-column") if k in kinds]
    if text_kinds and canvas.bottom - y > canvas.height * 0.2:  # no half-empty pages
        kind = text_kinds[int(rng.integers(len(text_kinds)))]
        if _block(canvas, kind, y, canvas.bottom) > y:
            drawn.append(kind)
    return Page(canvas.image, canvas.words, canvas.format, tuple(drawn), canvas.tables, canvas.charts)


def _block(canvas: Canvas, kind: str, y0: float, y1: float) -> float:
    """One block of layout ``kind`` between ``y0`` and ``y1``; returns its bottom (``y0`` if none fit)."""
    if kind == "paragraphs":
        return draw_columns(canvas, y0, y1, 1)
    if kind == "two-column":
        return draw_columns(canvas, y0, y1, 2)
    if kind == "table":
        return draw_table(canvas, y0, y1)
    return draw_chart(canvas, y0, y1)


def _title(canvas: Canvas) -> float:
    rng = canvas.rng
    font = canvas.font(rng.uniform(1.5, 2.2), "bold")
    lo, hi = {"slide": (2, 6), "receipt": (2, 4)}.get(canvas.format, (2, 8))
    tokens = canvas.phrase(lo, hi, "all" if rng.random() < 0.5 else "first")
    centred = canvas.format in ("slide", "receipt") and rng.random() < 0.7
    fill = [canvas.ink, (20, 40, 110), (110, 25, 35)][int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
    bottom = canvas.text_block(tokens, font, canvas.left, canvas.right, canvas.top, canvas.bottom, "title",
                               "center" if centred else "left", max_lines=2, fill=fill)
    if rng.random() < 0.4:
        y = bottom + font.size * 0.4
        canvas.draw.line([(canvas.left, y), (canvas.right, y)], fill=(120, 120, 120), width=1 + int(rng.random() < 0.3))
        bottom = y + 1
    return bottom + font.size * 0.6
