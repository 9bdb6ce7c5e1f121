#!/usr/bin/env bash
# Proves the runtime claim end to end: a fresh venv with only `pip install .` (no torch, no
# transformers) runs the README's demo on the built-in micro model, and indexes and searches
# generated pages with it, with no bundle argument.
# Usage: scripts/check_runtime_venv.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repo"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null || "$work/venv/bin/python" -c "import transformers" 2>/dev/null; then
  echo "FAIL: the runtime install pulled in torch or transformers" >&2; exit 1
fi
cd "$work"
"$work/venv/bin/sapindex" demo --out demo > demo.txt
test -s demo/kept-patches.png
mkdir -p docs
"$work/venv/bin/python" - docs <<'PY'
import sys
from sapindex.testing.toy_pages import write_pairs
write_pairs(sys.argv[1], n=3, seed=2)
PY
"$work/venv/bin/sapindex" index docs/pages --out idx --json > index.json
"$work/venv/bin/sapindex" search idx "total revenue" -k 2 --json > hits.json
"$work/venv/bin/python" - <<'PY'
import json, sys
summary, hits = json.load(open("index.json")), json.load(open("hits.json"))
assert summary["pages_indexed"] == 3, summary
assert len(hits) == 2 and all({"path", "page", "score"} <= set(h) for h in hits), hits
assert "torch" not in sys.modules
print("runtime-only venv: demo ran; indexed", summary["pages_indexed"], "pages and searched them without torch")
PY
grep "^top-1" demo.txt
