"""int8 bundles: ONNX Runtime's quantizers (dynamic and blockwise), validated by the quantized-bundle rules."""

import json
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
from sapindex.exporter.quantize import BLOCK, DEFAULT_SCHEME, quantize_graph
from sapindex.exporter.validate import ValidationFailed
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.defaults import default_bundle_path, default_weights_path, example_pages
from sapindex.runtime.encoder import Encoder


def _op_counts(path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# the ops each scheme's weight products become (and that the other scheme's must not appear)
SCHEME_OPS = {"dynamic": ("MatMulInteger", "DynamicQuantizeLinear"), "blockwise": ("MatMulNBits",)}


def _check_int8(manifest, bundle_dir, scheme="dynamic"):
    assert manifest["dtype"] == "int8" and manifest["validation"]["dtype"] == "int8"
    assert manifest["quantization"]["ops"] == ["MatMul"] and manifest["quantization"]["onnxruntime"]
    assert manifest["quantization"]["scheme"] == scheme
    v = manifest["validation"]
    rules = graph_spec(families.FAMILIES[manifest["family"]].backbone).tolerances["int8"]
    assert v["min_kept_jaccard_at_0.1"] >= rules.kept_jaccard
    assert v["mean_kept_jaccard_at_0.1"] >= rules.kept_jaccard_mean
    assert v["min_cosine_embeddings"] >= rules.cosine
    assert v["tolerance"]["cosine"] == rules.cosine
    for name in manifest["graphs"]:
        ops = _op_counts(bundle_dir / f"{name}.onnx")
        # weight products are int8; the attention products (scores, probabilities x values) stay fp32
        for other, names in SCHEME_OPS.items():
            assert all((ops.get(op, 0) > 0) == (other == scheme) for op in names), (name, ops)
        if name != "tail" or manifest["window"][1] < manifest["n_layers"]:  # a tail without layers: no attention
            assert ops.get("MatMul", 0) > 0
    text = onnx.load(str(bundle_dir / "head.onnx"))
    if scheme == "dynamic":  # [K, N] int8
        assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in text.graph.initializer)
    else:  # MatMulNBits packs 8-bit blocks as [N, K / block, block] bytes
        assert any(t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 3 and t.dims[2] == BLOCK
                   for t in text.graph.initializer)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) >= 32
                   and t.name.endswith("proj.weight") for t in text.graph.initializer)


@pytest.mark.parametrize("family, scheme", [("colqwen2", "blockwise"), ("colqwen2", "dynamic"),
                                            ("colpali", "blockwise"), ("colpali", "dynamic"),
                                            ("colidefics3", "blockwise"), ("colqwen2_5", "blockwise")])
def test_int8_bundle_of_each_backbone(tiny_models, calibrations, bundles, tmp_path, family, scheme):
    manifest = export_bundle(ExportConfig(model=str(tiny_models[family]), calibration=str(calibrations[family]),
                                          out=str(tmp_path / "q.sap"), dtype="int8", int8_scheme=scheme))
    _check_int8(manifest, tmp_path / "q.sap", scheme)
    # the bundle runs like any other, and stays close to the fp32 bundle's vectors
    q, full = Encoder(Bundle.open(tmp_path / "q.sap")), Encoder(Bundle.open(bundles[family][1]))
    page = np.full((196, 252, 3), 255, dtype=np.uint8)
    page[40:60, 20:200] = 0
    a, b = (encoder.encode_pages([Image.fromarray(page)])[0] for encoder in (q, full))
    cosine = (a.embeddings * b.embeddings).sum(axis=1)  # both L2-normalised
    assert a.embeddings.dtype == np.float32 and cosine.min() > 0.98


@pytest.fixture(scope="module")
def micro_int8(tmp_path_factory):
    """The trained micro model exported in each int8 scheme: scheme -> (validation figures, manifest
    or None where the rules refused the bundle, bundle dir)."""
    out = {}
    for scheme in SCHEME_OPS:
        path = tmp_path_factory.mktemp("micro") / f"micro-{scheme}.sap"
        try:
            manifest = export_bundle(ExportConfig(model=str(default_weights_path()),
                                                  calibration=str(default_weights_path() / "calibration.json"),
                                                  out=str(path), dtype="int8", int8_scheme=scheme))
            out[scheme] = manifest["validation"], manifest, path
        except ValidationFailed as refused:
            out[scheme] = refused.report, None, path
    return out


def test_int8_micro_model_keeps_sap_selection(micro_int8):
    """The trained micro model (real attention structure): the default int8 scheme keeps SAP's kept sets."""
    scheme = DEFAULT_SCHEME
    _, manifest, out = micro_int8[scheme]
    assert manifest is not None, "the default int8 scheme was refused on the trained micro model"
    fp32 = Bundle.open(default_bundle_path())
    _check_int8(manifest, out, scheme)
    decoder_bytes = sum(manifest["files"][f"{g}.onnx.data"]["size"] for g in ("head", "tail"))
    assert decoder_bytes < 0.5 * sum(fp32.manifest["files"][f"{g}.onnx.data"]["size"] for g in ("head", "tail"))
    q, full = Encoder(Bundle.open(out)), Encoder(fp32)
    pages = [Image.open(path) for path in example_pages()]
    jaccards = []
    for a, b in zip(q.encode_pages(pages), full.encode_pages(pages), strict=True):
        ours, theirs = sap.top_k(a.centrality, 0.1), sap.top_k(b.centrality, 0.1)
        jaccards.append(sap.jaccard(ours, theirs))
    assert min(jaccards) >= 0.8 and np.mean(jaccards) >= 0.9
    shown = run_cli("inspect", out)  # labelled as an approximation wherever a user looks
    assert shown.returncode == 0, shown.stderr
    assert "int8" in shown.stdout and "an approximation of the fp32 model" in shown.stdout
    assert "smallest cosine 0.9" in shown.stdout and f"{scheme}: int8" in shown.stdout


