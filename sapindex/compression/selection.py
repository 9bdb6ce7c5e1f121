"""Selections: methods that keep some of the page's own token vectors (torch-free).

SAP itself (:func:`sap_select`: the most central tokens of the bundle's window, optionally ranked
with the causal position correction), its per-page budget variant (:func:`sap_budget`, beyond the
paper), and the paper's selection baselines: :func:`random`, :func:`eos` (final-layer attention
from the last token) and DocPruner's :func:`adaptive_eos`; :func:`full` is the uncompressed page
that retention is measured against. All but full, Adaptive-EOS and sap-budget keep exactly
``sapindex.sap.keep_count(n, ratio)`` vectors, so they compare with SAP at matched counts (the
paper's rule; SAP_METHOD.md, "Baselines the paper compares with"). The numpy reference of SAP's
math (``keep_count``, ``top_k``, the correction) stays in :mod:`sapindex.sap`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sapindex import sap
from sapindex.compression.kept import Kept, check_scores, check_vectors, select_rows
from sapindex.errors import SapIndexError
from sapindex.formats import EVAL_REPORT_FORMAT

__all__ = ["full", "sap_select", "random", "eos", "adaptive_eos", "adaptive_eos_mask", "calibrate_adaptive_eos",
           "sap_budget", "budget_count", "calibrate_budget", "effective_tokens", "budget_scale_from"]


def full(vectors) -> Kept:
    """Every vector: the uncompressed page, the reference every method's retention is measured against."""
    v = check_vectors(vectors)
    return Kept(v, np.arange(v.shape[0], dtype=np.int64))


def sap_select(vectors, centrality, ratio: float, seq_rank=None) -> Kept:
    """SAP: the ``keep_count(n, ratio)`` tokens of highest window centrality, ties to the lower index.

    With ``seq_rank`` (each token's rank in sequence order) the tokens are ranked by
    :func:`sapindex.sap.causal_correction` instead (``sap-poscorr``, causal decoders only).
    """
    v = check_vectors(vectors)
    scores = np.asarray(centrality)
    if scores.shape != (v.shape[0],):
        raise ValueError(f"centrality must be [{v.shape[0]}] (one score per vector), got shape {scores.shape}")
    return select_rows(v, sap.select(scores, ratio, seq_rank))


def random(vectors, ratio: float, seed: int) -> Kept:
    """A uniform random subset of ``keep_count(n, ratio)`` tokens, drawn with ``np.random.default_rng(seed)``.

    Deterministic for a seed; average over :data:`RANDOM_SEEDS` for the paper's random floor.
    """
    v = check_vectors(vectors)
    keep = sap.random_k(v.shape[0], ratio, np.random.default_rng(seed))
    return select_rows(v, keep)


def eos(vectors, eos: np.ndarray, ratio: float) -> Kept:
    """The ``keep_count(n, ratio)`` tokens with the highest EOS attention, ties to the lower index."""
    v = check_vectors(vectors)
    scores = check_scores(eos, v.shape[0])
    return select_rows(v, sap.top_k(scores, ratio))


def adaptive_eos_mask(eos: np.ndarray, k: float) -> np.ndarray:
    """DocPruner's keep mask ``eos > mean(eos) + k * std(eos)`` (population std, float64), argmax forced in.

    A page whose scores are all equal (std 0) keeps only its first token (the argmax).
    """
    s = check_scores(eos, None)
    if not math.isfinite(float(k)):
        raise ValueError(f"k must be finite, got {k!r}")
    mu = s.mean()
    sigma = s.std()  # ddof=0: population std
    mask = s > mu + float(k) * sigma
    mask[int(np.argmax(s))] = True
    return mask


def adaptive_eos(vectors, eos: np.ndarray, k: float) -> Kept:
    """DocPruner-style adaptive EOS pruning: keep ``j`` if ``eos[j] > mean + k * std`` (at least the argmax).

    ``k`` is the threshold in page standard deviations, calibrated with
    :func:`calibrate_adaptive_eos` so that the **global** keep rate over held-out pages equals the
    target ratio. Unlike the other baselines this does *not* match the per-page vector count: a
    page with a few salient tokens keeps fewer than ``keep_count(n, ratio)``, a flat one more.
    """
    v = check_vectors(vectors)
    s = check_scores(eos, v.shape[0])
    return select_rows(v, np.flatnonzero(adaptive_eos_mask(s, k)))


