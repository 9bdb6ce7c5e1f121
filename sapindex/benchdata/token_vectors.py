"""Kept-vector distributions for search at scale: pages of SAP-kept vectors without encoding any.

Why two: the micro model's kept vectors are low-rank (16 axes keep 94.5 % of their variance), so a
first stage that compresses them well proves little about a real retriever, whose vectors
spread over most of their 128 axes. Search benchmarks and tests run on both:

- :func:`resampled_pages`: each page mixes the real kept vectors of 3 source pages (encoded by a
  model) in random Dirichlet shares, with Gaussian noise (sigma 0.02 a coordinate, cosine ~0.97
  to its source): a real distribution, unique pages, many pages holding part of a relevant one.
- :func:`spread_pages`: clustered vectors with a slowly decaying spectrum (variance of axis k
  proportional to 1/k, randomly rotated): 90 % of the variance needs ~76 of 128 axes. A page draws
  its vectors from 3-8 of ``topics`` topics: :func:`topics_for` keeps ~30 pages on each topic at
  any scale (a larger archive holds more distinct content, not more copies of the same); a fixed
  4,096 topics at 10^6 pages puts ~1,300 near-duplicate pages on each, a stress case.

:func:`queries_near` makes queries whose tokens are noisy copies (cosine ~0.75) of one page's
vectors, as a query's tokens match a relevant page's patches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

SPREAD_TOPICS = 4096


def topics_for(n_pages: int) -> int:
    """Topics of a spread archive of ``n_pages``: ~30 pages on each (5.5 topics a page)."""
    return max(SPREAD_TOPICS, n_pages // 4)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def spread_pages(n: int, seed: int = 0, dim: int = 128, per_page: int = 74, noise: float = 0.6,
                 start: int = 0, topics: int = SPREAD_TOPICS) -> Iterator[np.ndarray]:
    """Yield pages ``start .. n - 1`` of the spread distribution (the same pages for the same
    ``seed`` and ``topics`` whatever ``start``: each page has its own generator)."""
    rng = np.random.default_rng([seed, 0])
    lam = 1.0 / np.arange(1, dim + 1)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    basis = (q * np.sqrt(lam)).T
    centres = (rng.standard_normal((topics, dim)) @ basis).astype(np.float32)
    for i in range(start, n):
        r = np.random.default_rng([seed, 1, i])
        count = int(np.clip(r.normal(per_page, 15), 10, 200))
        mine = r.integers(topics, size=r.integers(3, 9))
        t = mine[r.integers(len(mine), size=count)]
        yield _unit(centres[t] + noise * r.standard_normal((count, dim)) @ basis)


def resampled_pages(source: Sequence[np.ndarray], n: int, seed: int = 0, mix: int = 3, noise: float = 0.02,
                    start: int = 0) -> Iterator[np.ndarray]:
    """Yield pages ``start .. n - 1`` mixing ``mix`` source pages' kept vectors (see the module docstring)."""
    for i in range(start, n):
        r = np.random.default_rng([seed, 2, i])
        parts = r.integers(len(source), size=mix)
        share = r.dirichlet(np.ones(mix))
        counts = np.maximum(1, np.round(share * len(source[parts[0]])).astype(int))
        v = np.concatenate([np.asarray(source[p], np.float32)[r.choice(len(source[p]), size=min(c, len(source[p])),
                                                                      replace=False)]
                            for p, c in zip(parts, counts, strict=True)])
        yield _unit(v + r.normal(0, noise, v.shape))


def queries_near(pages: Sequence[np.ndarray], n: int, seed: int = 0, tokens: int = 20,
                 noise: float = 0.08) -> list[np.ndarray]:
    """``n`` queries of ``tokens`` vectors, each near a random vector of one random page."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        page = np.asarray(pages[rng.integers(len(pages))], np.float32)
        take = page[rng.integers(len(page), size=tokens)]
        out.append(_unit(take + noise * rng.standard_normal(take.shape)))
    return out


def axes_for_variance(vectors: np.ndarray, share: float = 0.9) -> int:
    """How many principal axes keep ``share`` of the vectors' variance."""
    v = np.asarray(vectors, np.float64)
    s = np.linalg.svd(v - v.mean(axis=0), compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s) / s.sum(), share) + 1)
