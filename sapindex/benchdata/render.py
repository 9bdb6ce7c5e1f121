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
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

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

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONT_FILES = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "serif": "DejaVuSerif.ttf",
              "mono": "DejaVuSansMono.ttf"}


@functools.lru_cache(maxsize=None)
def get_font(face: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / FONT_FILES[face]), size=int(px), layout_engine=ImageFont.Layout.BASIC)


@dataclass(frozen=True)
class Word:
    """One drawn word: ``text`` exactly as drawn, ``box`` (x0, y0, x1, y1) in pixels, x1/y1 exclusive,
    the tight bounding box of its ink (every pixel the glyphs touch, none more), ``role`` in
    :data:`ROLES`, ``unit`` the text unit (a title, sentence, caption, header, cell or label) it
    belongs to; a unit's words are consecutive in reading order."""

    text: str
    box: tuple[int, int, int, int]
    role: str
    unit: int


@dataclass(frozen=True)
class Table:
    """Word indices: ``headers[c]`` the vocabulary words of column c's header (not its unit),
    ``cells[r][c]`` row r, column c (column 0 holds the row labels)."""

    headers: tuple[tuple[int, ...], ...]
    cells: tuple[tuple[tuple[int, ...], ...], ...]


@dataclass(frozen=True)
class Chart:
    """Word indices of each bar's category label and of its value label (-1 when not shown)."""

    labels: tuple[tuple[int, ...], ...]
    values: tuple[int, ...]


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


# name: (width / height, long side range px, body font px range, weight)
_FORMAT_SPECS = {
    "a4": (1 / 1.4142, (820, 1000), (12, 17), 0.3),
    "letter": (8.5 / 11, (800, 990), (12, 17), 0.2),
    "landscape": (1.4142, (800, 1000), (12, 16), 0.15),
    "slide": (16 / 9, (800, 1000), (18, 28), 0.2),
    "receipt": (0.45, (620, 900), (11, 14), 0.15),
}
_TWO_COLUMN_MIN_WIDTH = 440  # content width below which two columns are unreadable
_UNITS = ("(%)", "(kg)", "(km)", "(ms)", "(USD)", "(EUR)", "(mm)", "(GB)", "(kWh)", "(t)")
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (23, 190, 207), (188, 189, 34), (90, 90, 90))


def page_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of page ``index`` of ``split``: distinct (split, index) never share a stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def _compatible(fmt: str, layout: str) -> bool:
    ratio, (lo, _), _, _ = _FORMAT_SPECS[fmt]
    width = lo * min(ratio, 1.0)
    return layout != "two-column" or width * 0.88 >= _TWO_COLUMN_MIN_WIDTH


def render_page(rng: np.random.Generator, sampler: PhraseSampler, options: RenderOptions = RenderOptions()) -> Page:
    """One page: a format, a title and 1-3 blocks of the allowed layouts, everything drawn from ``rng``."""
    formats = [f for f in options.formats if any(_compatible(f, k) for k in options.layouts)]
    if not formats:
        raise ValueError(f"no format in {options.formats} can hold layouts {options.layouts}")
    weights = np.array([_FORMAT_SPECS[f][3] for f in formats])
    fmt = formats[int(rng.choice(len(formats), p=weights / weights.sum()))]
    return _PageBuilder(rng, sampler, options, fmt).build()


