"""int8 bundles: ONNX Runtime's quantization of the exported fp32 graphs, in passes.

Why int8: on a CPU, fp32 indexing at real size is bound by arithmetic, so only cheaper arithmetic
makes it faster (measured: docs/benchmarks/real-size.md). Two schemes, both ONNX
Runtime's own quantizers, both only for matrix products with a constant weight (the attention
products, and so the window's attention probabilities that SAP's centrality is computed from,
stay fp32):

- ``blockwise`` (the default): ``MatMulNBitsQuantizer`` with 8 bits. Weights int8 with one
  scale per block of ``BLOCK`` input rows; activations quantized per token and block inside the
  kernel (``MatMulNBits``, ``accuracy_level`` 4). Finer scales follow the outliers that one scale
  per tensor flattens: on the trained micro model it keeps SAP's selection where dynamic int8
  does not meet the int8 rules on held-out pages.
- ``dynamic`` (the fastest): ``ONNXQuantizer`` in dynamic mode, the class ``quantize_dynamic``
  drives, with its settings. Weights int8 with one scale per output channel; activations
  quantized per call with one scale for the whole tensor (``MatMulInteger``).

Both measured (selection, speed): bench/RESULTS.md, "int8 schemes".

Either result is an approximation, validated by the int8 rules of ``graphs.TOLERANCES``
(kept-set Jaccard and embedding cosine against fp32 PyTorch) and labelled in the manifest
(``dtype``, ``quantization``).

Why in passes: ``quantize_dynamic`` loads every weight of a graph, then copies the whole model to
re-run shape inference, so it needs several times a graph's fp32 size in memory; a 3.75 B model's
text graph (~11 GB) would not quantize in 24 GB. Here the quantizer runs once per part of at
most ``PART_BYTES`` of weights: only that part is in memory; every other weight stays in its file
and stands in as a graph input of the same type and shape, and the int8 weights a pass makes are
appended to the new data file at once. Products that share an input (q/k/v, gate/up) or a weight
are quantized in the same pass, so each activation is quantized once, as in a single pass: the
graph is the one ``quantize_dynamic`` (or ``MatMulNBitsQuantizer``) makes in one pass (tested).
A pass holds its part a few times over (loaded, and ORT's shape-inference copy), so the peak is
a small multiple of one part whatever the graph's size.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

BLOCK = 128  # blockwise: input rows per weight scale (ORT's default; bench/RESULTS.md, "int8 schemes")
BITS = 8  # blockwise: bits per weight (4 breaks the int8 rules: bench/RESULTS.md, "int8 schemes")
DEFAULT_SCHEME = "blockwise"  # why: module docstring, and bench/RESULTS.md "int8 schemes"
SCHEMES = {
    "blockwise": {"method": f"onnxruntime.quantization (MatMulNBitsQuantizer, {BITS} bits, symmetric), in passes",
                  "weights": f"int8, per block of {BLOCK} input rows",
                  "activations": f"int8, dynamic (per token and block of {BLOCK}, accuracy_level 4)",
                  "ops": ["MatMul"], "attention_products": "fp32"},
    "dynamic": {"method": "onnxruntime.quantization (dynamic, ONNXQuantizer), in passes",
                "weights": "int8, per output channel", "activations": "uint8, dynamic (per call, per tensor)",
                "ops": ["MatMul"], "attention_products": "fp32"},
}
PART_BYTES = 256 << 20  # fp32 weights in memory per pass
EXTERNAL_MIN_BYTES = 1024  # tensors this size and up live in the data file (onnx's own threshold)


def quantize_graph(path: Path, scheme: str = DEFAULT_SCHEME, log: Callable[[str], None] = lambda _msg: None,
                   part_bytes: int = PART_BYTES) -> None:
    """Replace the fp32 graph at ``path`` (and its ``.data`` file) by its int8 form (``SCHEMES``), in place."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.quant_utils import update_opset_version

    model = update_opset_version(onnx.load(str(path), load_external_data=False), QuantType.QInt8)
    _name_nodes(model.graph)
    source = str(path.parent)
    # ORT's first step in dynamic mode (Gemm -> MatMul, weights transposed), with only those weights loaded
    gemm_inputs = {name for node in model.graph.node if node.op_type == "Gemm" for name in node.input[1:]}
    _load(model.graph, gemm_inputs, source)
    ONNXModel(model).replace_gemm_with_matmul()
    parts = list(_parts(model.graph, part_bytes))
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=path.parent) as tmp:
        with _DataFile(Path(tmp) / (path.name + ".data")) as data:
            for i, (nodes, weights) in enumerate(parts, 1):
                log(f"quantizing {path.name} to int8 ({scheme}): part {i}/{len(parts)} ({len(nodes)} matrix products)")
                _load(model.graph, weights, source)
                model = _quantize_pass(model, nodes, scheme)
                later = {w for _, ws in parts[i:] for w in ws}  # (the Gemm step's transposed weights wait)
                data.store_loaded(model.graph, keep=later)
                model = _fresh(model)
            data.store_loaded(model.graph, keep=set())
            data.copy_rest(model.graph, source)
        _drop_unused_initializers(model.graph)
        onnx.save(model, str(Path(tmp) / path.name))  # only the structure: every weight is in the data file
        for old in (path, path.with_name(path.name + ".data")):
            old.unlink(missing_ok=True)
        for new in Path(tmp).iterdir():
            shutil.move(str(new), path.parent / new.name)


