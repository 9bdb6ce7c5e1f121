"""The memory-lean export path: PyTorch's weights are freed once the graphs are written, and
ONNX Runtime maps the bundle's weights instead of copying them."""

import gc
import weakref

from sapindex.exporter.export import _write_graphs
from sapindex.models.adapters import load_adapter
from sapindex.runtime.session import session_options


def test_written_graphs_keep_no_pytorch_weight_alive(tiny_models, tmp_path):
    """onnxscript's rewrite rules remember the last graph they matched, with every weight in it;
    export drops that reference, so the model's memory returns once the adapter is released."""
    adapter = load_adapter(tiny_models["colqwen2"])
    weights = [weakref.ref(p) for p in adapter.model.parameters()]
    manifest = _write_graphs(adapter, (1, 3), tmp_path, 18, "fp32", lambda _msg: None)
    assert (tmp_path / "head.onnx").exists() and manifest["window"] == [1, 3]
    adapter = None
    gc.collect()
    alive = [w() for w in weights if w() is not None]
    assert not alive, f"{len(alive)} of {len(weights)} weights still referenced after export"


def test_sessions_map_weights_instead_of_packing_copies():
    """No pre-packing (weights mapped from the bundle's files) and no CPU arena, as measured in
    bench/session_options.py."""
    options = session_options(threads=2)
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert options.enable_cpu_mem_arena is False and options.intra_op_num_threads == 2
    # int8 bundles pre-pack: MatMulNBits is only fast on weights packed at load
    packed = session_options(threads=2, dtype="int8")
    assert packed.get_session_config_entry("session.disable_prepacking") == "0"
    assert packed.enable_cpu_mem_arena is False
