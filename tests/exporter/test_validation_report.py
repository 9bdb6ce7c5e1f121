"""The export validation report as a typed record: manifest keys, failures and their message (no model)."""

import json

import numpy as np
import pytest

from sapindex.exporter.graphs import Tolerance
from sapindex.exporter.validate import KeptSetMismatch, ReferencePage, ValidationReport, _Agreement

LIMITS = Tolerance(embeddings=1e-4, kept_jaccard=0.9, kept_jaccard_mean=0.95, cosine=0.99)


def _report(**changes) -> ValidationReport:
    figures = dict(pages=2, visual_grids=((2, 3), (3, 3)), batch_sizes=(1, 1), max_abs_diff_embeddings=1e-6,
                   max_abs_diff_centrality=2e-6, max_abs_diff_query_embeddings=3e-6, max_abs_diff_eos_attention=4e-6,
                   min_cosine_embeddings=0.9999, kept_set_mismatches=(), min_kept_jaccard_at_01=1.0,
                   mean_kept_jaccard_at_01=1.0, runtime_preprocessing_max_abs_diff_pixels=0.01, dtype="fp32",
                   tolerance={"embeddings": 1e-4}, torch_version="2.0")
    return ValidationReport(**{**figures, **changes})


def test_the_report_keeps_the_manifests_keys_and_order():
    report = _report(kept_set_mismatches=(KeptSetMismatch(page=2, grid=(3, 3), keep_ratio=0.05),))
    written = report.to_json()
    assert list(written) == [
        "pages", "visual_grids", "batch_sizes", "max_abs_diff_embeddings", "max_abs_diff_centrality",
        "max_abs_diff_query_embeddings", "max_abs_diff_eos_attention", "min_cosine_embeddings",
        "kept_set_mismatches", "min_kept_jaccard_at_0.1", "mean_kept_jaccard_at_0.1",
        "runtime_preprocessing_max_abs_diff_pixels", "dtype", "tolerance", "torch_version"]
    assert written["visual_grids"] == [[2, 3], [3, 3]]
    assert written["kept_set_mismatches"] == [{"page": 2, "grid": [3, 3], "keep_ratio": 0.05}]
    assert ValidationReport.from_json(json.loads(json.dumps(written))) == report


def test_failures_name_each_broken_rule_and_the_message_gives_the_figures():
    assert _report().failures(LIMITS) == []
    bad = _report(max_abs_diff_query_embeddings=1e-3, min_cosine_embeddings=0.5, mean_kept_jaccard_at_01=0.9,
                  kept_set_mismatches=(KeptSetMismatch(page=1, grid=(2, 3), keep_ratio=0.1),))
    failed = bad.failures(LIMITS)
    assert failed == ["embeddings", "cosine", "kept sets"]
    message = bad.failure_message(failed, LIMITS)
    assert message.startswith("export validation failed (fp32: embeddings, cosine, kept sets): ")
    assert "queries 1.00e-03, smallest cosine 0.5000" in message
    assert message.endswith("mismatches: [{'page': 1, 'grid': [2, 3], 'keep_ratio': 0.1}]")
    assert _report(max_abs_diff_embeddings=1.0).failures(Tolerance(None, 0.9, 0.9)) == []  # unbounded embeddings


def test_pages_are_compared_token_by_token_and_kept_sets_per_ratio():
    rng = np.random.default_rng(0)
    emb, cent = rng.normal(size=(20, 8)), np.arange(20.0)
    ref = ReferencePage(emb, cent, np.zeros(20), (4, 5))
    agreement = _Agreement()
    agreement.add_page(emb, cent, np.zeros(20), ref)
    swapped = cent.copy()
    swapped[[0, 19]] = swapped[[19, 0]]  # the most central token drops out of every kept set
    agreement.add_page(emb + 1e-3, swapped, np.zeros(20), ref)
    assert agreement.pages == 2 and agreement.embeddings == pytest.approx(1e-3)
    assert [(m.page, m.grid) for m in agreement.mismatched] == [(2, (4, 5))] * 3
    assert agreement.jaccard_at_01 == [1.0, 1 / 3]
    page_cosine = agreement.cosine
    agreement.add_queries([emb[:3]], [emb[:3]])
    assert agreement.queries == 0.0 and agreement.cosine == page_cosine < 1.0  # the smallest over pages and queries
