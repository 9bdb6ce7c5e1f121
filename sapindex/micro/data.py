"""Training pages for the micro retriever: rendered, preprocessed once, with per-cell word targets.

Why a pool and not a stream: on a 2-core machine rendering (~25 ms) and resizing (~20 ms) a page
costs about a third of a training step's per-page time, so each curriculum stage renders its
pages once, in parallel processes, and the trainer draws batches from them. A page is kept as the
processor's patches in ``uint8`` (the normalisation is an affine map per channel, undone exactly
here and redone in the trainer), a quarter of the float32 memory.

The dense target: the renderer knows every word's ink box, so each page carries, per word token
of the micro tokenizer, the merged visual cells (28 x 28 px of the resized page, the model's
visual tokens in row-major order) that the word's ink covers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from sapindex.benchdata.render import normalize
from sapindex.benchdata.synthetic import iter_training_pages

MERGE = 2  # Qwen2-VL merges 2 x 2 patches of 14 px into one visual token
PATCH = 14
CELL = MERGE * PATCH
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: how hard its pages are and how many distinct pages it renders."""

    vocab_size: int
    min_font_px: int
    pages: int
    steps: int
    crop: tuple[int, int] | None = None  # train on windows of at most (rows, cols) visual tokens
    batch_size: int | None = None  # overrides the config's (whole high-resolution pages need smaller batches)

    @property
    def pool_key(self) -> tuple[int, int, int]:
        """Stages with the same key draw from the same rendered pages."""
        return self.vocab_size, self.min_font_px, self.pages


@dataclass(frozen=True)
class PageSample:
    """A preprocessed training page: the processor's patches, its grid, word targets and queries."""

    patches: np.ndarray  # [gh * gw, 588] uint8, the processor's patch order, one frame (see to_uint8)
    grid: tuple[int, int]  # (gh, gw) in 14 px patches
    word_cells: dict[int, np.ndarray]  # token id -> indices of the merged cells holding that word
    queries: tuple[str, ...]
    cell_chars: np.ndarray | None = None  # [n_cells, len(CHARACTERS)] bool: characters inked in each cell

    @property
    def n_cells(self) -> int:
        return self.grid[0] * self.grid[1] // (MERGE * MERGE)


def crop(sample: PageSample, rng: np.random.Generator, size: tuple[int, int], tries: int = 4) -> PageSample:
    """A window of at most ``size`` (rows, cols) visual tokens, the most inked of ``tries`` random ones.

    Why: early on the vision tower must learn glyphs, and a whole page spends most of its tokens
    (and the quadratic vision attention) on margins; text-dense windows give ~4x more steps per
    second. The model has dynamic resolution, so a window is just a smaller page. Patches are in
    the processor's cell-major order (merged row, merged col, 2 x 2 patches), so a window of
    cells is a plain slice.
    """
    rows, cols = sample.grid[0] // MERGE, sample.grid[1] // MERGE
    h, w = min(size[0], rows), min(size[1], cols)
    inked = np.zeros(rows * cols, dtype=bool)
    for cells in sample.word_cells.values():
        inked[cells] = True
    inked = inked.reshape(rows, cols)
    corners = [(int(rng.integers(rows - h + 1)), int(rng.integers(cols - w + 1))) for _ in range(tries)]
    r0, c0 = max(corners, key=lambda rc: inked[rc[0]: rc[0] + h, rc[1]: rc[1] + w].sum())
    patches = sample.patches.reshape(rows, cols, MERGE * MERGE, -1)[r0: r0 + h, c0: c0 + w]  # [h, w, 4, 1176]
    words = {}
    for tid, cells in sample.word_cells.items():
        r, c = np.divmod(cells, cols)
        inside = (r >= r0) & (r < r0 + h) & (c >= c0) & (c < c0 + w)
        if inside.any():
            words[tid] = (r[inside] - r0) * w + (c[inside] - c0)
    chars = None
    if sample.cell_chars is not None:
        chars = sample.cell_chars.reshape(rows, cols, -1)[r0: r0 + h, c0: c0 + w].reshape(h * w, -1)
    return PageSample(np.ascontiguousarray(patches.reshape(-1, sample.patches.shape[1])), (h * MERGE, w * MERGE),
                      words, (), chars)


