"""Air-gapped delivery, proven without a network: the wheelhouse that ``scripts/wheelhouse.py`` builds
installs sapindex in a fresh venv inside a network namespace that has no network at all (``unshare
--net``: only a loopback), and there the demo, ``index`` + ``search`` and ``serve`` (``/health`` on
loopback) run, with no torch, while strace records every socket connection: none may leave the
machine (a DNS lookup counts: ONNX Runtime's telemetry did, until sapindex switched it off)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

OFFLINE = r"""
set -euo pipefail
ip link set lo up
export PIP_CONFIG_FILE=/dev/null PIP_NO_CACHE_DIR=1 HOME="$PWD"
stop_serve() { pkill -f "bin/pytho[n] venv/bin/sapindex serve" || true; }  # strace leaves its tracee behind
trap stop_serve EXIT
./wh/install.sh venv > install.txt
if venv/bin/python -c "import torch" 2>/dev/null; then echo "the runtime wheelhouse installed torch" >&2; exit 1; fi
trace() { strace -f -qq -e trace=connect -o "connects-$1.txt" "${@:2}"; }
trace demo venv/bin/sapindex demo --out demo > demo.txt
venv/bin/python -m sapindex.benchdata.examples --out pages --pages 3
trace index venv/bin/sapindex index pages --out idx --json > index.json
trace search venv/bin/sapindex search idx "annual report" -k 2 --json > hits.json
trace serve venv/bin/sapindex serve idx --port 18765 > serve.txt 2>&1 &
venv/bin/python - <<'PY'
import json, time, urllib.request
for _ in range(300):
    try:
        health = json.load(urllib.request.urlopen("http://127.0.0.1:18765/health", timeout=2))
        break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("serve did not answer /health on loopback")
assert health["status"] == "ok", health
print(json.dumps(health))
PY
"""


def _namespaces() -> str | None:
    """Why this machine cannot run the test, or None."""
    for tool in ("unshare", "ip", "strace"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no network namespaces here ({probe.stderr.strip()})"


@pytest.mark.slow
def test_the_wheelhouse_installs_and_runs_with_no_network(tmp_path):
    why = _namespaces()
    if why:
        pytest.skip(f"air-gapped install not provable here: {why}")
    built = subprocess.run([sys.executable, str(REPO / "scripts" / "wheelhouse.py"), str(tmp_path / "wh"),
                            "--extras", "serve", "--tar"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "wh.tar").stat().st_size > 0
    lock = (tmp_path / "wh" / "requirements.lock").read_text().splitlines()
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+ --hash=sha256:[0-9a-f]{64}", line) for line in lock), lock[:3]
    assert any(line.startswith("onnxruntime==") for line in lock) and any(line.startswith("uvicorn==") for line in lock)
    assert not any(line.startswith(("torch==", "transformers==")) for line in lock)
    run = subprocess.run(["unshare", "--net", "bash", "-c", OFFLINE], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert "top-1" in (tmp_path / "demo.txt").read_text()
    assert '"pages_indexed": 3' in (tmp_path / "index.json").read_text()
    assert '"score"' in (tmp_path / "hits.json").read_text()
    for log in sorted(tmp_path.glob("connects-*.txt")):
        outside = [line for line in log.read_text().splitlines()
                   if re.search(r"sa_family=AF_INET6?\b", line) and not re.search(r'"127\.0\.0\.1"|"::1"', line)]
        assert not outside, f"{log.name}: a connection left the machine: {outside[:2]}"
