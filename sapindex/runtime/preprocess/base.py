"""What every backbone's torch-free preprocessing shares: the contract and the building blocks.

:class:`Preprocessor` writes down what ``sapindex.runtime.encoder.Encoder`` and the exporter's
validation call on a family preprocessor. The helpers reproduce, in numpy + PIL + ``tokenizers``,
the steps the transformers processors of all three backbones have in common: the manifest round
trip of the params, the PIL resize and the rescale/normalise arithmetic, and the padded tokenizer
call. Each backbone module (``qwen2_vl``, ``paligemma``, ``idefics3``) adds only its own geometry
and prompt text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from sapindex.errors import SapIndexError
from sapindex.runtime.layout import TokenLayout

__all__ = [
    "Preprocessor",
    "PreprocessorBase",
    "ManifestParams",
    "RESAMPLE",
    "TORCHVISION_MAX_LEVELS",
    "resize_hv",
    "rescale_normalize",
    "load_tokenizer",
    "encode_padded",
    "text_only_image_embeds",
    "visual_positions",
]

# The bound, in uint8 levels, that the parity tests hold the runtime's pixels to against the torchvision
# backend colpali-engine uses (PIL and torchvision resample differently; figures in docs/measurements.md).
TORCHVISION_MAX_LEVELS = 2

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ManifestParams:
    """What every backbone's preprocessing params share: the pixel arithmetic, the query
    augmentation and the padding fields, their checks, and the manifest round trip. Backbones
    subclass it as frozen dataclasses with their own fields (after these). ``LIST_FIELDS`` are
    tuples here and lists in the manifest. No defaults on purpose: a bundle must say what its
    model was trained with.
    """

    resample: str
    rescale_factor: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    query_prefix: str
    query_augmentation_token: str
    n_augmentation: int
    pad_token_id: int
    padding_side: str

    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("image_mean", "image_std")

    def __post_init__(self):
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise SapIndexError("preprocessing params: image_mean and image_std need 3 values (RGB)")
        if self.resample not in RESAMPLE:
            raise SapIndexError(f"preprocessing params: unknown resample {self.resample!r}; "
                                f"one of {', '.join(RESAMPLE)}")
        if self.padding_side not in ("left", "right"):
            raise SapIndexError(f"preprocessing params: padding_side must be 'left' or 'right', "
                                f"got {self.padding_side!r}")

    def _check_visual_prompt(self, prompt: str, image_token: str) -> None:
        """The page prompt holds the image placeholder exactly once (it is expanded per page)."""
        if prompt.count(image_token) != 1:
            raise SapIndexError(f"preprocessing params: visual_prompt must contain {image_token!r} exactly once")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in self.LIST_FIELDS:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: Mapping):
        """Build from a manifest dict; unknown keys are ignored (newer exporters may add some)."""
        missing = sorted(f.name for f in fields(cls) if f.name not in d)
        if missing:
            raise SapIndexError(f"preprocessing params: missing keys {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls)})


class Preprocessor(Protocol):
    """A backbone's ``process_images`` / ``process_queries``, torch-free: what the runtime calls."""

    @property  # read-only, so a backbone's own params class (a subclass) meets it
    def params(self) -> ManifestParams:
        """The bundle manifest's ``preprocessing`` entry, parsed: every number the processor reads."""

    image_token_id: int
    """Id of the ``<image>`` token: the sequence positions that hold visual tokens."""

    def pages(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """The processor's page inputs (its keys and order, numpy) for a non-empty batch of PIL images."""

    def layouts(self, batch: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, TokenLayout]]:
        """Per page of a :meth:`pages` batch: its visual tokens' sequence positions ``[V]``, ascending, and their
        :class:`TokenLayout`; raises :class:`SapIndexError` when the ids hold another number of image tokens."""

    def queries(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The processor's query inputs for a non-empty batch of texts, padded to the longest."""

    def query_extras(self, batch: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
        """The text graph's inputs a :meth:`queries` batch lacks: zero ``image_embeds [B, 1, hidden]`` and more."""

    def visual_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of the local token grid a page of this size gets; refuses sizes the processor refuses."""


def resize_hv(image: Image.Image, width: int, height: int, resample) -> Image.Image:
    """PIL resize as two single-axis passes, horizontal first, each rounded to uint8.

    Recent Pillow picks the pass order itself: vertical first when that makes the intermediate
    image smaller. With uint8 clipping between passes the order changes pixels at sharp edges.
    Fixing the order keeps the runtime independent of the Pillow version and in the order
    torchvision uses (colpali's backend).
    """
    if image.width != width:
        image = image.resize((width, image.height), resample)
    if image.height != height:
        image = image.resize((width, height), resample)
    return image


def rescale_normalize(image: Image.Image, rescale_factor: float, mean, std) -> np.ndarray:
    """RGB image -> ``[H, W, 3]`` float32, exactly transformers' PIL backend: rescale in float64
    then downcast, normalise in float32."""
    x = (np.asarray(image, np.uint8).astype(np.float64) * rescale_factor).astype(np.float32)  # [H, W, 3]
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def load_tokenizer(tokenizer_path) -> Tokenizer:
    """A bundle's ``tokenizer.json`` with any saved padding/truncation cleared (transformers overrides them)."""
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise SapIndexError(f"{tokenizer_path}: cannot load tokenizer ({exc})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def encode_padded(tokenizer: Tokenizer, texts: Sequence[str], pad_token_id: int,
                  padding_side: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize and pad to the longest, as a transformers tokenizer call with padding='longest'.

    Returns ``input_ids`` and ``attention_mask``, both ``[B, S]`` int64.
    """
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    length = max(len(e.ids) for e in encodings)
    input_ids = np.full((len(texts), length), pad_token_id, np.int64)  # [B, S]
    attention_mask = np.zeros((len(texts), length), np.int64)  # [B, S]
    for i, e in enumerate(encodings):
        span = slice(length - len(e.ids), length) if padding_side == "left" else slice(0, len(e.ids))
        input_ids[i, span] = e.ids
        attention_mask[i, span] = e.attention_mask
    return input_ids, attention_mask


def text_only_image_embeds(batch: int, hidden: int) -> np.ndarray:
    """``[B, 1, hidden]`` zeros for the text graph's ``image_embeds`` when no token is an image
    token (queries): the graph gathers nothing from it, but ONNX Runtime needs a value."""
    return np.zeros((batch, 1, hidden), np.float32)


def visual_positions(ids: np.ndarray, image_token_id: int, layout: TokenLayout) -> np.ndarray:
    """``[V]`` int64 sequence positions of the image tokens in one page's ``input_ids [S]``, checked
    against the number of tokens ``layout`` places on the page."""
    positions = np.flatnonzero(np.asarray(ids) == image_token_id).astype(np.int64)
    if len(positions) != layout.n_tokens:
        grids = f"{layout.grid[0]}x{layout.grid[1]}"
        if layout.global_grid is not None:
            grids += f" + {layout.global_grid[0]}x{layout.global_grid[1]} global"
        raise SapIndexError(f"page has {len(positions)} image tokens, expected {layout.n_tokens} ({grids})")
    return positions


P = TypeVar("P", bound=ManifestParams)


class PreprocessorBase(Generic[P]):
    """What every backbone's preprocessor does the same way, so a backbone writes only its own
    steps: the bundle tokenizer, padding as the processor pads, the params' resampler and
    normalisation, image-token positions and the text-only image features of queries. Generic in
    its params, so each backbone's fields are typed where it reads them."""

    image_token_id: int  # set by each backbone from its params' image token

    def __init__(self, params: P, tokenizer_path):
        self.params = params
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer_path = tokenizer_path

    def token_id(self, token: str) -> int:
        """A special token's id in the bundle tokenizer; a bundle without it is refused."""
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise SapIndexError(f"{self.tokenizer_path}: no token {token!r} in the vocabulary")
        return token_id

    def pad(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask`` ``[B, S]`` int64, padded on the params' side."""
        return encode_padded(self.tokenizer, texts, self.params.pad_token_id, self.params.padding_side)

    def resize(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """:func:`resize_hv` with the params' resampler."""
        return resize_hv(image, width, height, RESAMPLE[self.params.resample])

    def normalize(self, image: Image.Image) -> np.ndarray:
        """:func:`rescale_normalize` with the params' rescale factor, mean and std: ``[H, W, 3]`` float32."""
        p = self.params
        return rescale_normalize(image, p.rescale_factor, p.image_mean, p.image_std)

    def positions(self, ids: np.ndarray, layout: TokenLayout) -> np.ndarray:
        """:func:`visual_positions` of this tokenizer's image token."""
        return visual_positions(ids, self.image_token_id, layout)

    @staticmethod
    def no_image(batch: int, hidden: int) -> np.ndarray:
        """:func:`text_only_image_embeds`: the queries' stand-in for image features."""
        return text_only_image_embeds(batch, hidden)
