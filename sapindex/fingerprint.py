"""Fingerprints of model files and bundles, in plain Python (no torch).

A calibration, a bundle and an index must be traceable to the exact weights they came from
without hashing gigabytes: the fingerprint is the sha256 of the weight files' relative names
and byte sizes, which changes whenever a checkpoint is swapped, re-sharded or re-saved.
:func:`sha256_file` is the one content hash: a bundle's files and an indexed document's bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".data")


def weight_files(model_dir: Path) -> list[Path]:
    """Weight files under ``model_dir``, sorted by relative path."""
    model_dir = Path(model_dir)
    found = [p for p in model_dir.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(model_dir).as_posix())


def model_fingerprint(model_dir: Path) -> dict:
    """``{"sha256": ..., "files": [{"name", "size"}...]}`` over the weight files of ``model_dir``."""
    model_dir = Path(model_dir)
    files = [{"name": p.relative_to(model_dir).as_posix(), "size": p.stat().st_size} for p in weight_files(model_dir)]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f['name']}\0{f['size']}\n".encode())
    return {"sha256": digest.hexdigest(), "files": files}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's content, streamed ``chunk`` bytes at a time (raises OSError)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
