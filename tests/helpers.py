"""Helpers that several test modules share (importable: pyproject puts tests/ on the path)."""

import subprocess
import sys


def run_cli(*args) -> subprocess.CompletedProcess:
    """``sapindex ARGS`` in a fresh interpreter, as a user runs it: exit code, stdout, stderr."""
    return subprocess.run([sys.executable, "-m", "sapindex.cli", *map(str, args)], capture_output=True, text=True)
