"""``calibration.json`` as types: the record :func:`sapindex.calibration.calibrate.calibrate` builds.

Format ``sapindex-calibration``, ``version`` 1; each part below is one JSON object of the file,
its fields that object's keys in the file's order::

    model          path, base_model, family, n_layers, n_heads, fingerprint (of the weight files)
    settings       keep_ratio, rho, seed, limit, batch_size, device, dtype
    pairs          source, available, used, skipped, skipped_rows (first 100), visual_tokens min/mean/max
    sr             mean and std per decoder layer (the SR curve)
    random_floor   mean, std, per_seed, seeds: SR of random selections at the same keep ratio
    window         start, end (exclusive), rule, candidates (every rule's pick), median,
                   alignment_region, width, sr_mean_in_window

Why a module of its own: the file's layout is read by more than the code that measures it
(``sapindex export``, the summary, the plot), and these types import neither numpy nor a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sapindex.formats import JsonRecord

CALIBRATION_FORMAT = "sapindex-calibration"
CALIBRATION_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class CalibratedModel(JsonRecord):
    """The weights calibrated; ``sapindex export`` refuses a model whose fingerprint differs."""

    path: str
    base_model: str | None
    family: str
    n_layers: int
    n_heads: int
    fingerprint: dict


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings(JsonRecord):
    """The options of the run, so that a calibration can be repeated."""

    keep_ratio: float
    rho: float
    seed: int
    limit: int
    batch_size: int
    device: str
    dtype: str


@dataclass(frozen=True, kw_only=True)
class VisualTokenCounts(JsonRecord):
    """Visual tokens per calibration page: how large the pages the curve was measured on were."""

    min: int
    mean: float
    max: int


@dataclass(frozen=True, kw_only=True)
class PairCounts(JsonRecord):
    """Which (query, page) pairs the curve averages, and why the others were left out."""

    source: str
    available: int
    used: int
    skipped: int
    skipped_rows: tuple[str, ...]  # the first 100 reasons
    visual_tokens: VisualTokenCounts


@dataclass(frozen=True, kw_only=True)
class SrCurve(JsonRecord):
    """Score Retention per decoder layer over the pairs: the curve the window is chosen on."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class RandomFloor(JsonRecord):
    """SR of random selections at the same keep ratio: what a layer must beat to be worth its window."""

    mean: float
    std: float
    per_seed: tuple[float, ...]
    seeds: int


@dataclass(frozen=True, kw_only=True)
class LayerWindow(JsonRecord):
    """The SAP window (``end`` exclusive) and what chose it; ``rule`` and ``candidates`` are absent
    from files written before ``--window-rule`` existed, which chose by Algorithm 1."""

    start: int
    end: int
    rule: str = "algorithm1"
    candidates: dict[str, tuple[int, int]] = field(default_factory=dict)  # every rule's pick
    median: float
    alignment_region: tuple[int, int]
    width: int
    sr_mean_in_window: float | None


@dataclass(frozen=True, kw_only=True)
class CalibrationRecord(JsonRecord):
    """All of ``calibration.json``; ``to_json()`` is the file's object, key for key."""

    format: str  # CALIBRATION_FORMAT
    version: int  # CALIBRATION_VERSION
    sapindex_version: str
    created: str
    model: CalibratedModel
    settings: CalibrationSettings
    pairs: PairCounts
    sr: SrCurve
    random_floor: RandomFloor
    window: LayerWindow
