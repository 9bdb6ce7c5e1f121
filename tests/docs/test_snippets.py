"""The manual's code blocks marked ``<!-- tested -->`` run as written, so the docs cannot drift from
the code: a Python block in a fresh interpreter, a bash block under ``bash -euo pipefail``, each in
an empty directory, with this interpreter's ``sapindex`` on PATH and no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
MARK = re.compile(r"<!-- tested -->\n```(python|bash)\n(.*?)```", re.S)


def marked_blocks() -> list[tuple[str, str, str]]:
    """(page:line, language, code) of every marked block."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in MARK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{page.relative_to(DOCS)}:{line}", m.group(1), m.group(2)))
    return out


def test_the_manual_marks_blocks_to_run():
    assert any(lang == "bash" for _, lang, _ in marked_blocks())


@pytest.mark.parametrize("where,language,code", marked_blocks(), ids=[w for w, _, _ in marked_blocks()])
def test_tested_block_runs(where, language, code, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{where}: the block failed\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
