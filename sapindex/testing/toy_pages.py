"""Generated document pages and (query, page) pairs, for demos and tests (PIL only, no torch).

Each page gets a title and a few lines of words drawn from a seeded generator, at a random size
and aspect ratio; its query is a few of its own words, so the relevant page is known. These are
mechanical fixtures, not a retrieval benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A small English vocabulary, enough for prompts, queries and generated page text.
WORDS = (
    "the of and to in is was for on with as by at from that this it be are or an which "
    "revenue report annual total year quarter growth profit loss market share sales cost "
    "table figure chart page section summary results method data value percent average "
    "describe image query what how when where who why many much did does show shows "
    "energy water climate policy health science history music sport travel finance "
    "north south east west city country river mountain ocean forest island "
    "january february march april may june july august september october november december "
    "one two three four five six seven eight nine ten hundred thousand million"
).split()


def render_page(words: list[str], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    title_font = ImageFont.load_default(size=max(12, height // 12))
    body_font = ImageFont.load_default(size=max(8, height // 24))
    draw.text((width // 20, height // 20), " ".join(words[:3]).title(), fill="black", font=title_font)
    y = height // 5
    line_words = words[3:]
    while y < height - height // 10 and line_words:
        take = int(rng.integers(2, 6))
        draw.text((width // 20, y), " ".join(line_words[:take]), fill=(40, 40, 40), font=body_font)
        line_words = line_words[take:] or list(rng.choice(WORDS, size=6))
        y += max(10, height // 16)
    box = (int(width * 0.6), int(height * 0.55), int(width * 0.9), int(height * 0.85))
    draw.rectangle(box, outline="black", fill=tuple(int(c) for c in rng.integers(80, 230, size=3)))
    return img


def write_pairs(out_dir: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write ``n`` page PNGs and ``pairs.jsonl`` into ``out_dir``; returns the JSONL path."""
    out = Path(out_dir)
    (out / "pages").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=24)]
        size = (int(rng.integers(180, 420)), int(rng.integers(200, 480)))
        name = f"pages/page-{i:04d}.png"
        render_page(words, size, rng).save(out / name)
        rows.append({"query": " ".join(words[:2] + words[5:7]), "image": name})
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
