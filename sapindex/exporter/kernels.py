"""Small ONNX graphs that the torch-free search runs as kernels, and the files they ship in.

Why ONNX for a matmul: numpy converts float16 to float32 one element at a time (~1.3 ns an
element on the 2-core CI machine, 4x the matmul that follows), while ONNX Runtime's ``Cast`` is
vectorised (~0.16 ns). Scoring stored float16 vectors through :data:`HALF_SIMS` is 3-4x faster
than numpy end to end (``bench/rescoring_speed.py``). The runtime cannot build the graph (it has
onnxruntime, not onnx), so the graph ships as an asset built here:
``python -m sapindex.exporter.kernels`` rewrites it, and a test checks the asset equals it.
"""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "kernels"
HALF_SIMS = "half_sims.onnx"
OPSET = 17


def half_sims_model():
    """``sims [N, T] = float32(pages [N, D] float16) @ queries [T, D].T``: every dot product of
    stored float16 page vectors with float32 query vectors, accumulated in float32."""
    from onnx import TensorProto, helper

    def io(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    graph = helper.make_graph(
        [helper.make_node("Cast", ["pages"], ["pages_f32"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["queries"], ["queries_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["pages_f32", "queries_t"], ["sims"])],
        "half_sims",
        [io("pages", TensorProto.FLOAT16, ["N", "D"]), io("queries", TensorProto.FLOAT, ["T", "D"])],
        [io("sims", TensorProto.FLOAT, ["N", "T"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sapindex")
    model.ir_version = 8  # readable by every onnxruntime sapindex supports (>= 1.18)
    return model


def write_assets(directory: Path = ASSET_DIR) -> list[Path]:
    """Write every kernel's ``.onnx`` file into ``directory``; return their paths."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HALF_SIMS
    onnx.save(half_sims_model(), str(path))
    return [path]


if __name__ == "__main__":
    for written in write_assets():
        print(written)
