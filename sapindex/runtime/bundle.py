"""The exported bundle: one self-contained directory, read without torch.

Layout::

    manifest.json      format, family, attention (causal / prefix-lm), layers, SAP window, dim,
                       preprocessing, graphs (file, input and output names), calibration summary,
                       validation numbers, source fingerprint, sha256 + size of every file,
                       replaces (fingerprints of earlier bundles whose indexes this one goes on with)
    vision.onnx(.data) pixels -> image features (one row of D per visual token)
    head.onnx(.data)   ids + image features -> the states after the SAP window, in-graph SAP
                       centrality, and what the tail needs (mask, rotary tables); format 2
    tail.onnx(.data)   the layers after the window, norm, projection -> embeddings, final-layer
                       EOS attention (for the baselines of ``sapindex eval``); format 2
    text.onnx(.data)   format 1 instead of head + tail: ids + image features -> embeddings,
                       centrality, EOS attention
    tokenizer.json     the tokenizer transformers encodes with
    calibration.json   the full calibration record

Nothing outside the directory is read. The bundle fingerprint is the sha256 over the files'
sha256s, so an index can refuse vectors from any other bundle (but those it ``replaces``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sapindex.errors import SapIndexError
from sapindex.families import ATTENTION_KINDS, FAMILIES
from sapindex.fingerprint import sha256_file
from sapindex.formats import read_artifact, read_json, write_json_atomic

BUNDLE_FORMAT = "sapindex-bundle"
BUNDLE_VERSION = 2  # format 1 (one text graph) still loads and runs
MANIFEST = "manifest.json"


def seal_manifest(directory: Path, manifest: dict) -> dict:
    """Record sha256 + size of every file and the bundle fingerprint, then write manifest.json atomically."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(directory).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    digest = hashlib.sha256()
    for name, meta in files.items():
        digest.update(f"{name}\0{meta['sha256']}\n".encode())
    manifest = {**manifest, "files": files, "fingerprint": digest.hexdigest()}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def manifest_bytes(manifest: dict) -> int:
    """A bundle's size on disk: the sum of the sizes its (sealed) manifest records."""
    return sum(int(meta["size"]) for meta in manifest["files"].values())


def is_bundle_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a sapindex bundle manifest (of any format version)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return read_json(manifest, "sapindex bundle manifest").get("format") == BUNDLE_FORMAT
    except SapIndexError:
        return False


