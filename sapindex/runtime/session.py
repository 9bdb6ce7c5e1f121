"""The one place ONNX Runtime sessions are made: provider choice, threads, clear errors."""

from __future__ import annotations

import numpy as np

from sapindex.errors import SapIndexError
from sapindex.families import GRAPH_OUTPUTS
from sapindex.runtime.bundle import Bundle

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# ONNX Runtime's input type names -> the numpy dtype each graph input is cast to
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
                "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


# Session settings, each chosen by measurement at real width (bench/session_options.py, figures in
# bench/RESULTS.md, "ONNX Runtime session settings"):
# - no pre-packing for fp32 / fp16 weights: ORT then maps the bundle's external weights from disk
#   instead of copying them into packed buffers, so a session opens at once and holds no second
#   copy of the weights, at the same time per page. int8 bundles pre-pack: the blockwise scheme's
#   kernel (MatMulNBits) only runs fast on weights packed at load (unpacked it dequantizes every
#   call: measured ~2x slower, as slow as fp32), and int8 weights are a quarter of fp32's;
# - no CPU memory arena: the arena keeps every activation buffer it ever grew (the vision tower's
#   [heads, P, P] attention), so without it peak memory is far lower, at about the same time per page.
# - no spinning for sessions that share the CPU with numpy (the searcher's query encoder): ORT's
#   intra-op threads spin after each run and take the cores that the MaxSim matmul that follows
#   needs (RESULTS.md "Two-stage search": query encoding + two-stage search 45.7 -> 23.5 ms per query).
SESSION_CONFIG = {"session.disable_prepacking": "1"}
NO_SPINNING = {"session.intra_op.allow_spinning": "0"}
PREPACKED_DTYPES = ("int8",)
CPU_MEM_ARENA = False