def encode_png(image: Image.Image) -> bytes:
    """PNG with fixed options (no metadata, fixed compression), so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- layout

_PARAGRAPH_END = object()
_BULLET = object()


class _PageBuilder:
    """Draws one page block by block, top to bottom, recording every word it draws."""

    def __init__(self, rng: np.random.Generator, sampler: PhraseSampler, options: RenderOptions, fmt: str):
        self.rng, self.sampler, self.options, self.format = rng, sampler, options, fmt
        ratio, (lo, hi), (f_lo, f_hi), _ = _FORMAT_SPECS[fmt]
        long_side = int(rng.integers(lo, hi + 1))
        self.width, self.height = (long_side, round(long_side / ratio)) if ratio >= 1 else (round(long_side * ratio),
                                                                                           long_side)
        self.min_px = options.min_font_px
        self.body_px = max(self.min_px, int(rng.integers(f_lo, f_hi + 1)))
        self.face = "mono" if fmt == "receipt" and rng.random() < 0.6 else ("serif" if rng.random() < 0.4 else "sans")
        margin = round(self.width * rng.uniform(0.05, 0.09))
        self.left, self.right = margin, self.width - margin
        self.top, self.bottom = round(margin * rng.uniform(0.8, 1.2)), self.height - margin
        self.background = (255, 255, 255) if rng.random() < 0.75 else tuple(int(v) for v in rng.integers(243, 253, 3))
        self.ink = (int(rng.integers(0, 40)),) * 3
        self.image = Image.new("RGB", (self.width, self.height), self.background)
        self.draw = ImageDraw.Draw(self.image)
        self.words: list[Word] = []
        self.tables: list[Table] = []
        self.charts: list[Chart] = []
        self.layouts: list[str] = []
        self.n_units = 0
        self.number = int(rng.integers(1, 9))  # table / figure numbering starts mid-document

    # ---- primitives

    def unit(self) -> int:
        self.n_units += 1
        return self.n_units - 1

    def font(self, scale: float = 1.0, face: str | None = None) -> ImageFont.FreeTypeFont:
        return get_font(face or self.face, max(self.min_px, round(self.body_px * scale)))

    def word(self, x: float, baseline: float, text: str, font, role: str, unit: int, fill=None) -> int:
        xy = (round(x), round(baseline))
        self.draw.text(xy, text, font=font, fill=fill or self.ink, anchor="ls")
        # draw.text pastes font.getmask2's coverage mask at xy + offset; that mask's bbox is the ink, to the
        # pixel (textbbox would add the side bearings: up to 5 px of blank on large bold titles)
        mask, (dx, dy) = font.getmask2(text, mode="L", anchor="ls")
        ink = mask.getbbox()
        if ink:
            box = (xy[0] + dx + ink[0], xy[1] + dy + ink[1], xy[0] + dx + ink[2], xy[1] + dy + ink[3])
        else:
            box = tuple(int(v) for v in self.draw.textbbox(xy, text, font=font, anchor="ls"))
        self.words.append(Word(text, box, role, unit))
        return len(self.words) - 1

    def phrase(self, lo: int, hi: int, capitalize: str = "first", content: bool = True) -> list[str]:
        words = self.sampler.phrase(self.rng, int(self.rng.integers(lo, hi + 1)), content)
        if capitalize == "all":
            return [w.capitalize() for w in words]
        return [words[0].capitalize()] + words[1:] if capitalize == "first" else words

    def line(self, tokens: Sequence[str], x: float, baseline: float, font, role: str, unit: int,
             fill=None) -> list[int]:
        space = font.getlength(" ")
        ids = []
        for tok in tokens:
            ids.append(self.word(x, baseline, tok, font, role, unit, fill))
            x += font.getlength(tok) + space
        return ids

    def wrap(self, tokens: Sequence[str], font, width: float) -> list[list[str]]:
        lines, cur, x = [], [], 0.0
        space = font.getlength(" ")
        for tok in tokens:
            w = font.getlength(tok)
            if w > width:
                # longer than a whole line: the rest of the unit is dropped, so drawn neighbours were
                # sampled neighbours
                break
            if cur and x + w > width:
                lines.append(cur)
                cur, x = [], 0.0
            cur.append(tok)
            x += w + space
        return lines + [cur] if cur else lines

    def text_block(self, tokens, font, x0, x1, y, y_max, role, align="left", max_lines=99, fill=None) -> float:
        """Wrapped lines of one unit; returns the bottom of the last line (``y`` if nothing fit)."""
        ascent, descent = font.getmetrics()
        leading = round(font.size * 1.3)
        unit, baseline, bottom = self.unit(), y + ascent, y
        for toks in self.wrap(tokens, font, x1 - x0)[:max_lines]:
            if baseline + descent > y_max:
                break
            width = sum(font.getlength(t) for t in toks) + font.getlength(" ") * (len(toks) - 1)
            x = x0 if align == "left" else x0 + (x1 - x0 - width) / 2
            self.line(toks, x, baseline, font, role, unit, fill)
            bottom = baseline + descent
            baseline += leading
        return bottom

    # ---- page

    def build(self) -> Page:
        y = self.title()
        kinds = [k for k in self.options.layouts if _compatible(self.format, k)]
        n_blocks = 1 if self.format == "slide" else int(self.rng.integers(1, 3 if self.format == "receipt" else 4))
        plan = [kinds[int(i)] for i in self.rng.integers(0, len(kinds), n_blocks)]
        gap = self.body_px * self.rng.uniform(1.0, 2.0)
        for i, kind in enumerate(plan):
            remaining = self.bottom - y
            if remaining < self.body_px * 6:
                break
            if i == len(plan) - 1:
                budget = remaining
            elif kind == "chart":
                budget = min(remaining * 0.7, self.height * self.rng.uniform(0.3, 0.45))
            else:
                budget = remaining * self.rng.uniform(0.3, 0.6)
            end = self.block(kind, y, y + budget)
            if end > y:
                self.layouts.append(kind)
                y = end + gap
        text_kinds = [k for k in ("paragraphs", "two-column") if k in kinds]
        if text_kinds and self.bottom - y > self.height * 0.2:  # no half-empty pages
            kind = text_kinds[int(self.rng.integers(len(text_kinds)))]
            if self.block(kind, y, self.bottom) > y:
                self.layouts.append(kind)
        return Page(self.image, self.words, self.format, tuple(self.layouts), self.tables, self.charts)

    def block(self, kind: str, y0: float, y1: float) -> float:
        if kind == "paragraphs":
            return self.columns(y0, y1, 1)
        if kind == "two-column":
            return self.columns(y0, y1, 2)
        if kind == "table":
            return self.table(y0, y1)
        return self.chart(y0, y1)

    def title(self) -> float:
        rng = self.rng
        font = self.font(rng.uniform(1.5, 2.2), "bold")
        lo, hi = {"slide": (2, 6), "receipt": (2, 4)}.get(self.format, (2, 8))
        tokens = self.phrase(lo, hi, "all" if rng.random() < 0.5 else "first")
        centred = self.format in ("slide", "receipt") and rng.random() < 0.7
        fill = [self.ink, (20, 40, 110), (110, 25, 35)][int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
        bottom = self.text_block(tokens, font, self.left, self.right, self.top, self.bottom, "title",
                                 "center" if centred else "left", max_lines=2, fill=fill)
        if rng.random() < 0.4:
            y = bottom + font.size * 0.4
            self.draw.line([(self.left, y), (self.right, y)], fill=(120, 120, 120), width=1 + int(rng.random() < 0.3))
            bottom = y + 1
        return bottom + font.size * 0.6

    # ---- text

    def paragraph(self, slide: bool) -> list:
        """Tokens of one paragraph as (text, unit) items; each sentence is one unit."""
        rng, items = self.rng, []
        for _ in range(1 if slide else int(rng.integers(2, 6))):
            unit = self.unit()
            words = self.phrase(3, 9, content=False) if slide else self.phrase(5, 16, content=False)
            for i, w in enumerate(words):
                if i == len(words) - 1:
                    w += "."
                elif rng.random() < 0.08:
                    w += ","
                items.append((w, unit))
        return ([_BULLET] if slide else []) + items + [_PARAGRAPH_END]

    def columns(self, y0: float, y1: float, n_cols: int) -> float:
        """Paragraphs flowing through ``n_cols`` columns (text continues from one column into the next)."""
        rng = self.rng
        slide = self.format == "slide"
        y = y0
        if not slide and rng.random() < 0.5:  # a section heading: also a title, of an intermediate size
            y = self.text_block(self.phrase(1, 5), self.font(rng.uniform(1.15, 1.4), "bold"), self.left,
                                self.right, y0, y1, "title", max_lines=1)
            y = y + self.body_px * 0.8 if y > y0 else y0
        font = self.font(1.0)
        gutter = round(self.body_px * rng.uniform(1.5, 3.0))
        col_w = (self.right - self.left - gutter * (n_cols - 1)) / n_cols
        pending: deque = deque()
        bottom = y0
        for c in range(n_cols):
            x0 = self.left + c * (col_w + gutter)
            bottom = max(bottom, self.fill_column(x0, x0 + col_w, y, y1, font, pending, slide))
        return bottom

    def fill_column(self, x0, x1, y0, y1, font, pending: deque, slide: bool) -> float:
        ascent, descent = font.getmetrics()
        leading = font.size * (1.35 if not slide else 1.6)
        space = font.getlength(" ")
        indent = font.size * 1.4 if slide else 0
        baseline, bottom = y0 + ascent, y0
        while baseline + descent <= y1:
            if not pending:
                pending.extend(self.paragraph(slide))
            x, drawn = x0 + indent, False
            if pending[0] is _BULLET:
                pending.popleft()
                s = max(3, font.size // 3)
                top = baseline - ascent / 2 - s / 2
                self.draw.rectangle([x0, top, x0 + s, top + s], fill=self.ink)
            while pending and pending[0] is not _PARAGRAPH_END:
                tok, unit = pending[0]
                w = font.getlength(tok)
                if w > x1 - x0 - indent:  # never fits: drop the rest of its sentence (see wrap)
                    while pending and pending[0] is not _PARAGRAPH_END and pending[0][1] == unit:
                        pending.popleft()
                    continue
                if drawn and x + w > x1:
                    break
                self.word(x, baseline, tok, font, "body", unit)
                pending.popleft()
                x += w + space
                drawn = True
            bottom = baseline + descent
            if pending and pending[0] is _PARAGRAPH_END:
                pending.popleft()
                baseline += leading * 1.6
            else:
                baseline += leading
        return bottom

    # ---- table

    def column_values(self, n_rows: int) -> list[str]:
        rng = self.rng
        kind = rng.choice(["int", "dec1", "dec2", "signed", "money"], p=[0.3, 0.3, 0.15, 0.1, 0.15])
        if kind == "int":
            return [f"{v:,}" for v in rng.integers(10, 10 ** int(rng.integers(2, 6)), n_rows)]
        if kind == "dec1":
            return [f"{v:.1f}" for v in rng.uniform(0.1, 100, n_rows)]
        if kind == "dec2":
            return [f"{v:.2f}" for v in rng.uniform(0.01, 10, n_rows)]
        if kind == "signed":
            return [f"{v:+.1f}" for v in rng.uniform(-20, 20, n_rows)]
        return [f"${v:,.2f}" for v in rng.uniform(1, 10 ** int(rng.integers(2, 5)), n_rows)]

    def table(self, y0: float, y1: float) -> float:
        rng = self.rng
        font = self.font(rng.uniform(0.85, 1.0))
        bold = get_font("bold", font.size)
        ascent, descent = font.getmetrics()
        avail_w = self.right - self.left
        n_cols = int(rng.integers(2, 4)) if avail_w < 420 else int(rng.integers(3, 6))
        n_rows = int(rng.integers(3, 9))
        years = rng.random() < 0.5
        if years:
            first = int(rng.integers(1985, 2021))
            labels = [[str(first + r)] for r in range(n_rows)]
            headers = [(["Year"], None)]
        else:
            labels = [self.phrase(1, 2) for _ in range(n_rows)]
            headers = [(self.phrase(1, 1), None)]
        columns = [labels]
        for _ in range(n_cols - 1):
            unit = _UNITS[int(rng.integers(len(_UNITS)))] if rng.random() < 0.5 else None
            headers.append((self.phrase(1, 2), unit))
            columns.append([[v] for v in self.column_values(n_rows)])
        pad = font.size * 0.6

        def width(tokens, f):
            return sum(f.getlength(t) for t in tokens) + f.getlength(" ") * (len(tokens) - 1)

        widths = [max(width(h + ([u] if u else []), bold), *(width(c, font) for c in col)) + 2 * pad
                  for (h, u), col in zip(headers, columns)]
        while sum(widths) > avail_w and len(widths) > 2:
            widths.pop(), headers.pop(), columns.pop()
        if sum(widths) > avail_w:
            return y0
        if rng.random() < 0.5:  # stretch to the full text width
            extra = (avail_w - sum(widths)) / len(widths)
            widths = [w + extra for w in widths]
        row_h = round(font.size * rng.uniform(1.7, 2.1))
        caption = [f"Table {self.number}:"] + self.phrase(3, 8, content=False)
        caption_font = self.font(0.9)
        cap_lines = len(self.wrap(caption, caption_font, avail_w))
        cap_h = cap_lines * round(caption_font.size * 1.3) + font.size * 0.6
        n_fit = int((y1 - y0 - cap_h) // row_h) - 1
        n_rows = min(n_rows, n_fit)
        if n_rows < 2:
            return y0
        self.number += 1
        caption_above = rng.random() < 0.5
        y = y0
        if caption_above:
            y = self.text_block(caption, caption_font, self.left, self.right, y, y1, "caption") + font.size * 0.6
        x_edges = np.concatenate([[0.0], np.cumsum(widths)]) + self.left
        table_w = x_edges[-1] - self.left
        grid = rng.random() < 0.35
        rule = (60, 60, 60)
        if rng.random() < 0.6:
            shade = tuple(int(v) for v in rng.integers(215, 240, 3))
            self.draw.rectangle([self.left, y, self.left + table_w, y + row_h], fill=shade)
        header_ids, cells = [], []
        for r in range(n_rows + 1):
            top = y + r * row_h
            baseline = top + (row_h - ascent - descent) / 2 + ascent
            row = []
            for c in range(len(widths)):
                if r == 0:
                    tokens, unit = headers[c]
                    ids = self.line(tokens, x_edges[c] + pad, baseline, bold, "table-header", self.unit())
                    if unit:
                        self.line([unit], x_edges[c] + pad + width(tokens, bold) + bold.getlength(" "), baseline,
                                  bold, "table-header", self.unit())
                    header_ids.append(tuple(ids) if c or not years else ())
                else:
                    tokens = columns[c][r - 1]
                    x = x_edges[c] + pad if c == 0 else x_edges[c + 1] - pad - width(tokens, font)
                    row.append(tuple(self.line(tokens, x, baseline, font, "table-cell", self.unit())))
            if r:
                cells.append(tuple(row))
        bottom = y + (n_rows + 1) * row_h
        if grid:
            for r in range(n_rows + 2):
                self.draw.line([(self.left, y + r * row_h), (self.left + table_w, y + r * row_h)], fill=(150,) * 3)
            for x in x_edges:
                self.draw.line([(x, y), (x, bottom)], fill=(150,) * 3)
        else:
            for yy, w in ((y, 2), (y + row_h, 1), (bottom, 2)):
                self.draw.line([(self.left, yy), (self.left + table_w, yy)], fill=rule, width=w)
        self.tables.append(Table(tuple(header_ids), tuple(cells)))
        if not caption_above:
            bottom = self.text_block(caption, caption_font, self.left, self.right, bottom + font.size * 0.6, y1,
                                     "caption")
        return bottom

    # ---- chart

    def chart(self, y0: float, y1: float) -> float:
        rng = self.rng
        font = self.font(rng.uniform(0.8, 0.95), "sans")
        ascent, descent = font.getmetrics()
        line_h = round(font.size * 1.3)
        avail_w = self.right - self.left
        chart_w = avail_w if avail_w < 500 or rng.random() < 0.5 else avail_w * rng.uniform(0.6, 0.9)
        x0 = self.left + (avail_w - chart_w) / 2 * (rng.random() < 0.5)
        caption = [f"Figure {self.number}:"] + self.phrase(3, 8, content=False)
        caption_font = self.font(0.9)
        cap_h = len(self.wrap(caption, caption_font, chart_w)) * round(caption_font.size * 1.3)
        x_title = self.phrase(1, 2) if rng.random() < 0.7 else []
        if font.getlength(" ".join(x_title)) > chart_w * 0.8:
            x_title = []
        plot_top = y0 + line_h * 2.2  # y-axis title, then room for the value labels
        plot_bottom = y1 - cap_h - line_h * (2.4 + (1.2 if x_title else 0)) - font.size
        if plot_bottom - plot_top < font.size * 6:
            return y0
        vmax = float(rng.choice([1, 5, 10, 50, 100, 500, 1000, 5000])) * rng.uniform(0.5, 1.0)
        decimals = 1 if vmax < 60 else 0
        step = _nice_step(vmax / 5)
        tick_dec = max(0, -int(np.floor(np.log10(step)))) if step < 1 else 0
        n_ticks = int(np.ceil(vmax / step)) + 1
        ticks = [f"{i * step:,.{tick_dec}f}" for i in range(n_ticks)]
        tick_w = max(font.getlength(t) for t in ticks) + font.size * 0.6
        plot_left, plot_right = x0 + tick_w, x0 + chart_w - font.size * 0.5
        k = min(int(rng.integers(3, 8)), int((plot_right - plot_left) // (font.size * 5)))
        if k < 3:
            return y0
        slot = (plot_right - plot_left) / k
        labels = []
        for _ in range(k):
            for _try in range(20):
                label = self.phrase(1, 2, "none")
                if all(font.getlength(w) <= slot - 4 for w in label):
                    break
            else:
                return y0
            lines = [label] if font.getlength(" ".join(label)) <= slot - 4 else [[w] for w in label]
            labels.append(lines)
        self.number += 1
        values = rng.uniform(0.15, 1.0, k) * vmax
        top_value = (n_ticks - 1) * step
        scale = (plot_bottom - plot_top) / top_value
        axis_title = self.phrase(1, 2)
        self.line(axis_title, x0, y0 + ascent, font, "chart-axis", self.unit())
        if rng.random() < 0.6:  # the unit is a unit of its own: it was not sampled as the phrase's neighbour
            self.line([_UNITS[int(rng.integers(len(_UNITS)))]], x0 + font.getlength(" ".join(axis_title + [""])),
                      y0 + ascent, font, "chart-axis", self.unit())
        for i, t in enumerate(ticks):
            yy = plot_bottom - i * step * scale
            if i:
                self.draw.line([(plot_left, yy), (plot_right, yy)], fill=(225, 225, 225))
            self.word(plot_left - font.size * 0.3 - font.getlength(t), yy + (ascent - descent) / 2, t, font,
                      "chart-axis", self.unit())
        self.draw.line([(plot_left, plot_top - line_h * 0.5), (plot_left, plot_bottom)], fill=(40, 40, 40))
        self.draw.line([(plot_left, plot_bottom), (plot_right, plot_bottom)], fill=(40, 40, 40))
        one_colour = rng.random() < 0.6
        colour0 = int(rng.integers(len(_PALETTE)))
        bar_frac = rng.uniform(0.5, 0.75)
        show_values = rng.random() < 0.8
        label_ids, value_ids = [], []
        for i in range(k):
            cx = plot_left + (i + 0.5) * slot
            top = plot_bottom - values[i] * scale
            colour = _PALETTE[(colour0 + (0 if one_colour else i)) % len(_PALETTE)]
            self.draw.rectangle([cx - slot * bar_frac / 2, top, cx + slot * bar_frac / 2, plot_bottom], fill=colour)
            if show_values:
                text = f"{values[i]:,.{decimals}f}"
                value_ids.append(self.word(cx - font.getlength(text) / 2, top - font.size * 0.35, text, font,
                                           "chart-label", self.unit()))
            else:
                value_ids.append(-1)
        for i, lines in enumerate(labels):
            cx = plot_left + (i + 0.5) * slot
            unit, ids = self.unit(), []
            for j, toks in enumerate(lines):
                text_w = font.getlength(" ".join(toks))
                ids += self.line(toks, cx - text_w / 2, plot_bottom + font.size * 0.4 + ascent + j * line_h, font,
                                 "chart-label", unit)
            label_ids.append(tuple(ids))
        bottom = plot_bottom + font.size * 0.4 + line_h * max(len(lines) for lines in labels)
        if x_title:
            xt_w = font.getlength(" ".join(x_title))
            self.line(x_title, (plot_left + plot_right - xt_w) / 2, bottom + ascent + font.size * 0.2, font,
                      "chart-axis", self.unit())
            bottom += line_h + font.size * 0.2
        self.charts.append(Chart(tuple(label_ids), tuple(value_ids)))
        return self.text_block(caption, caption_font, x0, x0 + chart_w, bottom + font.size * 0.6, y1, "caption")


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= raw (axis ticks people would choose)."""
    exp = 10.0 ** np.floor(np.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= raw:
            return float(m * exp)
    return float(10 * exp)
