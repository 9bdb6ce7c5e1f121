"""The options of an ``index`` run, as one frozen object that checks itself (torch-free).

Why one object: what a run stores (keep ratio, method, mode, budget scale) and how it runs
(device, batch size, dpi, threads) travel from the CLI through the indexer, the Ray driver, its
encoder actors and the encoder; as keyword arguments they were repeated in seven signatures.
:class:`IndexOptions` checks its own values when made, and against a bundle and an index once
(:meth:`IndexOptions.for_run`), so every layer below receives options that are known to apply.
The causal position correction is the method ``sap-poscorr`` (what an index records), not a
separate switch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sapindex.compression import check_method, resolve_method
from sapindex.errors import SapIndexError
from sapindex.runtime.bundle import Bundle, manifest_bytes
from sapindex.sap import DEFAULT_KEEP_RATIO

__all__ = ["DEFAULT_DPI", "MODES", "IndexOptions", "check_fast_mode", "check_position_correction",
           "default_batch_size", "method_with_correction"]

MODES = ("exact", "fast")  # exact: the tail on every token; fast: on the prompt and the kept tokens only
DEFAULT_DPI = 144  # PDF rendering resolution: the pages' pixels per inch
#: Bundles at least this large are real-size models: on a CPU a page costs tens of seconds there.
LARGE_BUNDLE_BYTES = 1_000_000_000


@dataclass(frozen=True)
class IndexOptions:
    """What an ``index`` run stores and how it runs.

    ``method``: what is stored of each page (:data:`sapindex.compression.INDEX_METHODS`, or
    ``sap-poscorr``: SAP ranked with the causal position correction); None: the index's own when
    it holds pages, else the default (resolved by :meth:`for_run`). ``budget_scale``: ``sap-budget``
    only (``sapindex.compression.budget_scale_from``). ``batch_size`` None: :func:`default_batch_size`.
    ``threads``: ONNX Runtime threads (None: its default).

    Attributes:
        keep_ratio: The fraction of each page's visual tokens kept, in (0, 1]; default 0.1.
        method: What is stored of each page (one of ``sapindex.compression.INDEX_METHODS``, or
            ``sap-poscorr``); None: the index's own when it holds pages, else ``sap``.
        mode: ``exact`` (the decoder on every token) or ``fast`` (the layers after the SAP window on
            the prompt and the kept tokens only; format-2 bundles).
        budget_scale: ``sap-budget``'s calibrated scale (positive); None for every other method.
        device: ``cpu`` or ``cuda``: where ONNX Runtime encodes.
        batch_size: Pages per ONNX Runtime call and per commit, at least 1; None: 1 for a real-size
            bundle on a CPU, else 8.
        dpi: PDF rendering resolution in pixels per inch, positive; default 144.
        threads: ONNX Runtime threads, at least 1; None: its default.

    Raises:
        SapIndexError: When made: ``keep_ratio`` outside (0, 1], an unknown ``mode``, ``batch_size``
            or ``threads`` below 1, or a ``dpi`` that is not a positive number.
    """

    keep_ratio: float = DEFAULT_KEEP_RATIO
    method: str | None = None
    mode: str = "exact"
    budget_scale: float | None = None
    device: str = "cpu"
    batch_size: int | None = None
    dpi: float = DEFAULT_DPI
    threads: int | None = None

    def __post_init__(self):
        if not 0.0 < self.keep_ratio <= 1.0:
            raise SapIndexError(f"--keep-ratio must be in (0, 1], got {self.keep_ratio}")
        if self.mode not in MODES:
            raise SapIndexError(f"--mode {self.mode}: choose {' or '.join(MODES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise SapIndexError("--batch-size must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise SapIndexError(f"--threads must be at least 1, got {self.threads}")
        if not (np.isfinite(self.dpi) and self.dpi > 0):
            raise SapIndexError(f"--dpi must be a positive number, got {self.dpi}")

    @property
    def position_correction(self) -> bool:
        """SAP ranked with the causal position correction (``sap-poscorr``)."""
        return self.method == "sap-poscorr"

    def replace(self, **changes) -> IndexOptions:
        """A copy with ``changes`` (checked again).

        Args:
            **changes (Any): Field names and their new values (``keep_ratio=0.05``, ...).

        Returns:
            A new frozen :class:`IndexOptions`; this one is unchanged.

        Raises:
            SapIndexError: A changed value fails the checks made at construction.
            TypeError: A name is not a field of :class:`IndexOptions`.
        """
        return dataclasses.replace(self, **changes)

    def for_run(self, bundle: Bundle, stored: set[str]) -> IndexOptions:
        """These options, checked against ``bundle`` and an index holding ``stored`` methods, with
        the method (the index's own, or the default) and the batch size resolved.

        Args:
            bundle: The bundle the run encodes with.
            stored: The methods of the index's rows (empty for a new index).

        Returns:
            A copy whose ``method`` and ``batch_size`` are set (never None).

        Raises:
            SapIndexError: ``sap-poscorr`` on a bundle whose decoder is not causal, fast mode on a
                format-1 bundle, an unknown method, a method fast mode cannot run, ``sap-budget``
                without a budget scale, or a budget scale with another method.
        """
        method = resolve_method(self.method, stored)
        resolved = self.replace(method=method, batch_size=self.batch_size or default_batch_size(bundle, self.device))
        if resolved.position_correction:  # asked for, or the method of the index being resumed
            check_position_correction(bundle)
        if resolved.mode == "fast":
            check_fast_mode(bundle)
        check_method(method, mode=resolved.mode, budget_scale=resolved.budget_scale)
        return resolved


def method_with_correction(method: str | None, position_correction: bool) -> str | None:
    """``index --method M --position-correction`` as one method: ``sap-poscorr`` for SAP's
    selection; refused for a method that ranks by plain centrality."""
    if not position_correction:
        return method
    if method not in (None, "sap"):
        raise SapIndexError(f"--position-correction ranks SAP's selection (--method sap); --method {method} "
                            "ranks by plain centrality")
    return "sap-poscorr"


def default_batch_size(bundle: Bundle, device: str) -> int:
    """Pages per ONNX Runtime call and per commit when the user gives none.

    1 for a real-size bundle on a CPU: a page takes tens of seconds there and batching pages gains
    nothing at real widths (bench/RESULTS.md, "Per family at real layer widths": batch 2 vs 1), so
    the progress bar moves per page instead of once per several minutes. 8 otherwise (small models,
    where a call's overhead matters, and GPUs), which also keeps commits (LanceDB versions) few.
    """
    return 1 if device == "cpu" and manifest_bytes(bundle.manifest) >= LARGE_BUNDLE_BYTES else 8


def check_position_correction(bundle: Bundle) -> None:
    """Refuse ``--position-correction`` (``sap-poscorr``) on a non-causal bundle.

    The correction divides a visual token's in-degree by the number of visual rows that can
    attend it under causal attention. In a prefix-LM (ColPali) every visual row attends every
    visual column, so there is no position bias to remove and the division would invent one.
    """
    if bundle.attention != "causal":
        raise SapIndexError(
            f"{bundle.path}: --position-correction (sap-poscorr) corrects the causal position bias of in-degree, "
            f"but this {bundle.family} bundle's decoder is {bundle.attention} (every visual token attends every "
            "other); rank by plain SAP centrality instead"
        )


def check_fast_mode(bundle: Bundle) -> None:
    """Refuse fast mode for a format-1 bundle: it has no head/tail split to run the tail on kept tokens."""
    if bundle.version < 2:
        raise SapIndexError(f"{bundle.path}: --mode fast needs a format-2 bundle (head and tail graphs), this one is "
                            f"format {bundle.version}; re-export it with this sapindex (`sapindex export ... "
                            f"--replaces {bundle.path}` keeps its indexes usable)")