def quantization_record(scheme: str) -> dict:
    """What the manifest says about how an int8 bundle was made (with the ONNX Runtime version)."""
    import onnxruntime

    return {"scheme": scheme, **SCHEMES[scheme], "onnxruntime": onnxruntime.__version__}


def _name_nodes(graph) -> None:
    """Give every node a unique name: a pass selects the products it quantizes by name."""
    taken = {node.name for node in graph.node if node.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_sapindex_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _nbytes(tensor) -> int:
    from onnx.helper import tensor_dtype_to_np_dtype

    return math.prod(tensor.dims) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _parts(graph, part_bytes: int) -> Iterator[tuple[list[str], set[str]]]:
    """(node names, weight names) per pass: whole groups of products sharing an input or a weight."""
    import onnx

    initializers = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    products = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers
                and n.input[0] not in initializers]
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(key):
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for node in products:  # union of the activation and the weight each product reads
        parent[root(("activation", node.input[0]))] = root(("weight", node.input[1]))
    groups: dict[tuple[str, str], list] = {}
    for node in products:
        groups.setdefault(root(("weight", node.input[1])), []).append(node)
    nodes: list[str] = []
    weights: set[str] = set()
    size = 0
    for group in groups.values():
        new = {n.input[1] for n in group} - weights
        added = sum(_nbytes(initializers[w]) for w in new)
        if nodes and size + added > part_bytes:
            yield nodes, weights
            nodes, weights, size = [], set(), 0
        nodes += [n.name for n in group]
        weights |= {n.input[1] for n in group}
        size += added
    if nodes:
        yield nodes, weights


def _load(graph, names: set[str], source: str) -> None:
    """Read these initializers' values from the fp32 data file into the graph."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for tensor in graph.initializer:
        if tensor.name in names and uses_external_data(tensor):
            load_external_data_for_tensor(tensor, source)


def _quantize_pass(model, nodes: list[str], scheme: str):
    """ORT's quantization of ``nodes`` in ``scheme``; the weights not in memory stand in as graph inputs."""
    from onnx import TensorProto
    from onnx.external_data_helper import uses_external_data
    from onnx.helper import make_tensor_value_info

    graph = model.graph
    aside = []
    for i in reversed(range(len(graph.initializer))):  # in place: the loaded part is never copied
        if uses_external_data(graph.initializer[i]):
            aside.append(TensorProto())
            aside[-1].CopyFrom(graph.initializer[i])
            del graph.initializer[i]
    names = {t.name for t in aside}
    graph.input.extend(make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in aside)
    model = (_dynamic if scheme == "dynamic" else _blockwise)(model, nodes)
    for i in reversed(range(len(model.graph.input))):
        if model.graph.input[i].name in names:
            del model.graph.input[i]
    model.graph.initializer.extend(reversed(aside))
    return model


def _dynamic(model, nodes: list[str]):
    """``quantize_dynamic``'s quantizer and settings (per-channel int8 weights), on ``nodes`` only."""
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

    quantizer = ONNXQuantizer(model, True, False, QuantizationMode.IntegerOps, False, QuantType.QInt8,
                              QuantType.QUInt8, None, nodes, [], SCHEMES["dynamic"]["ops"], {"MatMulConstBOnly": True})
    return quantizer.quantize_model()


def _blockwise(model, nodes: list[str]):
    """``MatMulNBitsQuantizer`` at 8 bits on ``nodes`` only (no op type is quantized wholesale)."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # the module configures the root logger at INFO when imported (a line per node on the user's
    # terminal): undo that, and keep its own logger to warnings
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(nbits.__name__).setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4, bits=BITS,
                                          op_types_to_quantize=("sapindex: the named nodes only",))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_include=nodes, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def _fresh(model):
    """The model copied into new memory, the old one left to be freed. Protobuf keeps the bytes of
    a cleared field until its message is freed, so a model quantized in place (``MatMulNBits``)
    would hold every pass's weights (measured: +42 MB per 32 MB pass). Cheap: the weights written
    so far are in the data file, not in the message."""
    import onnx

    copy = onnx.ModelProto()
    copy.ParseFromString(model.SerializeToString())
    return copy


def _drop_unused_initializers(graph) -> None:
    """What a single pass ends with too: initializers no node or output reads are gone."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


class _DataFile:
    """The int8 graph's data file, written as the passes go: each tensor once, never all in memory."""

    def __init__(self, path: Path):
        self.path = path
        self.written: set[str] = set()

    def __enter__(self) -> _DataFile:
        self.file = self.path.open("wb")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def _append(self, tensor) -> None:
        import onnx
        from onnx.external_data_helper import set_external_data

        raw = tensor.raw_data
        set_external_data(tensor, self.path.name, offset=self.file.tell(), length=len(raw))
        self.file.write(raw)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.written.add(tensor.name)

    def store_loaded(self, graph, keep: set[str]) -> None:
        """Move every large tensor held in memory (a pass's int8 weights) to the file, but those in ``keep``."""
        for tensor in graph.initializer:
            if tensor.name not in keep and tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_MIN_BYTES:
                self._append(tensor)

    def copy_rest(self, graph, source: str) -> None:
        """Copy the weights no pass touched (norms, embeddings, biases) from the fp32 data file, one at a time."""
        from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

        for tensor in graph.initializer:
            if uses_external_data(tensor) and tensor.name not in self.written:
                load_external_data_for_tensor(tensor, source)
                self._append(tensor)
