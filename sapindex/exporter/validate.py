"""Parity of a staged bundle with PyTorch: the check ``sapindex export`` passes before it writes anything.

Kept apart from the conversion (``export``) because it is a different job with its own inputs:
deterministic pages of several sizes, batch sizes 1 and 4, two queries, and a tolerance per
backbone and dtype (``GraphSpec.tolerances``). It runs the bundle the way the runtime does (its
torch-free preprocessing and ONNX Runtime sessions) against the adapter's colpali-engine forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sapindex import sap
from sapindex.errors import SapIndexError
from sapindex.exporter.graphs import graph_spec
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


class ValidationFailed(SapIndexError):
    """A bundle that broke its dtype's rules; ``report`` holds its figures (``export --json`` prints them)."""

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
    per batch. Needs no torch: :func:`reference_outputs` ran PyTorch before.
    """
    from sapindex.runtime.encoder import Encoder

    encoder = Encoder(bundle, device="cpu")  # the runtime's preprocessing and sessions, from the staged bundle
    sessions, runtime = encoder.sessions, encoder.preprocessor
    worst_emb = worst_cent = worst_eos = worst_pixels = 0.0
    worst_cosine = 1.0
    mismatched = []
    jaccard_at_01 = []
    n_pages = 0
    for batch in reference.batches:
        log(f"validating pages {n_pages + 1}-{n_pages + len(batch['pages'])} of {reference.n_pages}: "
            "ONNX Runtime")
        feed, visual = batch["feed"], batch["visual"]
        worst_pixels = max(worst_pixels, _compare_inputs(feed, runtime.pages(batch["images"]), "pages"))
        emb, cent, eos = sessions.run_pages(feed)  # [B, S, dim], [B, S], [B, S]
        for b, ref in enumerate(batch["pages"]):
            n_pages += 1
            ort_emb, ort_cent = emb[b][visual[b]], cent[b][visual[b]]
            ref_cent = ref.centrality
            worst_emb = max(worst_emb, float(np.abs(ort_emb - ref.embeddings).max()))
            worst_cosine = min(worst_cosine, _min_cosine(ort_emb, ref.embeddings))
            worst_cent = max(worst_cent, float(np.abs(ort_cent - ref_cent).max()))
            worst_eos = max(worst_eos, float(np.abs(eos[b][visual[b]] - ref.eos).max()))
            for ratio in VALIDATION_RATIOS:
                ours, theirs = sap.top_k(ort_cent, ratio), sap.top_k(ref_cent, ratio)
                if ratio == 0.1:
                    jaccard_at_01.append(sap.jaccard(ours, theirs))
                if not np.array_equal(ours, theirs):
                    mismatched.append({"page": n_pages, "grid": list(ref.grid), "keep_ratio": ratio})
    limits = reference.tolerances[dtype]
    tolerance = limits.embeddings
    queries, q_feed = reference.queries, reference.query_feed
    log(f"validating {len(queries)} queries: ONNX Runtime")
    _compare_inputs(q_feed, runtime.queries(queries), "queries")
    q_emb = sessions.run_queries({**q_feed, **runtime.query_extras(q_feed, sessions.hidden)})
    q_mask = q_feed["attention_mask"].astype(bool)
    worst_query = max(float(np.abs(q_emb[i][q_mask[i]] - reference.query_embeddings[i]).max())
                      for i in range(len(queries)))
    worst_cosine = min([worst_cosine] + [_min_cosine(q_emb[i][q_mask[i]], reference.query_embeddings[i])
                                         for i in range(len(queries))])
    report = {
        "pages": n_pages,
        "visual_grids": [list(g) for g in reference.visual_grids],
        "batch_sizes": [len(b["pages"]) for b in reference.batches],
        "max_abs_diff_embeddings": worst_emb,
        "max_abs_diff_centrality": worst_cent,
        "max_abs_diff_query_embeddings": worst_query,
        "max_abs_diff_eos_attention": worst_eos,
        "min_cosine_embeddings": worst_cosine,
        "kept_set_mismatches": mismatched,
        "min_kept_jaccard_at_0.1": min(jaccard_at_01),
        "mean_kept_jaccard_at_0.1": float(np.mean(jaccard_at_01)),
        "runtime_preprocessing_max_abs_diff_pixels": worst_pixels,
        "dtype": dtype,
        "tolerance": dataclasses.asdict(limits),
        "torch_version": reference.torch_version,
    }
    failed = [what for what, bad in (
        ("embeddings", tolerance is not None and max(worst_emb, worst_query) > tolerance),
        ("cosine", worst_cosine < limits.cosine),
        ("kept sets", min(jaccard_at_01) < limits.kept_jaccard or np.mean(jaccard_at_01) < limits.kept_jaccard_mean),
    ) if bad]
    if failed:
        raise ValidationFailed(
            f"export validation failed ({dtype}: {', '.join(failed)}): ONNX Runtime vs PyTorch max |diff| embeddings "
            f"{worst_emb:.2e}, queries {worst_query:.2e}, smallest cosine {worst_cosine:.4f}, centrality "
            f"{worst_cent:.2e}; kept-set Jaccard at 0.1: smallest {min(jaccard_at_01):.3f}, mean "
            f"{np.mean(jaccard_at_01):.3f} (limits: {limits}); mismatches: {mismatched or 'none'}",
            {**report, "failed": failed})
    return report


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
        for a, b in zip(*(e.encode_pages(batch["images"]) for e in encoders)):
            worst = max(worst, float(np.abs(a.embeddings - b.embeddings).max()))
            mismatched += [r for r in VALIDATION_RATIOS
                           if not np.array_equal(prune(a, r).positions, prune(b, r).positions)]
    for qa, qb in zip(*(e.encode_queries(reference.queries) for e in encoders)):
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
