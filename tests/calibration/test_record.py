"""calibration.json as typed records: the file's keys and order, the round trip, older files."""

import json

import pytest

from sapindex.calibration.calibrate import summary_text
from sapindex.calibration.record import CALIBRATION_FORMAT, CALIBRATION_VERSION, CalibrationRecord
from sapindex.errors import SapIndexError

# a calibration.json as `sapindex calibrate` writes it: these keys, in this order
FILE = {
    "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "sapindex_version": "0.0.0",
    "created": "2024-01-01T00:00:00+00:00",
    "model": {"path": "/m", "base_model": None, "family": "colqwen2", "n_layers": 4, "n_heads": 2,
              "fingerprint": {"sha256": "ab" * 32, "files": [["model.safetensors", 12]]}},
    "settings": {"keep_ratio": 0.1, "rho": 0.2, "seed": 0, "limit": 500, "batch_size": 1, "device": "cpu",
                 "dtype": "float32"},
    "pairs": {"source": "pairs.jsonl", "available": 3, "used": 2, "skipped": 1, "skipped_rows": ["pairs.jsonl:3: x"],
              "visual_tokens": {"min": 40, "mean": 52.0, "max": 64}},
    "sr": {"mean": [0.9, 0.95, 0.8, 0.7], "std": [0.01, 0.02, 0.03, 0.04]},
    "random_floor": {"mean": 0.6, "std": 0.01, "per_seed": [0.59, 0.6, 0.61, 0.6, 0.6], "seeds": 5},
    "window": {"start": 1, "end": 2, "rule": "algorithm1", "candidates": {"algorithm1": [1, 2], "sr-peak": [1, 2]},
               "median": 0.85, "alignment_region": [2, 4], "width": 1, "sr_mean_in_window": 0.95},
}


def test_the_record_reads_and_writes_the_file_key_for_key():
    record = CalibrationRecord.from_json(json.loads(json.dumps(FILE)))
    assert record.window.candidates["sr-peak"] == (1, 2) and record.pairs.visual_tokens.max == 64
    assert record.sr.mean == (0.9, 0.95, 0.8, 0.7) and record.model.base_model is None
    assert json.dumps(record.to_json()) == json.dumps(FILE)  # same keys, same order, same values
    assert CalibrationRecord.from_json(record.to_json()) == record


def test_a_file_from_before_window_rules_reads_as_algorithm1():
    old = {**FILE, "window": {k: v for k, v in FILE["window"].items() if k not in ("rule", "candidates")}}
    record = CalibrationRecord.from_json(old)
    assert record.window.rule == "algorithm1" and record.window.candidates == {}
    assert "layers [1, 2) by algorithm1 (median 0.850" in summary_text(old)


def test_summary_names_the_window_and_every_rules_pick():
    text = summary_text(FILE)
    assert "pairs      2 used, 1 skipped; 52 visual tokens/page on average" in text
    assert "best layer 1 (0.950), last layer 0.700, random floor 0.600" in text
    assert text.endswith("width 1; algorithm1 [1, 2), sr-peak [1, 2))")


def test_a_record_missing_a_key_is_refused_by_name():
    broken = {**FILE, "pairs": {k: v for k, v in FILE["pairs"].items() if k != "used"}}
    with pytest.raises(SapIndexError, match="not a PairCounts: it lacks used"):
        CalibrationRecord.from_json(broken)
