"""The canvas every layout draws on: fonts, page formats, and the primitive that records each word's box.

Why a module of its own: the ground truth is exact because every word is drawn on its own and its
box is the ink of the very mask PIL pasted (:meth:`Canvas.word`). The page composition in
:mod:`sapindex.benchdata.render` and each layout (:mod:`~sapindex.benchdata._paragraphs`,
:mod:`~sapindex.benchdata._table`, :mod:`~sapindex.benchdata._chart`) draw only through these
primitives, so that rule, the records it produces (:class:`Word`, :class:`Table`, :class:`Chart`,
re-exported by ``render``) and the page state they share live in one place below all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FORMAT_SPECS", "UNITS", "Word", "Table", "Chart", "Canvas", "get_font"]

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONT_FILES = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "serif": "DejaVuSerif.ttf",
              "mono": "DejaVuSansMono.ttf"}


@functools.cache
def get_font(face: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / FONT_FILES[face]), size=int(px), layout_engine=ImageFont.Layout.BASIC)


@dataclass(frozen=True)
class Word:
    """One drawn word: ``text`` exactly as drawn, ``box`` (x0, y0, x1, y1) in pixels, x1/y1 exclusive,
    the tight bounding box of its ink (every pixel the glyphs touch, none more), ``role`` in
    :data:`~sapindex.benchdata.render.ROLES`, ``unit`` the text unit (a title, sentence, caption,
    header, cell or label) it belongs to; a unit's words are consecutive in reading order."""

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


# name: (width / height, long side range px, body font px range, weight)
FORMAT_SPECS = {
    "a4": (1 / 1.4142, (820, 1000), (12, 17), 0.3),
    "letter": (8.5 / 11, (800, 990), (12, 17), 0.2),
    "landscape": (1.4142, (800, 1000), (12, 16), 0.15),
    "slide": (16 / 9, (800, 1000), (18, 28), 0.2),
    "receipt": (0.45, (620, 900), (11, 14), 0.15),
}
UNITS = ("(%)", "(kg)", "(km)", "(ms)", "(USD)", "(EUR)", "(mm)", "(GB)", "(kWh)", "(t)")  # table and axis units


class Phrases(Protocol):
    """Where a canvas draws its words from (``render.PhraseSampler``, which keeps the splits apart)."""

    def phrase(self, rng: np.random.Generator, n: int, content: bool = False) -> list[str]: ...


class Canvas:
    """One page being drawn: its size, margins, body font and ink (the first draws from ``rng``), the
    page's ``sampler``, and every word, table and chart drawn on it so far."""

    def __init__(self, rng: np.random.Generator, sampler: Phrases, min_font_px: int, fmt: str):
        self.rng, self.sampler, self.format = rng, sampler, fmt
        ratio, (lo, hi), (f_lo, f_hi), _ = FORMAT_SPECS[fmt]
        long_side = int(rng.integers(lo, hi + 1))
        self.width, self.height = (long_side, round(long_side / ratio)) if ratio >= 1 else (round(long_side * ratio),
                                                                                           long_side)
        self.min_px = min_font_px
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
        self.n_units = 0
        self.number = int(rng.integers(1, 9))  # table / figure numbering starts mid-document

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
