"""Parity of a staged bundle with PyTorch: the check ``sapindex export`` passes before it writes anything.

Kept apart from the conversion (``export``) because it is a different job with its own inputs:
deterministic pages of several sizes, batch sizes 1 and 4, two queries, and a tolerance per
backbone and dtype (``GraphSpec.tolerances``). It runs the bundle the way the runtime does (its
torch-free preprocessing and ONNX Runtime sessions) against the adapter's colpali-engine forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from sapindex import sap
from sapindex.errors import SapIndexError
from sapindex.exporter.graphs import Tolerance, graph_spec
from sapindex.formats import JsonRecord, json_field
from sapindex.runtime.bundle import Bundle

VALIDATION_RATIOS = (0.05, 0.1, 0.2)
# (height, width) of validation pages: tall, wide, square-ish, a strip; three distinct visual grids at
# least (Idefics3 tiles 420x300, 360x360 and 150x210 alike as 3x3; 230x520 as 2x3, 600x150 as 3x1)
VALIDATION_SIZES = ((420, 300), (230, 520), (360, 360), (150, 210), (600, 150))


@dataclass
class ReferencePage:
    """One validation page through PyTorch, as numpy (no torch type, so validation needs no torch)."""

    embeddings: np.ndarray  # [V, dim] final visual-token embeddings
    centrality: np.ndarray  # [V] window in-degree, mean over the window's layers
    eos: np.ndarray  # [V] final layer's attention from the last token
    grid: tuple[int, int]


@dataclass
class Reference:
    """PyTorch's outputs on the validation pages and queries, with the graph inputs they came from.

    Computed while the model is loaded and kept as numpy, so that export can free the PyTorch
    weights before ONNX Runtime loads the bundle: the two are never resident together.
    """

    tolerances: dict  # bundle dtype -> Tolerance, the backbone's (GraphSpec.tolerances)
    batches: list[dict]  # per batch: "images", "feed" (graph inputs), "visual" [B, S] mask, "pages" (ReferencePage)
    queries: list[str]
    query_feed: dict[str, np.ndarray]
    query_embeddings: list[np.ndarray]  # [M_i, dim] per query, padding dropped
    torch_version: str

    @property
    def n_pages(self) -> int:
        return sum(len(batch["pages"]) for batch in self.batches)

    @property
    def visual_grids(self) -> list[tuple[int, int]]:
        """The distinct (rows, cols) visual grids of the validation pages, sorted."""
        return sorted({page.grid for batch in self.batches for page in batch["pages"]})


def reference_outputs(adapter, window: tuple[int, int], log: Callable[[str], None] = lambda _msg: None) -> Reference:
    """PyTorch (the adapter's colpali-engine forward, fp32) on the validation inputs: pages in
    batches of 1 and 4 (mixed sizes in one batch) and two queries."""
    import torch

    pages = validation_pages()
    batches = []
    done = 0
    for batch in (pages[:1], pages[1:]):  # batch sizes 1 and 4, mixed sizes in one batch
        log(f"validating pages {done + 1}-{done + len(batch)} of {len(pages)}: PyTorch reference")
        inputs = adapter.page_inputs(batch)
        batches.append({"images": batch, "feed": _numpy(adapter.graph_inputs(inputs)),
                        "visual": adapter.visual_mask(inputs).cpu().numpy(),
                        "pages": [ReferencePage(p.embeddings, p.centrality.mean(axis=0), p.eos, _ints(p.grid))
                                  for p in adapter.encode_pages(batch, layers=tuple(range(*window)))]})
        done += len(batch)
    queries = ["what was the total revenue", "chart"]
    log(f"validating {len(queries)} queries: PyTorch reference")
    return Reference(
        tolerances=dict(graph_spec(adapter.info.family.backbone).tolerances), batches=batches, queries=queries,
        query_feed=_numpy(adapter.graph_inputs(adapter.query_inputs(queries))),
        query_embeddings=adapter.encode_queries(queries),
        torch_version=str(torch.__version__),  # a str subclass of torch's own, which would pickle as torch
    )


@dataclass(frozen=True, kw_only=True)
class KeptSetMismatch(JsonRecord):
    """A validation page (counted from 1) whose kept set at ``keep_ratio`` differs between ONNX
    Runtime and PyTorch: recorded at every ratio, so a report shows where rankings drift."""

    page: int
    grid: tuple[int, int]
    keep_ratio: float


@dataclass(frozen=True, kw_only=True)
class ValidationReport(JsonRecord):
    """What :func:`validate` measured, as the bundle manifest keeps it under ``validation``: ONNX
    Runtime's worst disagreement with PyTorch, and the rules (``tolerance``) it was held to."""

    pages: int
    visual_grids: tuple[tuple[int, int], ...]
    batch_sizes: tuple[int, ...]
    max_abs_diff_embeddings: float
    max_abs_diff_centrality: float
    max_abs_diff_query_embeddings: float
    max_abs_diff_eos_attention: float
    min_cosine_embeddings: float
    kept_set_mismatches: tuple[KeptSetMismatch, ...]
    min_kept_jaccard_at_01: float = json_field("min_kept_jaccard_at_0.1")
    mean_kept_jaccard_at_01: float = json_field("mean_kept_jaccard_at_0.1")
    runtime_preprocessing_max_abs_diff_pixels: float
    dtype: str
    tolerance: dict  # the dtype's Tolerance, field by field
    torch_version: str

    def failures(self, limits: Tolerance) -> list[str]:
        """The rules of ``limits`` these figures break, by name (none: the bundle may be written)."""
        worst = max(self.max_abs_diff_embeddings, self.max_abs_diff_query_embeddings)
        return [what for what, bad in (
            ("embeddings", limits.embeddings is not None and worst > limits.embeddings),
            ("cosine", self.min_cosine_embeddings < limits.cosine),
            ("kept sets", self.min_kept_jaccard_at_01 < limits.kept_jaccard
             or self.mean_kept_jaccard_at_01 < limits.kept_jaccard_mean),
        ) if bad]

    def failure_message(self, failed: list[str], limits: Tolerance) -> str:
        """One line with every figure a user needs to judge a refused export (and the limits)."""
        mismatched = [m.to_json() for m in self.kept_set_mismatches]
        return (f"export validation failed ({self.dtype}: {', '.join(failed)}): ONNX Runtime vs PyTorch max |diff| "
                f"embeddings {self.max_abs_diff_embeddings:.2e}, queries {self.max_abs_diff_query_embeddings:.2e}, "
                f"smallest cosine {self.min_cosine_embeddings:.4f}, centrality {self.max_abs_diff_centrality:.2e}; "
                f"kept-set Jaccard at 0.1: smallest {self.min_kept_jaccard_at_01:.3f}, mean "
                f"{self.mean_kept_jaccard_at_01:.3f} (limits: {limits}); mismatches: {mismatched or 'none'}")


class ValidationFailed(SapIndexError):
    """A bundle that broke its dtype's rules; ``report`` holds its figures (``export --json`` prints them):
    :meth:`ValidationReport.to_json` and ``failed``, the names of the rules broken."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def validate(reference: Reference, bundle: Bundle, dtype: str = "fp32",
             log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Run the bundle in ONNX Runtime on PyTorch's inputs; raise with the numbers if they disagree.

    Embeddings (pages and queries) must agree within the backbone's tolerance for ``dtype`` (max
    |diff|, and for quantized bundles the cosine of each token's vector), and ORT's kept set at
    keep ratio 0.1 must match PyTorch's by Jaccard on every page and on average (identical in
    fp32); kept-set mismatches at every ratio and the Jaccard figures are recorded.
    The graphs get the processor's tensors (``adapter.graph_inputs``), so any difference is the
    graphs'; the bundle's own torch-free preprocessing must produce the same ids and masks from
    the same pages and queries (pixels differ by the resampler, recorded). ``log`` gets a line
    per batch. Needs no torch: :func:`reference_outputs` ran PyTorch before. Returns the
    :class:`ValidationReport` as the manifest stores it (its ``to_json()``).
    """
    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(bundle, device="cpu")  # the runtime's preprocessing and sessions, from the staged bundle
    agreement = _compare_pages(reference, encoder, log)
    limits = reference.tolerances[dtype]
    _compare_queries(reference, encoder, agreement, log)
    report = agreement.report(reference, dtype, limits)
    failed = report.failures(limits)
    if failed:
        raise ValidationFailed(report.failure_message(failed, limits), {**report.to_json(), "failed": failed})
    return report.to_json()


@dataclass
class _Agreement:
    """ONNX Runtime's worst disagreement with PyTorch so far, gathered page by page and then over the
    queries, so that the comparison loops stay apart from the figures they feed."""

    pages: int = 0
    embeddings: float = 0.0
    centrality: float = 0.0
    eos: float = 0.0
    pixels: float = 0.0
    queries: float = 0.0
    cosine: float = 1.0
    mismatched: list[KeptSetMismatch] = field(default_factory=list)
    jaccard_at_01: list[float] = field(default_factory=list)

    def add_page(self, emb: np.ndarray, cent: np.ndarray, eos: np.ndarray, ref: ReferencePage) -> None:
        """One page's visual tokens (ONNX Runtime's ``emb``, ``cent``, ``eos``) against PyTorch's."""
        self.pages += 1
        self.embeddings = max(self.embeddings, float(np.abs(emb - ref.embeddings).max()))
        self.cosine = min(self.cosine, _min_cosine(emb, ref.embeddings))
        self.centrality = max(self.centrality, float(np.abs(cent - ref.centrality).max()))
        self.eos = max(self.eos, float(np.abs(eos - ref.eos).max()))
        for ratio in VALIDATION_RATIOS:
            ours, theirs = sap.top_k(cent, ratio), sap.top_k(ref.centrality, ratio)
            if ratio == 0.1:
                self.jaccard_at_01.append(sap.jaccard(ours, theirs))
            if not np.array_equal(ours, theirs):
                self.mismatched.append(KeptSetMismatch(page=self.pages, grid=tuple(ref.grid), keep_ratio=ratio))

    def add_queries(self, ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
        """The queries' token embeddings (padding dropped), ONNX Runtime's against PyTorch's."""
        self.queries = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
        self.cosine = min([self.cosine] + [_min_cosine(a, b) for a, b in zip(ours, theirs, strict=True)])

    def report(self, reference: Reference, dtype: str, limits: Tolerance) -> ValidationReport:
        """The figures as the manifest records them."""
        return ValidationReport(
            pages=self.pages, visual_grids=tuple(tuple(g) for g in reference.visual_grids),
            batch_sizes=tuple(len(b["pages"]) for b in reference.batches),
            max_abs_diff_embeddings=self.embeddings, max_abs_diff_centrality=self.centrality,
            max_abs_diff_query_embeddings=self.queries, max_abs_diff_eos_attention=self.eos,
            min_cosine_embeddings=self.cosine, kept_set_mismatches=tuple(self.mismatched),
            min_kept_jaccard_at_01=min(self.jaccard_at_01), mean_kept_jaccard_at_01=float(np.mean(self.jaccard_at_01)),
            runtime_preprocessing_max_abs_diff_pixels=self.pixels, dtype=dtype, tolerance=asdict(limits),
            torch_version=reference.torch_version,
        )


def _compare_pages(reference: Reference, encoder, log: Callable[[str], None]) -> _Agreement:
    """The validation pages through the bundle's preprocessing (ids and masks must match, pixels are
    measured) and its page graphs, batch by batch as PyTorch ran them."""
    agreement = _Agreement()
    for batch in reference.batches:
        log(f"validating pages {agreement.pages + 1}-{agreement.pages + len(batch['pages'])} of "
            f"{reference.n_pages}: ONNX Runtime")
        feed, visual = batch["feed"], batch["visual"]
        runtime_feed = encoder.preprocessor.pages(batch["images"])
        agreement.pixels = max(agreement.pixels, _compare_inputs(feed, runtime_feed, "pages"))
        emb, cent, eos = encoder.sessions.run_pages(feed)  # [B, S, dim], [B, S], [B, S]
        for b, ref in enumerate(batch["pages"]):
            agreement.add_page(emb[b][visual[b]], cent[b][visual[b]], eos[b][visual[b]], ref)
    return agreement


def _compare_queries(reference: Reference, encoder, agreement: _Agreement, log: Callable[[str], None]) -> None:
    """The validation queries through the bundle's preprocessing (which must match) and its query graph."""
    queries, q_feed = reference.queries, reference.query_feed
    log(f"validating {len(queries)} queries: ONNX Runtime")
    runtime, sessions = encoder.preprocessor, encoder.sessions
    _compare_inputs(q_feed, runtime.queries(queries), "queries")
    q_emb = sessions.run_queries({**q_feed, **runtime.query_extras(q_feed, sessions.hidden)})
    q_mask = q_feed["attention_mask"].astype(bool)
    agreement.add_queries([q_emb[i][q_mask[i]] for i in range(len(queries))], reference.query_embeddings)


def replacement_record(old: Bundle, new: Bundle, reference: Reference,
                       log: Callable[[str], None] = lambda _msg: None) -> list[dict]:
    """The manifest's ``replaces`` list for ``export --replaces OLD``: ``old``'s fingerprint (and the
    ones it replaced itself), once ``new`` is shown to stand in for it.

    Why: an index records the fingerprint of the bundle that built it and refuses any other, so a
    re-export (a new bundle format, a new sapindex) would strand every index built before it. A
    bundle may replace another only if both come from the same weights (source fingerprint), window,
    dtype and projection, and if both, run by the runtime on the validation pages and queries, give
    vectors within the dtype's tolerance and the same kept sets at every validation ratio.
    """
    from sapindex.runtime.encoder import Encoder, prune

    keys = ("family", "window", "dim", "dtype")
    differ = [k for k in keys if old.manifest.get(k) != new.manifest.get(k)]
    if old.manifest["source_model"]["fingerprint"] != new.manifest["source_model"]["fingerprint"]:
        differ.insert(0, "source weights")
    if differ:
        raise SapIndexError(f"--replaces {old.path}: that bundle differs from this export in "
                            f"{', '.join(differ)}; only a re-export of the same weights and window can replace it")
    log(f"comparing  with {old.path} on the validation pages and queries (--replaces)")
    encoders = Encoder(old), Encoder(new)
    worst, mismatched = 0.0, []
    for batch in reference.batches:
        for a, b in zip(*(e.encode_pages(batch["images"]) for e in encoders), strict=True):
            worst = max(worst, float(np.abs(a.embeddings - b.embeddings).max()))
            mismatched += [r for r in VALIDATION_RATIOS
                           if not np.array_equal(prune(a, r).positions, prune(b, r).positions)]
    for qa, qb in zip(*(e.encode_queries(reference.queries) for e in encoders), strict=True):
        worst = max(worst, float(np.abs(qa - qb).max()))
    limit = reference.tolerances[new.manifest["dtype"]].embeddings or 0.0
    if worst > limit or mismatched:
        raise SapIndexError(f"--replaces {old.path}: the two bundles disagree on the validation pages (max |diff| "
                            f"{worst:.1e}, limit {limit:.0e}; kept sets differ at {len(mismatched)} page ratio(s)); "
                            "indexes built with it must be rebuilt")
    return [{"fingerprint": old.fingerprint, "format_version": old.version, "max_abs_diff_embeddings": worst},
            *old.manifest.get("replaces", [])]


def _min_cosine(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Smallest cosine between matching rows of ``[N, dim]`` arrays (1.0 when there are none)."""
    if not len(ours):
        return 1.0
    ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    return float(((ours * theirs).sum(axis=1) / np.maximum(norms, 1e-12)).min())


def validation_pages(count: int | None = None) -> list:
    """Deterministic text-like pages, one per :data:`VALIDATION_SIZES` entry (the first ``count``
    of them); export traces its graphs on the first two.

    Lines of word-like blocks fill each page, as text does. Why not sparse marks on white: blank
    patches are nearly alike, so their centralities nearly tie and any approximation reorders
    them; kept sets compared on mostly blank pages measure those ties, not the bundle (the
    quantized rules, measured: bench/RESULTS.md, "int8 schemes").
    """
    from PIL import Image

    rng = np.random.default_rng(1234)
    pages = []
    for h, w in VALIDATION_SIZES[:count]:
        img = np.full((h, w, 3), 255, dtype=np.uint8)
        y = int(rng.integers(4, 16))
        while y < h - 12:  # a line of words
            height, x = int(rng.integers(5, 9)), int(rng.integers(4, 20))
            while x < w - 10:
                width = int(rng.integers(8, 40))
                img[y:y + height, x:min(x + width, w - 4)] = rng.integers(0, 160, size=3)
                x += width + int(rng.integers(4, 10))
            y += height + int(rng.integers(6, 14))
        pages.append(Image.fromarray(img))
    return pages


def _ints(grid) -> tuple[int, int]:
    """A grid as plain ints (processors may give tensor elements, which pickle as torch objects)."""
    return tuple(int(v) for v in grid)


def _numpy(inputs: dict) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in inputs.items()}


def _compare_inputs(feed: dict[str, np.ndarray], runtime: dict[str, np.ndarray], what: str) -> float:
    """Raise unless the runtime preprocessor's integer inputs (ids, masks, grids) equal the
    processor's; return the largest pixel difference (resamplers differ by a level or two)."""
    for key, value in runtime.items():
        if key not in feed:
            continue
        same_shape = value.shape == feed[key].shape
        if not same_shape or (np.issubdtype(value.dtype, np.integer) and not np.array_equal(value, feed[key])):
            raise SapIndexError(
                f"export validation failed: the bundle's torch-free preprocessing gives other {key} than the "
                f"model's processor for the validation {what} (shapes {value.shape} vs {feed[key].shape}); "
                "this processor configuration is not reproduced by the runtime"
            )
    if "pixel_values" not in runtime:
        return 0.0
    return float(np.abs(runtime["pixel_values"] - feed["pixel_values"]).max())
