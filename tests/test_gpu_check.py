"""``bench/gpu_check.py``, the one script a lent GPU machine runs, on the CPU provider: it must not rot
between the days a GPU is lent. On the CPU its device and reference runs are the same provider, so the
kept sets must be identical and the vectors equal; the Ray run must keep what the local run keeps."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_provider(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--pages", "3",
                           "--batches", "1,2", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "CPUExecutionProvider" in report["providers"] and report["device"] == "cpu"
    (micro,) = report["bundles"]
    assert micro["same_kept_sets"] == [True, True] and micro["min_cosine"] > 0.9999
    assert set(micro["pages_per_s"]) == {"1", "2"} and all(v > 0 for v in micro["pages_per_s"].values())
    assert micro["query_ms_p50"] > 0 and micro["peak_rss_mb"] > 0 and micro["peak_gpu_mb"] is None
    assert report["ray"]["pages"] == 3 and report["ray"]["same_kept_sets"] is True
