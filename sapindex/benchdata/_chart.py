"""The "chart" layout: a captioned bar chart with axis titles, tick values and bar labels.

Why a module of its own: a bar chart is a self-contained block with geometry of its own (a value
axis with round tick steps, bars, category labels that must fit their slot, a numbered caption) and
a ground-truth record of its own (:class:`~sapindex.benchdata._canvas.Chart`: which words label
which bar). Like every layout it is a function of the :class:`~sapindex.benchdata._canvas.Canvas`
and a vertical band, called by the page composition in :mod:`sapindex.benchdata.render`.
"""

from __future__ import annotations

import numpy as np

from sapindex.benchdata._canvas import UNITS, Canvas, Chart

__all__ = ["draw_chart"]

_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (23, 190, 207), (188, 189, 34), (90, 90, 90))


def draw_chart(canvas: Canvas, y0: float, y1: float) -> float:
    """A captioned bar chart with a value axis, category labels and (usually) value labels;
    returns its bottom (``y0`` when none fits)."""
    rng = canvas.rng
    font = canvas.font(rng.uniform(0.8, 0.95), "sans")
    ascent, descent = font.getmetrics()
    line_h = round(font.size * 1.3)
    avail_w = canvas.right - canvas.left
    chart_w = avail_w if avail_w < 500 or rng.random() < 0.5 else avail_w * rng.uniform(0.6, 0.9)
    x0 = canvas.left + (avail_w - chart_w) / 2 * (rng.random() < 0.5)
    caption = [f"Figure {canvas.number}:"] + canvas.phrase(3, 8, content=False)
    caption_font = canvas.font(0.9)
    cap_h = len(canvas.wrap(caption, caption_font, chart_w)) * round(caption_font.size * 1.3)
    x_title = canvas.phrase(1, 2) if rng.random() < 0.7 else []
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
            label = canvas.phrase(1, 2, "none")
            if all(font.getlength(w) <= slot - 4 for w in label):
                break
        else:
            return y0
        lines = [label] if font.getlength(" ".join(label)) <= slot - 4 else [[w] for w in label]
        labels.append(lines)
    canvas.number += 1
    values = rng.uniform(0.15, 1.0, k) * vmax
    top_value = (n_ticks - 1) * step
    scale = (plot_bottom - plot_top) / top_value
    axis_title = canvas.phrase(1, 2)
    canvas.line(axis_title, x0, y0 + ascent, font, "chart-axis", canvas.unit())
    if rng.random() < 0.6:  # the unit is a unit of its own: it was not sampled as the phrase's neighbour
        canvas.line([UNITS[int(rng.integers(len(UNITS)))]], x0 + font.getlength(" ".join(axis_title + [""])),
                    y0 + ascent, font, "chart-axis", canvas.unit())
    for i, t in enumerate(ticks):
        yy = plot_bottom - i * step * scale
        if i:
            canvas.draw.line([(plot_left, yy), (plot_right, yy)], fill=(225, 225, 225))
        canvas.word(plot_left - font.size * 0.3 - font.getlength(t), yy + (ascent - descent) / 2, t, font,
                    "chart-axis", canvas.unit())
    canvas.draw.line([(plot_left, plot_top - line_h * 0.5), (plot_left, plot_bottom)], fill=(40, 40, 40))
    canvas.draw.line([(plot_left, plot_bottom), (plot_right, plot_bottom)], fill=(40, 40, 40))
    one_colour = rng.random() < 0.6
    colour0 = int(rng.integers(len(_PALETTE)))
    bar_frac = rng.uniform(0.5, 0.75)
    show_values = rng.random() < 0.8
    label_ids, value_ids = [], []
    for i in range(k):
        cx = plot_left + (i + 0.5) * slot
        top = plot_bottom - values[i] * scale
        colour = _PALETTE[(colour0 + (0 if one_colour else i)) % len(_PALETTE)]
        canvas.draw.rectangle([cx - slot * bar_frac / 2, top, cx + slot * bar_frac / 2, plot_bottom], fill=colour)
        if show_values:
            text = f"{values[i]:,.{decimals}f}"
            value_ids.append(canvas.word(cx - font.getlength(text) / 2, top - font.size * 0.35, text, font,
                                         "chart-label", canvas.unit()))
        else:
            value_ids.append(-1)
    for i, lines in enumerate(labels):
        cx = plot_left + (i + 0.5) * slot
        unit, ids = canvas.unit(), []
        for j, toks in enumerate(lines):
            text_w = font.getlength(" ".join(toks))
            ids += canvas.line(toks, cx - text_w / 2, plot_bottom + font.size * 0.4 + ascent + j * line_h, font,
                               "chart-label", unit)
        label_ids.append(tuple(ids))
    bottom = plot_bottom + font.size * 0.4 + line_h * max(len(lines) for lines in labels)
    if x_title:
        xt_w = font.getlength(" ".join(x_title))
        canvas.line(x_title, (plot_left + plot_right - xt_w) / 2, bottom + ascent + font.size * 0.2, font,
                    "chart-axis", canvas.unit())
        bottom += line_h + font.size * 0.2
    canvas.charts.append(Chart(tuple(label_ids), tuple(value_ids)))
    return canvas.text_block(caption, caption_font, x0, x0 + chart_w, bottom + font.size * 0.6, y1, "caption")


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= raw (axis ticks people would choose)."""
    exp = 10.0 ** np.floor(np.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= raw:
            return float(m * exp)
    return float(10 * exp)