def word_cells(boxes: Sequence[tuple[float, float, float, float]], token_ids: Sequence[int],
               scale: tuple[float, float], cells: tuple[int, int], min_share: float = 0.25) -> dict[int, np.ndarray]:
    """Merged cells covered by each word's box (original pixels, scaled by ``scale`` = (sx, sy)).

    A cell counts when the overlap is at least ``min_share`` of the smaller of the cell and the
    box, so a short word straddling a cell border claims both cells and a long word every cell
    it crosses; the cell of largest overlap always counts.
    """
    rows, cols = cells
    out: dict[int, set[int]] = {}
    for (x0, y0, x1, y1), tid in zip(boxes, token_ids, strict=True):
        X0, X1, Y0, Y1 = x0 * scale[0], x1 * scale[0], y0 * scale[1], y1 * scale[1]
        area = max((X1 - X0) * (Y1 - Y0), 1e-6)
        best, best_overlap, chosen = None, 0.0, set()
        for r in range(max(int(Y0 // CELL), 0), min(int(Y1 // CELL), rows - 1) + 1):
            for c in range(max(int(X0 // CELL), 0), min(int(X1 // CELL), cols - 1) + 1):
                overlap = (max(0.0, min(X1, (c + 1) * CELL) - max(X0, c * CELL))
                           * max(0.0, min(Y1, (r + 1) * CELL) - max(Y0, r * CELL)))
                if overlap > best_overlap:
                    best, best_overlap = r * cols + c, overlap
                if overlap >= min_share * min(CELL * CELL, area):
                    chosen.add(r * cols + c)
        if best is not None:
            out.setdefault(tid, set()).update(chosen | {best})
    return {tid: np.array(sorted(c), dtype=np.int64) for tid, c in out.items()}


def cell_characters(texts: Sequence[str], boxes: Sequence[tuple[float, float, float, float]],
                    scale: tuple[float, float], cells: tuple[int, int]) -> np.ndarray:
    """Which characters (of :data:`CHARACTERS`, case folded) each merged cell shows.

    The renderer gives word boxes, not glyph boxes, so a cell's share of a word's width is
    mapped to the same share of its characters (exact for monospace, close for the others).
    A local, easy target: it teaches the vision tower glyph shapes before whole words.
    """
    rows, cols = cells
    out = np.zeros((rows * cols, len(CHARACTERS)), dtype=bool)
    index = {ch: i for i, ch in enumerate(CHARACTERS)}
    for text, (x0, y0, x1, y1) in zip(texts, boxes, strict=True):
        chars = text.lower()
        X0, X1, Y0, Y1 = x0 * scale[0], x1 * scale[0], y0 * scale[1], y1 * scale[1]
        if not chars or X1 - X0 < 1:
            continue
        for r in range(max(int(Y0 // CELL), 0), min(int(Y1 // CELL), rows - 1) + 1):
            if min(Y1, (r + 1) * CELL) - max(Y0, r * CELL) < 0.3 * min(CELL, Y1 - Y0):
                continue
            for c in range(max(int(X0 // CELL), 0), min(int(X1 // CELL), cols - 1) + 1):
                a, b = max(X0, c * CELL), min(X1, (c + 1) * CELL)
                if b - a < 2:
                    continue
                lo = int((a - X0) / (X1 - X0) * len(chars))
                hi = max(lo + 1, math.ceil((b - X0) / (X1 - X0) * len(chars)))
                for ch in chars[lo:hi]:
                    if ch in index:
                        out[r * cols + c, index[ch]] = True
    return out


def to_uint8(pixel_values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the processor's ``(x / 255 - mean) / std`` and keep one of the two identical frames.

    ``[P, 1176]`` float (3 channels x 2 frames x 14 x 14) -> ``[P, 588]`` uint8 (3 x 14 x 14): a
    still image is its own second frame, so storing it once halves the pool again;
    :func:`expand_frames` restores the processor's layout.
    """
    channel = np.arange(pixel_values.shape[1]) // (pixel_values.shape[1] // 3)
    x = (pixel_values * np.asarray(std)[channel] + np.asarray(mean)[channel]) * 255.0
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.reshape(len(x), 3, 2, -1)[:, :, 0].reshape(len(x), -1))


def expand_frames(patches):
    """``[P, 588]`` -> ``[P, 1176]`` (numpy or torch): the frame repeated, channel-major like the processor."""
    n = patches.shape[0]
    frame = patches.reshape(n, 3, 1, -1)
    return frame.repeat_interleave(2, 2).reshape(n, -1) if hasattr(patches, "repeat_interleave") \
        else np.repeat(frame, 2, axis=2).reshape(n, -1)


def preprocess(processor, image) -> tuple[np.ndarray, tuple[int, int]]:
    """A page through the model's image processor: its stored patches (:func:`to_uint8`) and (gh, gw)."""
    batch = processor(images=[image], return_tensors="np")
    _, gh, gw = (int(v) for v in batch["image_grid_thw"][0])
    return to_uint8(batch["pixel_values"], processor.image_mean, processor.image_std), (gh, gw)


def _render_chunk(args) -> list[PageSample]:
    seed, stage, start, count, vocab, min_pixels, max_pixels = args
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    samples = []
    pages = iter_training_pages(seed, vocab_size=stage.vocab_size, min_font_px=stage.min_font_px, start=start)
    for page in itertools.islice(pages, count):
        patches, (gh, gw) = preprocess(processor, page.image)
        known = [(w, vocab[normalize(w.text)]) for w in page.words if normalize(w.text) in vocab]
        width, height = page.image.size
        scale, cells = (gw * PATCH / width, gh * PATCH / height), (gh // MERGE, gw // MERGE)
        words = word_cells([w.box for w, _ in known], [t for _, t in known], scale, cells)
        chars = cell_characters([w.text for w in page.words], [w.box for w in page.words], scale, cells)
        samples.append(PageSample(patches, (gh, gw), words, tuple(q.text for q in page.queries), chars))
    return samples


def render_pool(seed: int, stage: Stage, start: int, vocab: Mapping[str, int], min_pixels: int,
                max_pixels: int, workers: int = 2) -> list[PageSample]:
    """Train-split pages ``start`` .. ``start + stage.pages - 1`` (deterministic), preprocessed."""
    chunk = -(-stage.pages // (workers * 4))
    jobs = [(seed, stage, s, min(chunk, start + stage.pages - s), dict(vocab), min_pixels, max_pixels)
            for s in range(start, start + stage.pages, chunk)]
    if workers <= 1:
        return [s for job in jobs for s in _render_chunk(job)]
    with ProcessPoolExecutor(workers) as pool:
        return [s for part in pool.map(_render_chunk, jobs) for s in part]
