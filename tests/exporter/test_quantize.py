"""int8 bundles: ONNX Runtime's dynamic quantization, validated by the quantized-bundle rules."""

import shutil

import numpy as np
import onnx
import pytest
from helpers import run_cli
from PIL import Image

from sapindex import families, sap
from sapindex.errors import SapIndexError
from sapindex.exporter.export import ExportConfig, export_bundle
from sapindex.exporter.graphs import Tolerance, graph_spec
from sapindex.exporter.quantize import quantize_graph
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, default_weights_path, example_pages
from sapindex.runtime.encoder import Encoder


def _op_counts(path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _check_int8(manifest, bundle_dir, fp32_manifest):
    assert manifest["dtype"] == "int8" and manifest["validation"]["dtype"] == "int8"
    assert manifest["quantization"]["ops"] == ["MatMul"] and manifest["quantization"]["onnxruntime"]
    v = manifest["validation"]
    rules = graph_spec(families.FAMILIES[manifest["family"]].backbone).tolerances["int8"]
    assert v["min_kept_jaccard_at_0.1"] >= rules.kept_jaccard
    assert v["mean_kept_jaccard_at_0.1"] >= rules.kept_jaccard_mean
    assert v["min_cosine_embeddings"] >= rules.cosine
    assert v["tolerance"]["cosine"] == rules.cosine
    for name in ("vision", "text"):
        ops = _op_counts(bundle_dir / f"{name}.onnx")
        # weight products are int8; the attention products (scores, probabilities x values) stay fp32
        assert ops.get("MatMulInteger", 0) > 0 and ops.get("DynamicQuantizeLinear", 0) > 0
        assert ops.get("MatMul", 0) > 0
    text = onnx.load(str(bundle_dir / "text.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in text.graph.initializer)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) >= 32
                   and t.name.endswith("proj.weight") for t in text.graph.initializer)


@pytest.mark.parametrize("family", ["colqwen2", "colpali", "colidefics3"])
def test_int8_bundle_of_each_backbone(tiny_models, calibrations, bundles, tmp_path, family):
    manifest = export_bundle(ExportConfig(model=str(tiny_models[family]), calibration=str(calibrations[family]),
                                          out=str(tmp_path / "q.sap"), dtype="int8"))
    _check_int8(manifest, tmp_path / "q.sap", bundles[family][0])
    # the bundle runs like any other, and stays close to the fp32 bundle's vectors
    q, full = Encoder(Bundle.open(tmp_path / "q.sap")), Encoder(Bundle.open(bundles[family][1]))
    page = np.full((196, 252, 3), 255, dtype=np.uint8)
    page[40:60, 20:200] = 0
    a, b = (encoder.encode_pages([Image.fromarray(page)])[0] for encoder in (q, full))
    cosine = (a.embeddings * b.embeddings).sum(axis=1)  # both L2-normalised
    assert a.embeddings.dtype == np.float32 and cosine.min() > 0.98


def test_int8_micro_model_keeps_sap_selection(tmp_path):
    """The trained micro model (real attention structure): int8 keeps SAP's kept sets close to fp32."""
    out = tmp_path / "micro-int8.sap"
    manifest = export_bundle(ExportConfig(model=str(default_weights_path()),
                                          calibration=str(default_weights_path() / "calibration.json"),
                                          out=str(out), dtype="int8"))
    fp32 = Bundle.open(default_bundle_path())
    _check_int8(manifest, out, fp32.manifest)
    assert manifest["files"]["text.onnx.data"]["size"] < 0.5 * fp32.manifest["files"]["text.onnx.data"]["size"]
    q, full = Encoder(Bundle.open(out)), Encoder(fp32)
    pages = [Image.open(path) for path in example_pages()]
    jaccards = []
    for a, b in zip(q.encode_pages(pages), full.encode_pages(pages)):
        ours, theirs = sap.top_k(a.centrality, 0.1), sap.top_k(b.centrality, 0.1)
        jaccards.append(sap.jaccard(ours, theirs))
    assert min(jaccards) >= 0.8 and np.mean(jaccards) >= 0.9
    shown = run_cli("inspect", out)  # labelled as an approximation wherever a user looks
    assert shown.returncode == 0, shown.stderr
    assert "int8" in shown.stdout and "an approximation of the fp32 model" in shown.stdout
    assert "smallest cosine 0.9" in shown.stdout


def test_int8_rules_refuse_a_bundle_that_breaks_them(tiny_models, calibrations, tmp_path, monkeypatch):
    """A cosine floor above what int8 reaches fails the export, names the rule, and writes nothing."""
    monkeypatch.setitem(graph_spec("qwen2_vl").tolerances, "int8",
                        Tolerance(embeddings=None, kept_jaccard=0.9, kept_jaccard_mean=0.95, cosine=1.5))
    with pytest.raises(SapIndexError, match=r"export validation failed \(int8: cosine\): .*smallest cosine 0\.9"):
        export_bundle(ExportConfig(model=str(tiny_models["colqwen2"]), calibration=str(calibrations["colqwen2"]),
                                   out=str(tmp_path / "q.sap"), dtype="int8"))
    assert list(tmp_path.iterdir()) == []


def _graph_content(path):
    """A graph's nodes (order aside) and its initializers' values."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = sorted((n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node)
    return nodes, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("graph", ["vision", "text"])
def test_quantizing_in_passes_makes_the_graph_quantize_dynamic_makes(tmp_path, graph):
    """One pass per group of products (the smallest parts possible) ends where ORT's single pass does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = default_bundle_path()
    for side in ("ours", "ort"):
        (tmp_path / side).mkdir()
        for name in (f"{graph}.onnx", f"{graph}.onnx.data"):
            shutil.copy(source / name, tmp_path / side / name)
    parts = []
    quantize_graph(tmp_path / "ours" / f"{graph}.onnx", parts.append, part_bytes=1)
    quantize_dynamic(tmp_path / "ort" / f"{graph}.onnx", tmp_path / "ort" / "q.onnx", op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=True,
                     extra_options={"MatMulConstBOnly": True})
    assert len(parts) > 5  # it did run in passes
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [f"{graph}.onnx", f"{graph}.onnx.data"]
    ours, theirs = _graph_content(tmp_path / "ours" / f"{graph}.onnx"), _graph_content(tmp_path / "ort" / "q.onnx")
    assert ours[0] == theirs[0]
    assert ours[1].keys() == theirs[1].keys()
    assert all(np.array_equal(ours[1][name], theirs[1][name]) for name in ours[1])


# peak RSS from VmHWM: ru_maxrss would start at the forking pytest process's peak and hide growth
MEMORY_CHILD = """
import sys
from pathlib import Path
def peak():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) * 1024
import onnx, onnxruntime.quantization
from sapindex.exporter.quantize import quantize_graph
before = peak()
quantize_graph(Path(sys.argv[1]), part_bytes=32 << 20)
print(peak() - before)
"""


def test_quantizing_holds_one_part_of_the_weights_not_the_graph(tmp_path):
    """400 MB of fp32 weights quantize with far less memory than the graph (ORT's single pass: ~3x)."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    rng, size, count = np.random.default_rng(0), 1024, 96
    weights = [numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), f"w{i}")
               for i in range(count)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]) for i in range(count)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, size])],
                              [helper.make_tensor_value_info(f"h{count - 1}", TensorProto.FLOAT, [None, size])],
                              weights)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path),
              save_as_external_data=True, location="chain.onnx.data")
    del weights, graph
    child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    growth, fp32 = int(child.stdout.split()[-1]), count * size * size * 4
    assert growth < 0.6 * fp32, f"peak grew {growth / 1e6:.0f} MB for {fp32 / 1e6:.0f} MB of weights"
    model = onnx.load(str(path), load_external_data=False)  # and the result is whole: every product int8
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) == count
    assert not any(n.op_type == "MatMul" for n in model.graph.node)
