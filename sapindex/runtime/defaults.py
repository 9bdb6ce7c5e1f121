"""The built-in default model and example pages, shipped inside the package.

Why: ``pip install sapindex`` on an air-gapped machine must index and search with no bundle
argument and no download. The default is the micro retriever (a ColQwen2 trained from scratch by
``python -m sapindex.micro.train``, see README) exported as a regular bundle; its weights
ship beside it so that the torch side can re-export or re-calibrate it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from sapindex.errors import SapIndexError

__all__ = ["DEFAULT_MODEL", "default_bundle_path", "default_weights_path", "example_pages", "example_queries"]

DEFAULT_MODEL = "micro-colqwen2"


def _assets() -> Path:
    return Path(str(resources.files("sapindex") / "assets"))


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise SapIndexError(f"{path}: the built-in {what} is missing from this installation "
                            f"(reinstall sapindex, or pass a bundle explicitly)")
    return path


def default_bundle_path() -> Path:
    """The shipped bundle of the micro retriever (fp32, CPU or CUDA)."""
    return _existing(_assets() / f"{DEFAULT_MODEL}.sap", "bundle")


def default_weights_path() -> Path:
    """The shipped PyTorch checkpoint of the micro retriever (for export / calibrate)."""
    return _existing(_assets() / DEFAULT_MODEL, "model weights")


def example_pages() -> list[Path]:
    """The demo's example pages (held-out rendered pages, PNG), in name order."""
    return sorted(_existing(_assets() / "examples", "example pages").glob("*.png"))


def example_queries() -> list[dict]:
    """``[{"query": str, "page": file name}]``: a query read off each example page."""
    return json.loads((_existing(_assets() / "examples", "example pages") / "queries.json").read_text())
