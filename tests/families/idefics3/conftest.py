"""Idefics3 / ColIdefics3 fixtures: the tiny checkpoint, its adapter and the bundle-built runtime preprocessor.

The tiny checkpoint is random (64 px tiles, 4 px patches, pixel shuffle x4 -> 4x4 tokens per tile,
pages to 192 px -> up to 3x3 tiles + global; Llama 6 layers, GQA 4/2 heads). Built once per session.
"""

import pytest
from helpers import idefics3_runtime as _runtime


def _model_info(path):
    """The checkpoint as the registry sees it."""
    from sapindex.families import inspect_model_dir

    info = inspect_model_dir(path)
    assert info.family.name == "colidefics3"
    return info


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    from sapindex.testing.tiny_idefics3 import build_tiny_colidefics3

    return build_tiny_colidefics3(tmp_path_factory.mktemp("tiny") / "colidefics3")


@pytest.fixture(scope="session")
def adapter(checkpoint):
    from sapindex.models.base import resolve_device, resolve_dtype
    from sapindex.models.idefics3 import Idefics3Adapter

    return Idefics3Adapter.load(_model_info(checkpoint), device=resolve_device("cpu"), dtype=resolve_dtype("float32"))


@pytest.fixture(scope="session")
def runtime(adapter, tmp_path_factory):
    return _runtime(adapter.processor, tmp_path_factory.mktemp("runtime"))
