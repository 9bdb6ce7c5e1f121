"""PaliGemma / ColPali, export: the graph inputs export validation feeds against what the torch-free runtime builds.

Both flavours (``colpali``, ``colpali_hf``); fixtures in this folder's conftest.py.
"""

import numpy as np
import pytest
import torch
from helpers import COLPALI_FLAVOURS as FLAVOURS
from helpers import QUERIES
from helpers import colpali_pages as _pages


@pytest.mark.parametrize("name", FLAVOURS)
def test_graph_inputs_match_the_runtime(colpali_adapters, runtimes, name):
    """What export validation feeds the graphs from the processor's tensors (``graph_inputs``:
    ``prefix_mask`` from ``token_type_ids == 0``, or all 0 without them) is what the torch-free
    preprocessor builds from the text alone."""
    adapter, runtime = colpali_adapters[name], runtimes[name]
    for inputs, batch in ((adapter.page_inputs(_pages()[:2]), runtime.pages(_pages()[:2])),
                          (adapter.query_inputs(QUERIES), runtime.queries(QUERIES))):
        feed = adapter.graph_inputs(inputs)
        assert feed["prefix_mask"].dtype == torch.int64
        for key in ("input_ids", "attention_mask", "prefix_mask"):
            np.testing.assert_array_equal(feed[key].numpy(), batch[key], err_msg=key)
    extras = runtime.query_extras(runtime.queries(QUERIES), hidden=64)
    assert list(extras) == ["image_embeds"] and extras["image_embeds"].shape == (len(QUERIES), 1, 64)
