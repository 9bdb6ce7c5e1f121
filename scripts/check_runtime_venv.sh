#!/usr/bin/env bash
# Proves the runtime claim end to end: a fresh venv with only `pip install .` (no torch, no
# transformers) indexes and searches with a bundle exported elsewhere.
# Usage: scripts/check_runtime_venv.sh BUNDLE_DIR   (e.g. demo/tiny-colqwen2.sap from `sapindex demo`)
set -euo pipefail
bundle=$(realpath "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repo"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null || "$work/venv/bin/python" -c "import transformers" 2>/dev/null; then
  echo "FAIL: the runtime install pulled in torch or transformers" >&2; exit 1
fi
mkdir -p "$work/docs"
"$work/venv/bin/python" - "$work/docs" <<'PY'
import sys
from sapindex.synthetic import write_pairs
write_pairs(sys.argv[1], n=3, seed=2)
PY
cd "$work"
"$work/venv/bin/sapindex" index "$bundle" docs/pages --out idx --json > index.json
"$work/venv/bin/sapindex" search idx "total revenue" -k 2 --json > hits.json
"$work/venv/bin/python" - <<'PY'
import json, sys
summary, hits = json.load(open("index.json")), json.load(open("hits.json"))
assert summary["pages_indexed"] == 3, summary
assert len(hits) == 2 and all({"path", "page", "score"} <= set(h) for h in hits), hits
assert "torch" not in sys.modules
print("runtime-only venv: indexed", summary["pages_indexed"], "pages and searched them without torch")
PY
