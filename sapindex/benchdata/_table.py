"""The "table" layout: a numeric table with a header row, row labels and a caption.

Why a module of its own: a table is a self-contained block with rules of its own (numeric column
kinds, columns and rows dropped until they fit the band, rules or a grid, a numbered caption above
or below) and a ground-truth record of its own (:class:`~sapindex.benchdata._canvas.Table`: which
words are headers and which are cells). Like every layout it is a function of the
:class:`~sapindex.benchdata._canvas.Canvas` and a vertical band, called by the page composition in
:mod:`sapindex.benchdata.render`.
"""

from __future__ import annotations

import numpy as np

from sapindex.benchdata._canvas import UNITS, Canvas, Table, get_font

__all__ = ["draw_table"]


def draw_table(canvas: Canvas, y0: float, y1: float) -> float:
    """A table with a header row, a label column and numeric columns, captioned above or below;
    returns its bottom (``y0`` when none fits)."""
    rng = canvas.rng
    font = canvas.font(rng.uniform(0.85, 1.0))
    bold = get_font("bold", font.size)
    ascent, descent = font.getmetrics()
    avail_w = canvas.right - canvas.left
    n_cols = int(rng.integers(2, 4)) if avail_w < 420 else int(rng.integers(3, 6))
    n_rows = int(rng.integers(3, 9))
    years = rng.random() < 0.5
    if years:
        first = int(rng.integers(1985, 2021))
        labels = [[str(first + r)] for r in range(n_rows)]
        headers = [(["Year"], None)]
    else:
        labels = [canvas.phrase(1, 2) for _ in range(n_rows)]
        headers = [(canvas.phrase(1, 1), None)]
    columns = [labels]
    for _ in range(n_cols - 1):
        unit = UNITS[int(rng.integers(len(UNITS)))] if rng.random() < 0.5 else None
        headers.append((canvas.phrase(1, 2), unit))
        columns.append([[v] for v in _column_values(rng, n_rows)])
    pad = font.size * 0.6

    def width(tokens, f):
        return sum(f.getlength(t) for t in tokens) + f.getlength(" ") * (len(tokens) - 1)

    widths = [max(width(h + ([u] if u else []), bold), *(width(c, font) for c in col)) + 2 * pad
              for (h, u), col in zip(headers, columns, strict=True)]
    while sum(widths) > avail_w and len(widths) > 2:
        widths.pop(), headers.pop(), columns.pop()
    if sum(widths) > avail_w:
        return y0
    if rng.random() < 0.5:  # stretch to the full text width
        extra = (avail_w - sum(widths)) / len(widths)
        widths = [w + extra for w in widths]
    row_h = round(font.size * rng.uniform(1.7, 2.1))
    caption = [f"Table {canvas.number}:"] + canvas.phrase(3, 8, content=False)
    caption_font = canvas.font(0.9)
    cap_lines = len(canvas.wrap(caption, caption_font, avail_w))
    cap_h = cap_lines * round(caption_font.size * 1.3) + font.size * 0.6
    n_fit = int((y1 - y0 - cap_h) // row_h) - 1
    n_rows = min(n_rows, n_fit)
    if n_rows < 2:
        return y0
    canvas.number += 1
    caption_above = rng.random() < 0.5
    y = y0
    if caption_above:
        y = canvas.text_block(caption, caption_font, canvas.left, canvas.right, y, y1, "caption") + font.size * 0.6
    x_edges = np.concatenate([[0.0], np.cumsum(widths)]) + canvas.left
    table_w = x_edges[-1] - canvas.left
    grid = rng.random() < 0.35
    rule = (60, 60, 60)
    if rng.random() < 0.6:
        shade = tuple(int(v) for v in rng.integers(215, 240, 3))
        canvas.draw.rectangle([canvas.left, y, canvas.left + table_w, y + row_h], fill=shade)
    header_ids, cells = [], []
    for r in range(n_rows + 1):
        top = y + r * row_h
        baseline = top + (row_h - ascent - descent) / 2 + ascent
        row = []
        for c in range(len(widths)):
            if r == 0:
                tokens, unit = headers[c]
                ids = canvas.line(tokens, x_edges[c] + pad, baseline, bold, "table-header", canvas.unit())
                if unit:
                    canvas.line([unit], x_edges[c] + pad + width(tokens, bold) + bold.getlength(" "), baseline,
                                bold, "table-header", canvas.unit())
                header_ids.append(tuple(ids) if c or not years else ())
            else:
                tokens = columns[c][r - 1]
                x = x_edges[c] + pad if c == 0 else x_edges[c + 1] - pad - width(tokens, font)
                row.append(tuple(canvas.line(tokens, x, baseline, font, "table-cell", canvas.unit())))
        if r:
            cells.append(tuple(row))
    bottom = y + (n_rows + 1) * row_h
    if grid:
        for r in range(n_rows + 2):
            canvas.draw.line([(canvas.left, y + r * row_h), (canvas.left + table_w, y + r * row_h)], fill=(150,) * 3)
        for x in x_edges:
            canvas.draw.line([(x, y), (x, bottom)], fill=(150,) * 3)
    else:
        for yy, w in ((y, 2), (y + row_h, 1), (bottom, 2)):
            canvas.draw.line([(canvas.left, yy), (canvas.left + table_w, yy)], fill=rule, width=w)
    canvas.tables.append(Table(tuple(header_ids), tuple(cells)))
    if not caption_above:
        bottom = canvas.text_block(caption, caption_font, canvas.left, canvas.right, bottom + font.size * 0.6, y1,
                                   "caption")
    return bottom


def _column_values(rng: np.random.Generator, n_rows: int) -> list[str]:
    """One numeric column's cells, all of one randomly chosen kind (integers, decimals, signed, money)."""
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
