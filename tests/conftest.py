"""Shared fixtures: tiny random checkpoints and generated pairs, built once per test session, offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

# Session fixtures that calibrate or export every tiny family (minutes on 2 cores): a test that
# uses one is `slow` without saying so, and `python -m pytest -m "not slow"` stays a quick loop.
SLOW_FIXTURES = {"calibrations", "bundles"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{family: checkpoint dir} for every family with a tiny factory."""
    from sapindex.testing.tiny import TINY_FAMILIES, build_tiny
    from sapindex.testing.tiny_jina import build_tiny_jina

    root = tmp_path_factory.mktemp("tiny")
    models = {family: build_tiny(root / family, family) for family in TINY_FAMILIES}
    models["jina_v4"] = build_tiny_jina(root / "jina_v4")
    return models


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory):
    from sapindex.testing.toy_pages import write_pairs

    return write_pairs(tmp_path_factory.mktemp("pairs"), n=6, seed=1)


@pytest.fixture(scope="session")
def adapters(tiny_models):
    from sapindex.models.adapters import load_adapter

    return {family: load_adapter(path) for family, path in tiny_models.items()}


@pytest.fixture(scope="session")
def calibrations(tiny_models, pairs_file, tmp_path_factory):
    """{family: calibration.json}: every tiny model calibrated once per session (default settings)."""
    from sapindex.testing.pipeline import calibrate

    return {family: calibrate(model, pairs_file, tmp_path_factory.mktemp(f"calib-{family}"))[1]
            for family, model in tiny_models.items()}


@pytest.fixture(scope="session")
def bundles(tiny_models, calibrations, tmp_path_factory):
    """{family: (manifest, bundle dir)}: every tiny model calibrated and exported once per session."""
    from sapindex.testing.pipeline import export

    root = tmp_path_factory.mktemp("bundles")
    return {family: (export(tiny_models[family], calibrations[family], root / f"{family}.sap")[0],
                     root / f"{family}.sap")
            for family in tiny_models}


@pytest.fixture
def pil_resize_horizontal_first(monkeypatch):
    """Make ``PIL.Image.resize`` do its two passes horizontal first, as ``runtime.preprocess.base.resize_hv``.

    Pillow >= 13 may resize vertically first; pinning the order in transformers' PIL backends
    isolates what the runtime controls: rescale/normalise rounding, dtype, layout and padding.
    """
    from PIL import Image

    original = Image.Image.resize

    def horizontal_first(self, size, resample=None, box=None, reducing_gap=None):
        if box is None and reducing_gap is None and size[0] != self.width and size[1] != self.height:
            self = original(self, (size[0], self.height), resample)
        return original(self, size, resample, box, reducing_gap)

    monkeypatch.setattr(Image.Image, "resize", horizontal_first)
