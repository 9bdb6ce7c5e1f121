"""The "paragraphs" and "two-column" layouts: body text flowing through one or more columns.

Why a module of its own: running text is the one layout that carries state from column to column
(a sentence continues where the last column ended: a queue of pending words with paragraph and
bullet markers), and that machinery concerns no other block. Like every layout it is a function of
the :class:`~sapindex.benchdata._canvas.Canvas` and a vertical band, called by the page composition
in :mod:`sapindex.benchdata.render`.
"""

from __future__ import annotations

from collections import deque

from sapindex.benchdata._canvas import Canvas

__all__ = ["draw_columns"]

_PARAGRAPH_END = object()
_BULLET = object()


def draw_columns(canvas: Canvas, y0: float, y1: float, n_cols: int) -> float:
    """Paragraphs flowing through ``n_cols`` columns (text continues from one column into the next);
    returns the bottom of the longest column."""
    rng = canvas.rng
    slide = canvas.format == "slide"
    y = y0
    if not slide and rng.random() < 0.5:  # a section heading: also a title, of an intermediate size
        y = canvas.text_block(canvas.phrase(1, 5), canvas.font(rng.uniform(1.15, 1.4), "bold"), canvas.left,
                              canvas.right, y0, y1, "title", max_lines=1)
        y = y + canvas.body_px * 0.8 if y > y0 else y0
    font = canvas.font(1.0)
    gutter = round(canvas.body_px * rng.uniform(1.5, 3.0))
    col_w = (canvas.right - canvas.left - gutter * (n_cols - 1)) / n_cols
    pending: deque = deque()
    bottom = y0
    for c in range(n_cols):
        x0 = canvas.left + c * (col_w + gutter)
        bottom = max(bottom, _fill_column(canvas, x0, x0 + col_w, y, y1, font, pending, slide))
    return bottom


def _fill_column(canvas: Canvas, x0, x1, y0, y1, font, pending: deque, slide: bool) -> float:
    """Lines of ``pending`` paragraph tokens from ``y0`` down to ``y1`` (new paragraphs as needed);
    returns the bottom of the last line."""
    ascent, descent = font.getmetrics()
    leading = font.size * (1.35 if not slide else 1.6)
    space = font.getlength(" ")
    indent = font.size * 1.4 if slide else 0
    baseline, bottom = y0 + ascent, y0
    while baseline + descent <= y1:
        if not pending:
            pending.extend(_paragraph(canvas, slide))
        x, drawn = x0 + indent, False
        if pending[0] is _BULLET:
            pending.popleft()
            s = max(3, font.size // 3)
            top = baseline - ascent / 2 - s / 2
            canvas.draw.rectangle([x0, top, x0 + s, top + s], fill=canvas.ink)
        while pending and pending[0] is not _PARAGRAPH_END:
            tok, unit = pending[0]
            w = font.getlength(tok)
            if w > x1 - x0 - indent:  # never fits: drop the rest of its sentence (see Canvas.wrap)
                while pending and pending[0] is not _PARAGRAPH_END and pending[0][1] == unit:
                    pending.popleft()
                continue
            if drawn and x + w > x1:
                break
            canvas.word(x, baseline, tok, font, "body", unit)
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


def _paragraph(canvas: Canvas, slide: bool) -> list:
    """Tokens of one paragraph as (text, unit) items; each sentence is one unit."""
    rng, items = canvas.rng, []
    for _ in range(1 if slide else int(rng.integers(2, 6))):
        unit = canvas.unit()
        words = canvas.phrase(3, 9, content=False) if slide else canvas.phrase(5, 16, content=False)
        for i, w in enumerate(words):
            if i == len(words) - 1:
                w += "."
            elif rng.random() < 0.08:
                w += ","
            items.append((w, unit))
    return ([_BULLET] if slide else []) + items + [_PARAGRAPH_END]
