"""PaliGemma / ColPali fixtures: both tiny checkpoints, their adapters and the bundle-built runtime preprocessors.

``colpali``: colpali-engine ``ColPali`` + its ``ColPaliProcessor``; ``colpali_hf``: transformers
``ColPaliForRetrieval`` + transformers' ``ColPaliProcessor``. Both tiny checkpoints are random
(SigLIP 112 px -> 8x8 image tokens, Gemma 6 layers with one KV head).
"""

import json

import pytest
from helpers import COLPALI_FLAVOURS as FLAVOURS

from sapindex.runtime.preprocess.paligemma import PaliGemmaParams, PaliGemmaPreprocessor


@pytest.fixture(scope="session")
def colpali_dirs(tiny_models):
    return {name: tiny_models[name] for name in FLAVOURS}


@pytest.fixture(scope="session")
def colpali_adapters(colpali_dirs):
    """Loaded through the registry and ``load_adapter``, as every command loads them."""
    from sapindex.models.adapters import load_adapter
    from sapindex.models.paligemma import PaliGemmaAdapter

    adapters = {name: load_adapter(path) for name, path in colpali_dirs.items()}
    assert all(type(a) is PaliGemmaAdapter and a.info.family.name == name for name, a in adapters.items())
    return adapters


@pytest.fixture(scope="session")
def runtimes(colpali_adapters, tmp_path_factory):
    """{flavour: runtime preprocessor} built the bundle's way: params and tokenizer.json from the live processor."""
    from sapindex.exporter.preprocessing_params import paligemma_params, write_tokenizer_json

    out = {}
    for name, adapter in colpali_adapters.items():
        params = PaliGemmaParams.from_dict(json.loads(json.dumps(paligemma_params(adapter.processor))))
        tokenizer = write_tokenizer_json(adapter.processor, tmp_path_factory.mktemp(name) / "tokenizer.json")
        out[name] = PaliGemmaPreprocessor(params, tokenizer)
    return out