def session_options(threads: int | None = None, dtype: str = "fp32", spinning: bool = True):
    """The ``SessionOptions`` every sapindex session uses for a bundle of ``dtype`` (``SESSION_CONFIG``,
    pre-packing for ``PREPACKED_DTYPES``, the arena, threads, ``NO_SPINNING`` unless ``spinning``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = CPU_MEM_ARENA
    options.log_severity_level = 3
    config = {**SESSION_CONFIG, **({"session.disable_prepacking": "0"} if dtype in PREPACKED_DTYPES else {}),
              **({} if spinning else NO_SPINNING)}
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return options


def make_session(path, device: str = "cpu", threads: int | None = None, dtype: str = "fp32",
                 spinning: bool = True):
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise SapIndexError(f"unknown device {device!r} (use cpu or cuda)")
    wanted = PROVIDERS[device]
    if wanted not in available_providers():
        raise SapIndexError(
            f"--device {device}: this onnxruntime ({ort.__version__}) offers {', '.join(available_providers())}; "
            "for CUDA install onnxruntime-gpu instead of onnxruntime (see docs/get-started/install.md, 'GPU machines')"
        )
    options = session_options(threads, dtype, spinning)
    providers = [wanted, "CPUExecutionProvider"] if device == "cuda" else [wanted]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise SapIndexError(f"{path}: ONNX Runtime cannot load the graph: {exc}") from None


class BundleSessions:
    """The bundle's graphs as ORT sessions: pages -> (embeddings, centrality), queries -> embeddings.

    Each graph is fed exactly the inputs its manifest entry lists, taken by name from the feed
    (the family preprocessor's output), so this class knows no family. The ``preload`` graphs are
    loaded (and checked) at once, the others on first use: a searcher preloads the text graph
    alone and never pays for loading the vision graph (gigabytes at real size).
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None,
                 preload: tuple[str, ...] = ("vision", "text"), spinning: bool = True):
        self.bundle, self.device, self.threads, self.spinning = bundle, device, threads, spinning
        self._sessions: dict[str, object] = {}
        self.inputs: dict[str, dict] = {}  # graph -> input name -> the numpy dtype ORT wants
        self.hidden = int(bundle.manifest["hidden_size"])  # width of the (dummy) image features for queries
        for name in preload:
            for graph in self._graphs(name):
                self.session(graph)

    def _graphs(self, name: str) -> tuple[str, ...]:
        """The bundle's graphs behind a role: ``text`` is one graph in format 1, head + tail in format 2."""
        return ("head", "tail") if name == "text" and self.bundle.version >= 2 else (name,)

    @property
    def vision(self):
        return self.session("vision")

    def loaded(self) -> list[str]:
        """The graphs whose sessions exist so far."""
        return sorted(self._sessions)

    def session(self, name: str):
        """The session of graph ``name``, made (and checked against the manifest) on first use."""
        if name not in self._sessions:
            path = self.bundle.graph_path(name)
            session = make_session(path, self.device, self.threads, self.bundle.manifest.get("dtype", "fp32"),
                                   self.spinning)
            outputs = [o.name for o in session.get_outputs()]
            missing = [o for o in GRAPH_OUTPUTS[name] if o not in outputs]
            if missing:
                raise SapIndexError(f"{path}: graph lacks output(s) {', '.join(missing)}; "
                                    "re-export the bundle with this sapindex")
            graph_inputs = {i.name: i.type for i in session.get_inputs()}
            listed = self.bundle.graph_io(name)["inputs"]
            if set(listed) != set(graph_inputs):
                raise SapIndexError(f"{path}: graph inputs {sorted(graph_inputs)} differ from "
                                    f"the manifest's {sorted(listed)}")
            # the preprocessors emit int64 / float32 already; fp16 bundles want float16 features
            self.inputs[name] = {n: _NUMPY_TYPES.get(graph_inputs[n]) for n in listed}
            self._sessions[name] = session
        return self._sessions[name]

    def run_pages(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[B, S, dim]`` embeddings, ``[B, S]`` centrality and ``[B, S]`` EOS attention for a page batch."""
        out = self._run_text({**feed, "image_embeds": self._image_features(feed)}, queries=False)
        return out["embeddings"], out["centrality"], out["eos_attention"]

    def run_head(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A format-2 bundle's vision and head graphs on a page batch: ``centrality`` and the tail's
        inputs by name (``states``, ``attention_bias``, ``rope_cos``, ``rope_sin``), what fast mode picks
        the kept tokens from before :meth:`run_tail` runs on them (the head's EOS row is not fetched)."""
        return self._run("head", {**feed, "image_embeds": self._image_features(feed)},
                         ["centrality", *self._tail_inputs()])

    def run_tail(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """A format-2 bundle's tail on ``feed`` (its inputs: :func:`tail_feed`): ``[B, L, dim]`` embeddings."""
        return self._run("tail", feed, ["embeddings"])["embeddings"]

    def _image_features(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The vision graph's ``[B, T, hidden]`` features, one page per run.

        Its attention is quadratic in a page's patches (``[B, heads, P, P]`` fp32, P ~ 3,000 for a
        ColQwen2 page), so a batch multiplies peak memory by B for no speed-up (measured in
        bench/vision_batching.py). Pages are independent in the vision tower, and every page of a
        batch is padded to the same patch count, so the per-page outputs stack into the batch's.
        """
        vision_feed = self._feed("vision", feed)
        n_pages = len(next(iter(vision_feed.values())))
        return np.concatenate([self.vision.run(None, {k: v[i:i + 1] for k, v in vision_feed.items()})[0]
                               for i in range(n_pages)])

    def run_queries(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``[B, M, dim]`` query embeddings (zero rows at padding); ``feed`` holds every text-graph
        input, the family's text-only stand-ins included (the preprocessor's ``query_extras``)."""
        return self._run_text(feed, queries=True)["embeddings"]

    def _run_text(self, feed: dict[str, np.ndarray], queries: bool) -> dict[str, np.ndarray]:
        """The text decoder: one graph (format 1), or the head and then the tail on every token (format
        2's exact mode). Queries fetch only the embeddings (and the head only what the tail takes), so
        ONNX Runtime skips the centrality and EOS reductions for them."""
        if self.bundle.version < 2:
            return self._run("text", feed, ["embeddings"] if queries else None)
        head = self._run("head", feed, self._tail_inputs() if queries else None)
        only = ["embeddings"] if queries else None
        tail = self._run("tail", {**head, "attention_mask": feed["attention_mask"]}, only)
        return {**head, **tail}  # a tail without layers has no eos_attention: the head's is the final layer's

    def _tail_inputs(self) -> list[str]:
        """The tail's inputs that the head gives (the attention mask comes from the preprocessing)."""
        return [n for n in self.bundle.graph_io("tail")["inputs"] if n != "attention_mask"]

    def _run(self, name: str, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Graph ``name`` on its inputs taken from ``feed``: the ``outputs`` asked for (None: all), by name."""
        names = outputs or self.bundle.graph_io(name)["outputs"]
        return dict(zip(names, self.session(name).run(names, self._feed(name, feed)), strict=True))

    def _feed(self, name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.session(name)
        wanted = self.inputs[name]
        missing = [n for n in wanted if n not in feed]
        if missing:
            raise SapIndexError(f"{self.bundle.graph_path(name)}: no value for graph input(s) {', '.join(missing)} "
                                f"(the {self.bundle.family} preprocessing produced {', '.join(sorted(feed))})")
        return {n: np.asarray(feed[n]) if dtype is None else np.asarray(feed[n]).astype(dtype, copy=False)
                for n, dtype in wanted.items()}


def tail_feed(head: dict[str, np.ndarray], tokens: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The tail's inputs for a subset of each page's tokens (fast mode): ``tokens[b]``, ascending
    sequence indices of page ``b``, picked from the head's outputs with their original rotary rows and
    their rows and columns of the attention bias (so causal order, the ColPali prefix block and M-RoPE
    positions are those of the full sequence). Pages are right-padded to the longest; a padding row
    attends only itself, no real row attends it, and its mask is 0."""
    states, bias = head["states"], head["attention_bias"]
    width, length = len(tokens), max(len(t) for t in tokens)
    out = {"states": np.zeros((width, length, states.shape[-1]), states.dtype),
           "attention_mask": np.zeros((width, length), np.int64),
           "attention_bias": np.full((width, 1, length, length), np.finfo(bias.dtype).min, bias.dtype)}
    for name in ("rope_cos", "rope_sin"):
        out[name] = np.zeros((width, 1, length, head[name].shape[-1]), head[name].dtype)
    diagonal = np.arange(length)
    for b, t in enumerate(tokens):
        n = len(t)
        out["states"][b, :n] = states[b, t]
        out["attention_mask"][b, :n] = 1
        out["attention_bias"][b, 0, :n, :n] = bias[b, 0][np.ix_(t, t)]
        out["attention_bias"][b, 0, diagonal[n:], diagonal[n:]] = 0.0
        for name in ("rope_cos", "rope_sin"):
            out[name][b, 0, :n] = head[name][b, 0, t]
    return out
