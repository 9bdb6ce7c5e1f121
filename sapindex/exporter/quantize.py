"""int8 bundles: ONNX Runtime's dynamic quantization of the exported fp32 graphs.

Why: on a CPU, fp32 indexing at real size is bound by arithmetic, so only cheaper arithmetic
makes it faster (measured: README, "Memory and speed at real size"). ONNX Runtime's own tool (``quantize_dynamic``)
stores each weight matrix as int8 with one scale per output channel and quantizes activations
per call (``MatMulInteger``, int8 GEMM with VNNI where the CPU has it). Only matrix products
with a constant weight are quantized (``MatMulConstBOnly``): the attention products, and so the
window's attention probabilities that SAP's centrality is computed from, stay fp32. The result
is an approximation, validated by the int8 rules of ``graphs.TOLERANCES`` (kept-set Jaccard and
embedding cosine against fp32 PyTorch) and labelled in the manifest (``dtype`` and ``quantization``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

QUANTIZATION = {"method": "onnxruntime.quantization.quantize_dynamic", "weights": "int8, per output channel",
                "activations": "uint8, dynamic (per call)", "ops": ["MatMul"], "attention_products": "fp32"}


def quantize_graph(path: Path, log: Callable[[str], None] = lambda _msg: None) -> None:
    """Replace the fp32 graph at ``path`` (and its ``.data`` file) by its int8 form, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log(f"quantizing {path.name} to int8 (weights per channel, activations per call)")
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=path.parent) as tmp:
        quantized = Path(tmp) / path.name  # the same file name: the graph names its data file
        quantize_dynamic(path, quantized, op_types_to_quantize=QUANTIZATION["ops"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True})
        for old in (path, path.with_name(path.name + ".data")):
            old.unlink(missing_ok=True)
        for new in Path(tmp).iterdir():
            shutil.move(str(new), path.parent / new.name)


def quantization_record() -> dict:
    """What the manifest says about how an int8 bundle was made (with the ONNX Runtime version)."""
    import onnxruntime

    return {**QUANTIZATION, "onnxruntime": onnxruntime.__version__}
