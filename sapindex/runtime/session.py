"""The one place ONNX Runtime sessions are made: provider choice, threads, clear errors."""

from __future__ import annotations

import numpy as np

from sapindex.errors import SapIndexError
from sapindex.runtime.bundle import GRAPH_IO, Bundle

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def make_session(path, device: str = "cpu", threads: int | None = None):
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise SapIndexError(f"unknown device {device!r} (use cpu or cuda)")
    wanted = PROVIDERS[device]
    if wanted not in available_providers():
        raise SapIndexError(
            f"--device {device}: this onnxruntime ({ort.__version__}) offers {', '.join(available_providers())}; "
            "for CUDA install onnxruntime-gpu instead of onnxruntime (see README, 'GPU machines')"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = [wanted, "CPUExecutionProvider"] if device == "cuda" else [wanted]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SapIndexError(f"{path}: ONNX Runtime cannot load the graph: {exc}") from None


class BundleSessions:
    """The bundle's graphs as ORT sessions: pages -> (embeddings, centrality), queries -> embeddings."""

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None):
        self.bundle = bundle
        self.vision = make_session(bundle.graph_path("vision"), device, threads)
        self.text = make_session(bundle.graph_path("text"), device, threads)
        for name, session in (("vision", self.vision), ("text", self.text)):
            outputs = [o.name for o in session.get_outputs()]
            missing = [o for o in GRAPH_IO[name]["outputs"] if o not in outputs]
            if missing:
                raise SapIndexError(f"{bundle.graph_path(name)}: graph lacks output(s) {', '.join(missing)}; "
                                    "re-export the bundle with this sapindex")
        self.hidden = int(bundle.manifest["hidden_size"])  # width of the (dummy) image features for queries

    def encode_pages(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[B, S, dim]`` embeddings, ``[B, S]`` centrality and ``[B, S]`` EOS attention for a page batch."""
        grid = feed["image_grid_thw"].astype(np.int64)
        (image_embeds,) = self.vision.run(None, {"pixel_values": feed["pixel_values"].astype(np.float32),
                                                 "image_grid_thw": grid})
        emb, cent, eos = self.text.run(None, {"input_ids": feed["input_ids"].astype(np.int64),
                                              "attention_mask": feed["attention_mask"].astype(np.int64),
                                              "image_embeds": image_embeds, "image_grid_thw": grid})
        return emb, cent, eos

    def encode_queries(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``[B, M, dim]`` query embeddings (zero rows at padding)."""
        batch = feed["input_ids"].shape[0]
        emb = self.text.run(["embeddings"], {
            "input_ids": feed["input_ids"].astype(np.int64),
            "attention_mask": feed["attention_mask"].astype(np.int64),
            "image_embeds": np.zeros((batch, 1, self.hidden), dtype=np.float32),  # unused: no image tokens
            "image_grid_thw": np.tile(np.array([[1, 2, 2]], dtype=np.int64), (batch, 1)),
        })[0]
        return emb
