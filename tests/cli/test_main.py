"""The command line: exit codes, one-line errors without tracebacks, JSON output, files written."""

import json

import pytest
from helpers import run_cli


def test_version_and_help():
    from sapindex import __version__

    out = run_cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    out = run_cli("calibrate", "--help")
    assert out.returncode == 0 and "Example:" in out.stdout and "--pairs" in out.stdout


@pytest.mark.parametrize("args,message", [
    (("info", "/no/such/model"), "error: /no/such/model: model directory does not exist"),
    (("calibrate", "--model", "/no/such/model", "--pairs", "/no/pairs.jsonl", "--out", "x"),
     "error: /no/pairs.jsonl: pairs file or directory does not exist"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    out = run_cli(*args)
    assert out.returncode == 2
    assert out.stderr.strip() == message
    assert "Traceback" not in out.stderr


def test_missing_model_after_good_pairs(pairs_file, tmp_path):
    out = run_cli("calibrate", "--model", tmp_path / "nope", "--pairs", pairs_file, "--out", tmp_path / "c")
    assert out.returncode == 2 and out.stderr.strip().endswith("model directory does not exist")


def test_calibrate_json_and_files(tiny_models, pairs_file, tmp_path):
    out = run_cli("calibrate", "--model", tiny_models["colqwen2_5"], "--pairs", pairs_file, "--out", tmp_path / "c",
                  "--json", "--batch-size", "3")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["model"]["family"] == "colqwen2_5" and record["pairs"]["used"] == 6
    assert json.loads((tmp_path / "c" / "calibration.json").read_text())["sr"] == record["sr"]
    assert (tmp_path / "c" / "sr_curve.png").stat().st_size > 10_000


def test_calibrate_human_summary(tiny_models, pairs_file, tmp_path):
    out = run_cli("calibrate", "--model", tiny_models["colqwen2"], "--pairs", pairs_file, "--out", tmp_path / "c")
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "c" / "calibration.json").read_text())
    w = record["window"]
    assert f"window     layers [{w['start']}, {w['end']})" in out.stdout
    assert "6 used, 0 skipped" in out.stdout


def test_calibrate_window_rule_sr_peak(tiny_models, pairs_file, tmp_path):
    out = run_cli("calibrate", "--model", tiny_models["colqwen2"], "--pairs", pairs_file, "--out", tmp_path / "c",
                  "--window-rule", "sr-peak", "--rho", "0.34")
    assert out.returncode == 0, out.stderr
    w = json.loads((tmp_path / "c" / "calibration.json").read_text())["window"]
    assert w["rule"] == "sr-peak" and [w["start"], w["end"]] == w["candidates"]["sr-peak"]
    assert f"window     layers [{w['start']}, {w['end']}) by sr-peak" in out.stdout
    a, b = w["candidates"]["algorithm1"]
    assert f"algorithm1 [{a}, {b})" in out.stdout
    bad = run_cli("calibrate", "--model", tiny_models["colqwen2"], "--pairs", pairs_file, "--out", tmp_path / "d",
                  "--window-rule", "middle")
    assert bad.returncode == 2 and "'middle' is not one of 'algorithm1', 'sr-peak'" in bad.stderr


def test_info_prints_family_and_layers(tiny_models):
    out = run_cli("info", tiny_models["colqwen2"])
    assert out.returncode == 0
    assert "family              colqwen2" in out.stdout and "n_layers            6" in out.stdout
    data = json.loads(run_cli("info", tiny_models["colqwen2"], "--json").stdout)
    assert data["n_heads"] == 4 and data["parameters"] > 100_000


def test_info_lists_every_family_with_checkpoints_and_sizes():
    from sapindex.families import FAMILIES

    rows = json.loads(run_cli("info", "--families", "--json").stdout)
    assert [r["family"] for r in rows] == list(FAMILIES)
    for row in rows:
        assert row["checkpoints"] and len(row["checkpoints"]) == len(row["billion_parameters"])
        assert row["bundle_gb_fp32"] == [round(b * 4, 1) for b in row["billion_parameters"]]
        assert row["bundle_gb_fp16"] == [round(b * 2, 1) for b in row["billion_parameters"]]
    names = {c for r in rows for c in r["checkpoints"]}
    assert {"vidore/colpali-v1.3", "vidore/colpali-v1.3-hf", "vidore/colqwen2-v1.0", "vidore/colqwen2.5-v0.2",
            "jinaai/jina-embeddings-v4", "vidore/colSmol-256M", "vidore/colSmol-500M"} <= names
    text = run_cli("info", "--families").stdout
    assert "colidefics3" in text and "prefix-lm attention" in text and "GB fp16" in text


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    """The README's first command, on a smaller page count."""
    out = run_cli("demo", "--pipeline", "--out", tmp_path / "demo")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "demo" / "calib" / "sr_curve.png").exists()
    assert (tmp_path / "demo" / "tiny-colqwen2.sap" / "manifest.json").exists()
    assert "16 pages indexed" in out.stdout
    hits = [line for line in out.stdout.splitlines() if line.startswith("  ") and "page 1" in line]
    assert len(hits) == 3