def calibrate_adaptive_eos(eos_list, ratio: float, *, max_iter: int = 200) -> float:
    """The DocPruner ``k`` whose global keep rate on ``eos_list`` is closest to ``ratio``.

    The global keep rate ``sum_p kept_p(k) / sum_p n_p`` is a non-increasing step function of
    ``k`` (each page's threshold ``mean + k * std`` grows with ``k``); it is at its maximum (1
    when no page is flat) for ``k < -sqrt(n_max)`` and ``n_pages / total`` for
    ``k >= sqrt(n_max)`` (population z-scores lie in ``[-sqrt(n - 1), sqrt(n - 1)]``), so ``k``
    is bisected over ``[-sqrt(n_max) - 1, sqrt(n_max) + 1]`` down to adjacent floats. Of the two
    plateaus that bracket ``ratio``, the one whose rate is closer wins (the lower k, i.e. more
    tokens, on an exact tie), and the returned ``k`` is moved to the middle of that plateau
    (half-way between the neighbouring page z-scores) so that float noise when re-applying it
    cannot flip a token. Rates below ``n_pages / total`` cannot be reached (every page keeps its
    argmax); the upper end is returned then.
    """
    sap._check_ratio(ratio)
    pages = [check_scores(e, None) for e in eos_list]
    if not pages:
        raise ValueError("calibrate_adaptive_eos needs at least one page")
    total = sum(p.shape[0] for p in pages)
    stats = [(p, p.mean(), p.std()) for p in pages]
    flat = np.concatenate(pages)
    mus = np.concatenate([np.full(p.shape[0], mu) for p, mu, _ in stats])
    sigmas = np.concatenate([np.full(p.shape[0], sigma) for p, _, sigma in stats])
    starts = np.cumsum([0] + [p.shape[0] for p in pages[:-1]])
    argmaxes = starts + np.array([int(np.argmax(p)) for p in pages])

    def rate(k: float) -> float:
        # the same float arithmetic as adaptive_eos_mask, page by page
        above = flat > mus + k * sigmas
        return (int(above.sum()) + int((~above[argmaxes]).sum())) / total

    bound = math.sqrt(max(p.shape[0] for p in pages)) + 1.0
    lo, hi = -bound, bound  # rate(lo) is the maximum rate; rate(hi) == n_pages / total
    r_lo, r_hi = rate(lo), rate(hi)
    if r_hi >= ratio:
        return _plateau_mid(stats, hi, rate)
    # invariant: rate(lo) >= ratio > rate(hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        r = rate(mid)
        if r >= ratio:
            lo, r_lo = mid, r
        else:
            hi, r_hi = mid, r
    best = lo if abs(r_lo - ratio) <= abs(r_hi - ratio) else hi
    return _plateau_mid(stats, best, rate)


def _plateau_mid(stats, k: float, rate: Callable[[float], float]) -> float:
    """The middle of the plateau of ``rate`` containing ``k`` (between neighbouring z-scores), if it agrees."""
    zs = [(p - mu) / sigma for p, mu, sigma in stats if sigma > 0]
    if not zs:
        return float(k)
    z = np.concatenate(zs)
    below, above = z[z <= k], z[z > k]
    if below.size and above.size:
        cand = 0.5 * (below.max() + above.min())
    elif above.size:
        cand = above.min() - 1.0
    else:
        cand = below.max() + 1.0
    cand = float(cand)
    return cand if rate(cand) == rate(k) else float(k)


def sap_budget(vectors, centrality, scale: float) -> Kept:
    """SAP's selection of :func:`sapindex.budget_count` tokens (the page's share of a corpus budget)."""
    v = check_vectors(vectors)
    return select_rows(v, sap.highest(centrality, budget_count(centrality, scale)))


def effective_tokens(centrality) -> float:
    """``exp(entropy)`` of the page's centrality as a distribution: how many tokens the model's
    attention is spread over (1 when one token takes it all, ``n`` when every token gets as much)."""
    c = np.asarray(centrality, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("centrality must be a non-empty 1-D array of finite, non-negative values")
    total = c.sum()
    if total <= 0:
        return float(c.size)  # no signal: as spread as it gets
    q = c[c > 0] / total
    return float(np.exp(-(q * np.log(q)).sum()))


def budget_count(centrality, scale: float) -> int:
    """Vectors a page gets under a corpus budget (``sap-budget``): ``scale`` times its
    :func:`effective_tokens`, rounded, at least 1 and at most its token count."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"the budget scale must be a positive number, got {scale!r}")
    n = int(np.shape(centrality)[0])
    return int(min(n, max(1, round(scale * effective_tokens(centrality)))))


def calibrate_budget(centralities, ratio: float) -> float:
    """The :func:`budget_count` scale that spreads the vectors a fixed ``ratio`` keeps on these
    pages, ``sum(keep_count(n_p, ratio))``, in proportion to each page's effective tokens.

    Calibrated once on calibration pages and applied to each new page on its own (an index grows
    page by page), the corpus total then matches the fixed ratio's up to rounding and to how far
    the new pages differ from the calibration pages (bench/RESULTS.md measures both).
    """
    centralities = list(centralities)
    if not centralities:
        raise ValueError("calibrate_budget needs at least one page")
    target = sum(sap.keep_count(len(c), ratio) for c in centralities)
    return float(target / sum(effective_tokens(c) for c in centralities))


def budget_scale_from(path: str | Path, fingerprints: tuple[str, ...], keep_ratio: float) -> float:
    """The ``sap-budget`` scale an eval report fitted at ``keep_ratio``, for ``index --budget-from``.

    The report must come from a bundle with one of ``fingerprints`` (the scale is a property of the
    model's centrality) and hold ``sap-budget`` at that ratio; SapIndexError in one line otherwise.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        fingerprint = report["bundle"]["fingerprint"]
        cells = report["results"].get("sap-budget", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SapIndexError(f"{path}: not a readable sapindex eval report.json ({exc})") from None
    if report.get("format") != EVAL_REPORT_FORMAT:
        raise SapIndexError(f"{path}: not a sapindex eval report (format {report.get('format')!r})")
    if fingerprint not in fingerprints:
        raise SapIndexError(f"{path}: calibrated with another bundle (fingerprint {str(fingerprint)[:12]}); run "
                            "`sapindex eval` with this bundle and --methods sap-budget")
    cell = cells.get(f"{keep_ratio:g}") if isinstance(cells, dict) else None
    if not isinstance(cell, dict) or "budget_scale" not in cell:
        have = ", ".join(sorted(cells)) if isinstance(cells, dict) and cells else "none"
        raise SapIndexError(f"{path}: no sap-budget calibration at keep ratio {keep_ratio:g} (has: {have}); run "
                            f"`sapindex eval ... --methods sap-budget --keep-ratios {keep_ratio:g}`")
    return float(cell["budget_scale"])