@dataclass
class Bundle:
    """An exported bundle: its directory and its manifest, checked against each other by :meth:`open`.

    Why the check at open: an index refuses vectors from any other bundle by fingerprint, and the
    fingerprint is only worth that if the files on disk are the ones the manifest lists.

    Attributes:
        path: The bundle directory.
        manifest: The parsed ``manifest.json`` (format, family, graphs, window, files, fingerprint, ...).
    """

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        """Read and check a bundle; ``verify`` re-hashes every file against the manifest.

        Args:
            path: The bundle directory (``*.sap``).
            verify: Re-hash every file and compare it with the manifest's sha256 (slow for a
                real-size bundle); False checks the files' presence and sizes only.

        Returns:
            The opened bundle.

        Raises:
            SapIndexError: The directory does not exist, holds no ``manifest.json``, the manifest is
                unreadable, not a sapindex bundle or of a newer format, lists no files, or a listed
                file is missing, has another size or (with ``verify``) another sha256.
        """
        path = Path(path)
        if not path.is_dir():
            raise SapIndexError(f"{path}: bundle directory does not exist")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise SapIndexError(f"{path}: not a sapindex bundle (no {MANIFEST})")
        manifest = read_artifact(manifest_path, BUNDLE_FORMAT, BUNDLE_VERSION, "sapindex bundle")
        bundle = cls(path, manifest)
        bundle.check_files(verify)
        return bundle

    def check_files(self, verify: bool = True) -> None:
        """Check every file the manifest lists: present, of the recorded size, and (``verify``) of the
        recorded sha256, so that a truncated or modified bundle is refused before a graph loads.

        Args:
            verify: Also re-hash each file against the manifest's sha256; False checks sizes only.

        Raises:
            SapIndexError: The manifest lists no files, or a file is missing, has another size or
                (with ``verify``) another sha256.
        """
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise SapIndexError(f"{self.path / MANIFEST}: lists no files")
        for name, meta in files.items():
            file = self.path / name
            if not file.is_file():
                raise SapIndexError(f"{file}: missing from the bundle")
            if file.stat().st_size != meta["size"]:
                raise SapIndexError(f"{file}: size {file.stat().st_size} differs from the manifest's {meta['size']}")
            if verify and sha256_file(file) != meta["sha256"]:
                raise SapIndexError(f"{file}: sha256 differs from the manifest (corrupted or modified bundle)")

    @property
    def fingerprint(self) -> str:
        """The bundle fingerprint: sha256 over the files' sha256s, what an index records and checks."""
        return self.manifest["fingerprint"]

    @property
    def replaces(self) -> tuple[str, ...]:
        """Fingerprints of earlier bundles this one stands in for (``export --replaces``: the same
        weights and window, checked to give the same vectors and kept sets), so that an index built
        with one of them goes on with this one."""
        return tuple(str(r["fingerprint"]) for r in self.manifest.get("replaces", []))

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprints of the indexes this bundle may write and search: its own, then :attr:`replaces`."""
        return (self.fingerprint, *self.replaces)

    @property
    def family(self) -> str:
        """The model family the bundle was exported from (a key of ``sapindex.families.FAMILIES``)."""
        return self.manifest["family"]

    @property
    def dim(self) -> int:
        """The width of the embeddings the bundle gives (one vector per token)."""
        return int(self.manifest["dim"])

    @property
    def attention(self) -> str:
        """``causal`` or ``prefix-lm``; manifests written before the field existed are causal (Qwen2-VL).

        Raises:
            SapIndexError: The manifest names another attention kind (a newer sapindex wrote it).
        """
        kind = self.manifest.get("attention", "causal")
        if kind not in ATTENTION_KINDS:
            raise SapIndexError(f"{self.path / MANIFEST}: unknown attention {kind!r} (expected one of "
                                f"{', '.join(ATTENTION_KINDS)}); upgrade sapindex")
        return kind

    def graph_io(self, name: str) -> dict:
        """``{"inputs": [...], "outputs": [...]}`` of one graph: the manifest's record is the
        source of truth; the family's default only fills in for manifests that lack it.

        Args:
            name: The graph: ``vision``, ``head``, ``tail`` (format 2) or ``text`` (format 1).

        Returns:
            The graph's input and output names, as ``{"inputs": [...], "outputs": [...]}``.

        Raises:
            SapIndexError: Neither the manifest nor the family's default lists inputs and outputs.
        """
        recorded = self.manifest.get("graphs", {}).get(name, {})
        spec = FAMILIES.get(self.family)
        default = spec.graph_io(self.version).get(name, {}) if spec else {}
        io = {key: recorded.get(key, default.get(key)) for key in ("inputs", "outputs")}
        if not io["inputs"] or not io["outputs"]:
            raise SapIndexError(f"{self.path / MANIFEST}: graph {name!r} lists no inputs or outputs")
        return io

    @property
    def version(self) -> int:
        """1: one text graph; 2: the text decoder split into head and tail (``FORMAT_GRAPHS``)."""
        return int(self.manifest.get("format_version", 1))

    @property
    def window(self) -> tuple[int, int]:
        """The SAP window ``(start, end)`` of decoder layers whose attention gives the centrality, end exclusive."""
        start, end = self.manifest["window"]
        return int(start), int(end)

    def graph_path(self, name: str) -> Path:
        """The ONNX file of one graph, as the manifest records it.

        Args:
            name: The graph: ``vision``, ``head``, ``tail`` (format 2) or ``text`` (format 1).

        Returns:
            The path of the graph's ``.onnx`` file inside the bundle.

        Raises:
            KeyError: The manifest has no graph ``name``.
        """
        return self.path / self.manifest["graphs"][name]["file"]

    @property
    def tokenizer_path(self) -> Path:
        """The bundle's ``tokenizer.json``, what the query and page preprocessing tokenizes with."""
        return self.path / "tokenizer.json"

    def summary(self) -> dict:
        """What ``sapindex info`` shows of a bundle, as one JSON-ready dict.

        Returns:
            The path, family, attention, layers, window (and where it came from), dim, dtype,
            quantization, format version, fingerprint, replaced fingerprints, source model
            fingerprint, size in bytes, validation numbers and calibration summary.

        Raises:
            SapIndexError: The manifest names an unknown attention kind.
        """
        m = self.manifest
        return {
            "path": str(self.path),
            "family": m["family"],
            "attention": self.attention,
            "n_layers": m["n_layers"],
            "window": m["window"],
            "window_source": m.get("window_source", "calibration"),  # bundles before --window had no key
            "dim": m["dim"],
            "dtype": m.get("dtype"),
            "quantization": m.get("quantization"),  # int8 bundles: how (an approximation of the fp32 model)
            "format_version": self.version,
            "fingerprint": m["fingerprint"],
            "replaces": list(self.replaces),  # earlier bundles whose indexes this one goes on with
            "source_fingerprint": m["source_model"]["fingerprint"],
            "bytes": manifest_bytes(m),
            "validation": m.get("validation"),
            "calibration": {k: m["calibration"][k] for k in ("keep_ratio", "pairs_used", "random_floor")},
        }
