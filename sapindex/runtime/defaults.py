"""The built-in default model and example pages, shipped inside the package.

Why: ``pip install sapindex`` on an air-gapped machine must index and search with no bundle
argument and no download. The default is the micro retriever (a ColQwen2 trained from scratch by
``python -m sapindex.micro.train``, see docs/concepts/micro-model.md) exported as a regular bundle; its weights
ship beside it so that the torch side can re-export or re-calibrate it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from sapindex.errors import SapIndexError
from sapindex.runtime.bundle import is_bundle_dir

__all__ = ["DEFAULT_MODEL", "default_bundle_path", "default_weights_path", "example_pages", "example_queries",
           "resolve_bundle"]

DEFAULT_MODEL = "micro-colqwen2"


def _assets() -> Path:
    return Path(str(resources.files("sapindex") / "assets"))


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise SapIndexError(f"{path}: the built-in {what} is missing from this installation "
                            f"(reinstall sapindex, or pass a bundle explicitly)")
    return path


def default_bundle_path() -> Path:
    """The shipped bundle of the micro retriever (fp32, CPU or CUDA).

    Returns:
        The bundle directory inside the installed package (``assets/micro-colqwen2.sap``).

    Raises:
        SapIndexError: The bundle is missing from this installation.
    """
    return _existing(_assets() / f"{DEFAULT_MODEL}.sap", "bundle")


def resolve_bundle(inputs: list[str], bundle: str | Path | None = None) -> tuple[Path, list[str]]:
    """``(bundle, inputs)`` for ``sapindex index [BUNDLE] INPUTS...``: ``bundle`` if given, else a first
    input that is a bundle directory (when more inputs follow), else the built-in default."""
    inputs = list(inputs)
    if bundle is not None:
        return Path(bundle), inputs
    if len(inputs) > 1 and is_bundle_dir(inputs[0]):
        return Path(inputs[0]), inputs[1:]
    return default_bundle_path(), inputs


def default_weights_path() -> Path:
    """The shipped PyTorch checkpoint of the micro retriever (for export / calibrate)."""
    return _existing(_assets() / DEFAULT_MODEL, "model weights")


def example_pages() -> list[Path]:
    """The demo's example pages (held-out rendered pages, PNG), in name order."""
    return sorted(_existing(_assets() / "examples", "example pages").glob("*.png"))


def example_queries() -> list[dict]:
    """``[{"query": str, "page": file name}]``: a query read off each example page."""
    return json.loads((_existing(_assets() / "examples", "example pages") / "queries.json").read_text())