def test_blockwise_int8_stays_closer_to_fp32_than_dynamic(micro_int8):
    """Why blockwise is the default: finer scales, smaller error against fp32 PyTorch, and kept sets
    at least as close (dynamic's may be refused by the rules: its figures come with the refusal)."""
    dynamic, blockwise = (micro_int8[s][0] for s in ("dynamic", "blockwise"))
    assert 1 - blockwise["min_cosine_embeddings"] < 0.5 * (1 - dynamic["min_cosine_embeddings"])
    assert blockwise["mean_kept_jaccard_at_0.1"] >= dynamic["mean_kept_jaccard_at_0.1"]
    assert blockwise["min_kept_jaccard_at_0.1"] >= dynamic["min_kept_jaccard_at_0.1"]


def test_int8_rules_refuse_a_bundle_that_breaks_them(tiny_models, calibrations, tmp_path, monkeypatch):
    """A cosine floor above what int8 reaches fails the export, names the rule, and writes nothing."""
    monkeypatch.setitem(graph_spec("qwen2_vl").tolerances, "int8",
                        Tolerance(embeddings=None, kept_jaccard=0.9, kept_jaccard_mean=0.95, cosine=1.5))
    with pytest.raises(SapIndexError, match=r"export validation failed \(int8: cosine\): .*smallest cosine 0\.9.*"
                                            r"try --int8-scheme blockwise$"):
        export_bundle(ExportConfig(model=str(tiny_models["colqwen2"]), calibration=str(calibrations["colqwen2"]),
                                   out=str(tmp_path / "q.sap"), dtype="int8", int8_scheme="dynamic"))
    assert list(tmp_path.iterdir()) == []
    # `export --json` prints the refused bundle's figures for scripts, and still exits as an error
    from click.testing import CliRunner

    from sapindex.cli.main import cli

    result = CliRunner().invoke(cli, ["export", "--model", str(tiny_models["colqwen2"]), "--calibration",
                                      str(calibrations["colqwen2"]), "--out", str(tmp_path / "q.sap"),
                                      "--dtype", "int8", "--json"])
    assert isinstance(result.exception, ValidationFailed)
    assert "try --int8-scheme" not in str(result.exception)  # the default is already the closer scheme
    printed = json.loads(result.stdout)
    assert printed["validation"]["failed"] == ["cosine"] and printed["error"].startswith("export validation failed")
    assert 0.9 < printed["validation"]["min_cosine_embeddings"] < 1.0
    assert list(tmp_path.iterdir()) == []


def test_int8_scheme_needs_int8(tiny_models, calibrations, tmp_path):
    shown = run_cli("export", "--model", tiny_models["colqwen2"], "--calibration", calibrations["colqwen2"],
                    "--out", tmp_path / "b.sap", "--int8-scheme", "blockwise")
    assert shown.returncode == 2
    assert shown.stderr.strip() == "error: --int8-scheme blockwise: applies to --dtype int8 only (this export is fp32)"


def _graph_content(path):
    """A graph's nodes (order aside) and its initializers' values."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = sorted((n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node)
    return nodes, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _ort_single_pass(path, out, scheme):
    """ONNX Runtime's own quantizer over the whole graph at once, with the scheme's settings."""
    if scheme == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(path, out, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(str(path))
    ONNXModel(model).replace_gemm_with_matmul()  # the step sapindex shares with dynamic mode, for both schemes
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=BLOCK, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    onnx.save(quantizer.model.model, str(out))


@pytest.mark.parametrize("scheme", list(SCHEME_OPS))
@pytest.mark.parametrize("graph", ["vision", "head"])
def test_quantizing_in_passes_makes_the_graph_ort_makes(tmp_path, graph, scheme):
    """One pass per group of products (the smallest parts possible) ends where ORT's single pass does."""
    source = default_bundle_path()
    for side in ("ours", "ort"):
        (tmp_path / side).mkdir()
        for name in (f"{graph}.onnx", f"{graph}.onnx.data"):
            shutil.copy(source / name, tmp_path / side / name)
    parts = []
    quantize_graph(tmp_path / "ours" / f"{graph}.onnx", scheme, parts.append, part_bytes=1)
    _ort_single_pass(tmp_path / "ort" / f"{graph}.onnx", tmp_path / "ort" / "q.onnx", scheme)
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
quantize_graph(Path(sys.argv[1]), sys.argv[2], part_bytes=32 << 20)
print(peak() - before)
"""


@pytest.mark.parametrize("scheme", list(SCHEME_OPS))
def test_quantizing_holds_one_part_of_the_weights_not_the_graph(tmp_path, scheme):
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
    child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), scheme], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    growth, fp32 = int(child.stdout.split()[-1]), count * size * size * 4
    assert growth < 0.6 * fp32, f"peak grew {growth / 1e6:.0f} MB for {fp32 / 1e6:.0f} MB of weights"
    model = onnx.load(str(path), load_external_data=False)  # and the result is whole: every product int8
    assert sum(n.op_type == SCHEME_OPS[scheme][0] for n in model.graph.node) == count
    assert not any(n.op_type == "MatMul" for n in model.graph.node)
