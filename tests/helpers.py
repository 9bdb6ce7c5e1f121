"""Helpers that several test modules share (importable: pyproject puts tests/ on the path)."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from sapindex.index.store import PageRow

# Python source that makes importing torch, transformers, colpali_engine or torchvision fail: put
# it first in a `python -c` program to prove the rest runs without them.
BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'colpali_engine', 'torchvision'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def run_cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``sapindex ARGS`` in a fresh interpreter, as a user runs it: exit code, stdout, stderr."""
    return subprocess.run([sys.executable, "-m", "sapindex.cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin)


# -- multi-vector families (tests/families/paligemma, tests/families/idefics3) -----------------------

# One word, a sentence, unicode, odd whitespace and a long query: what the processors' tokenizers must agree on.
QUERIES = ["revenue", "What was the total revenue in 2021 compared with the year before?",
           "ünïcödé — 数字 123", "  spaces\tand\nnewlines ", " ".join(["annual report growth"] * 40)]


def numpy_batch(batch):
    """A processor's torch batch as numpy arrays, to compare with the torch-free runtime's."""
    return {k: v.numpy() for k, v in batch.items()}


# -- PaliGemma / ColPali (tests/families/paligemma) ---------------------------------------------------

COLPALI_FLAVOURS = {"colpali": False, "colpali_hf": True}  # flavour -> the transformers (hf) classes
COLPALI_SIZES = ((420, 300), (230, 520), (360, 360), (150, 210))  # (height, width), validate.VALIDATION_SIZES[:4]


def colpali_page(height, width, seed=0):
    """Black strokes and text on white plus a noisy band: sharp edges and texture for the resampler."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(6, height - 10, 17):
        draw.text((5, y), f"Table {rng.integers(100)}: {rng.integers(10**6)}", fill=(0, 0, 0))
    draw.line((0, height - 1, width - 1, 0), fill=(20, 40, 220), width=2)
    band = np.asarray(image).copy()
    band[height // 2: height // 2 + 20] = rng.integers(0, 256, (min(20, height - height // 2), width, 3))
    return Image.fromarray(band)


def colpali_pages():
    """The validation sizes (downscaled), an upscaled thumbnail, a page already at 112 px, L and RGBA modes."""
    import numpy as np
    from PIL import Image

    pages = [colpali_page(h, w, i) for i, (h, w) in enumerate(COLPALI_SIZES)]
    rng = np.random.default_rng(7)
    small, native = (
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 30), (112, 112))
    )
    return pages + [small, native, pages[0].convert("L"), pages[1].convert("RGBA")]


# -- Idefics3 / ColIdefics3 (tests/families/idefics3) -------------------------------------------------

# (height, width) -> (R, C) local tiles: validate.VALIDATION_SIZES plus the tall strip
IDEFICS3_TILES = {(420, 300): (3, 3), (230, 520): (2, 3), (360, 360): (3, 3), (150, 210): (3, 3), (600, 150): (3, 1)}
IDEFICS3_SIDE = 4  # tokens per tile side (image_seq_len 16)


def idefics3_page(height, width, seed=0):
    """A synthetic document page (text, a filled box: sharp edges) with a band of noise (texture)."""
    import numpy as np
    from PIL import Image

    from sapindex.testing.toy_pages import WORDS, render_page

    rng = np.random.default_rng(seed)
    page = np.asarray(render_page(list(rng.choice(WORDS, 12)), (width, height), rng)).copy()
    band = slice(height // 3, height // 3 + max(2, height // 10))
    page[band] = rng.integers(0, 256, page[band].shape)
    return Image.fromarray(page)


def idefics3_pages():
    """Every validation size, an upscaled thumbnail, a page far larger than 192 px, noise, L and RGBA modes."""
    import numpy as np
    from PIL import Image

    pages = [idefics3_page(h, w, i) for i, (h, w) in enumerate(IDEFICS3_TILES)]
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    return pages + [idefics3_page(40, 30, 8), idefics3_page(1000, 700, 9), noise, pages[0].convert("L"),
                    pages[1].convert("RGBA")]


def idefics3_runtime(processor, tmp_path):
    """A runtime preprocessor built the bundle's way: params (through JSON) and tokenizer.json from the processor."""
    import json

    from sapindex.exporter.preprocessing_params import idefics3_params, write_tokenizer_json
    from sapindex.runtime.preprocess.idefics3 import Idefics3Params, Idefics3Preprocessor

    params = Idefics3Params.from_dict(json.loads(json.dumps(idefics3_params(processor))))
    return Idefics3Preprocessor(params, write_tokenizer_json(processor, tmp_path / "tokenizer.json"))


def idefics3_variant(processor, **image_processor_overrides):
    """The same processor with other image-processor settings (unsplit pages)."""
    import copy

    from colpali_engine.models import ColIdefics3Processor
    from transformers.models.idefics3 import Idefics3ImageProcessor

    config = {**processor.image_processor.to_dict(), **image_processor_overrides}
    config.pop("image_processor_type", None)
    return ColIdefics3Processor(Idefics3ImageProcessor(**config), copy.deepcopy(processor.tokenizer),
                                image_seq_len=processor.image_seq_len)


# -- index rows (tests/index, tests/search) ------------------------------------------------------------

DIM = 16


def make_row(path, content_hash, page, k, seed, dim=DIM, n_visual=64, scores=True):
    """A page of ``k`` random unit vectors at random positions (with random SAP scores unless told not)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((k, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    positions = np.sort(rng.choice(n_visual, size=k, replace=False))
    return PageRow(path=path, content_hash=content_hash, page=page, width=100, height=140,
                   grid=(8, 8), n_visual=n_visual, positions=positions, vectors=v, keep_ratio=k / n_visual,
                   scores=rng.random(k) if scores else None)


def h(i) -> str:
    return f"{i:064x}"


def only_failure(items):
    """The one item of ``items``, a failure with a one-line reason."""
    from sapindex.index.records import Failure

    assert len(items) == 1 and isinstance(items[0], Failure), items
    assert "\n" not in items[0].reason
    return items[0]


# -- a real `sapindex serve` process (tests/serve) ---------------------------------------------------------

TOKEN = "s3cret-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "sapindex.cli", "serve", str(index), "--port",
                                      str(self.port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read()}")
            try:
                self.call("GET", "/health", token=TOKEN)
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def call(self, method: str, route: str, body=None, *, raw: bytes | None = None, token: str | None = None,
             content_type: str | None = "application/json") -> tuple[int, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + route, data=data, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get_raw(self, route: str) -> tuple[int, str, bytes]:
        status, headers, body = self.fetch(route)
        return status, headers.get("content-type", ""), body

    def fetch(self, route: str, token: str | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """GET ``route``: status, headers (lower-case names) and body, whatever the status."""
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + route, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
