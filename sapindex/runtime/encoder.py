"""Bundle -> vectors, torch-free: family preprocessing + ONNX Runtime + SAP selection.

The backbone's numpy preprocessing (``runtime/preprocess/``) builds the graph inputs; the
graphs return every token's final embedding and the window centrality; SAP keeps the
``keep_count`` most central visual tokens (``sapindex.sap.top_k``), in spatial order
(``sapindex.runtime.layout``: for Idefics3 the local page grid, then the global tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sapindex import sap
from sapindex.compression import DEFAULT_METHOD, check_method, reduce_page
from sapindex.runtime.bundle import Bundle
from sapindex.runtime.layout import TokenLayout
from sapindex.runtime.options import IndexOptions, check_fast_mode
from sapindex.runtime.preprocess import preprocessor_for
from sapindex.runtime.session import BundleSessions, tail_feed


@dataclass
class PageTokens:
    """All visual tokens of one page, before pruning, in *spatial* order (``layout``).

    Spatial order is what the index stores positions in (the overlay draws them without knowing
    the family); for the grid families it is the sequence order. ``layout.seq_rank`` keeps the
    sequence order the causal position correction needs.
    """

    embeddings: np.ndarray  # [V, dim] float32, L2-normalised
    centrality: np.ndarray  # [V] float32, SAP window in-degree
    layout: TokenLayout  # where spatial token k sits (grid, then global grid) and its sequence rank
    eos: np.ndarray  # [V] float32, final-layer attention from the last token (baselines only)

    @property
    def n_visual(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the local grid; token k < rows*cols sits at (k // cols, k % cols)."""
        return self.layout.grid


@dataclass
class PrunedPage:
    """The kept vectors of one page, what the index stores."""

    vectors: np.ndarray  # [k, dim] float32
    positions: np.ndarray  # [k] int32, ascending spatial visual-token indices
    grid: tuple[int, int]
    n_visual: int
    global_grid: tuple[int, int] | None = None  # tokens >= rows*cols: cells of this whole-page grid
    scores: np.ndarray | None = None  # [k] float64, the score each kept token was ranked by
    cover: np.ndarray | None = None  # [n_visual] int32: the row each token was merged into (-1: none); merging methods


def prune(page: PageTokens, keep_ratio: float, position_correction: bool = False) -> PrunedPage:
    """SAP selection: the most central ``keep_count(V, ratio)`` tokens; ratio 1.0 keeps every token.

    ``position_correction`` ranks by :func:`sapindex.sap.causal_correction` of the centrality
    with each token's sequence rank (causal decoders only; see there).
    """
    kept, scores = _select(page.centrality, page.layout, keep_ratio, position_correction)
    return PrunedPage(page.embeddings[kept], kept.astype(np.int32), page.grid, page.n_visual,
                      page.layout.global_grid, scores[kept])


def reduce(page: PageTokens, method: str, keep_ratio: float, budget_scale: float | None = None) -> PrunedPage:
    """What index ``method`` (:data:`sapindex.compression.INDEX_METHODS`, or ``sap-poscorr``) stores of a
    page: :func:`prune` for SAP's selection, :func:`sapindex.compression.reduce_page` for the others."""
    if method in ("sap", "sap-poscorr"):
        return prune(page, keep_ratio, position_correction=method == "sap-poscorr")
    kept = reduce_page(page.embeddings, page.centrality, method, keep_ratio, budget_scale=budget_scale)
    assert kept.positions is not None  # reduce_page places every row it stores
    return PrunedPage(kept.vectors, kept.positions, page.grid, page.n_visual, page.layout.global_grid, kept.scores,
                      kept.cover)


def _select(centrality: np.ndarray, layout: TokenLayout, keep_ratio: float, position_correction: bool):
    """SAP's kept tokens of one page from its spatial-order centrality: ``(kept [k] ascending spatial
    indices, every token's ranking score)``; the one rule of both modes."""
    scores = sap.ranking_scores(centrality, layout.seq_rank if position_correction else None)
    return sap.top_k(scores, keep_ratio), scores


class Encoder:
    """Encode pages and queries with a bundle, on CPU or CUDA.

    ``graphs``: the bundle graphs loaded at once (the others load on first use); a query encoder
    needs only ``("text",)``. ``spinning=False``: ORT's threads sleep between runs (for a process
    that scores with numpy right after encoding: ``sapindex.runtime.session``).

    Args:
        bundle: The opened bundle whose graphs and preprocessing encode.
        device: ``cpu`` or ``cuda`` (CUDA needs onnxruntime-gpu).
        threads: ONNX Runtime intra-op threads per session; None leaves ORT's default.
        graphs: The graph roles loaded (and checked) now: ``vision`` and ``text`` (``text`` is the
            head and tail graphs of a format-2 bundle); the others load on first use.
        spinning: Whether ORT's threads spin between runs; False frees the cores for other work.

    Raises:
        SapIndexError: The family has no runtime preprocessing here, the tokenizer cannot be loaded,
            the device is unknown or not offered by the installed onnxruntime, or a loaded graph
            cannot be read or disagrees with the manifest (outputs, inputs).
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None,
                 graphs: tuple[str, ...] = ("vision", "text"), spinning: bool = True):
        self.bundle = bundle
        self.preprocessor = preprocessor_for(bundle)
        self.sessions = BundleSessions(bundle, device=device, threads=threads, preload=graphs, spinning=spinning)

    def encode_pages(self, images) -> list[PageTokens]:
        """Every visual token of each page, before pruning, in spatial order (what the eval and the
        baselines need; an index run stores :meth:`encode_pages_pruned`'s output instead).

        Args:
            images (Sequence[PIL.Image.Image]): A non-empty batch of page images.

        Returns:
            One :class:`PageTokens` per image, in input order: ``[V, dim]`` embeddings, ``[V]``
            centrality, the token layout and ``[V]`` EOS attention.

        Raises:
            SapIndexError: ``images`` is empty, the preprocessing refuses a page's size (no pixels, an
                extreme aspect ratio), or a page's ids hold another number of image tokens than its layout.
        """
        batch = self.preprocessor.pages(images)
        emb, cent, eos = self.sessions.run_pages(batch)  # [B, S, dim], [B, S], [B, S]
        pages = []
        for b, (pos, layout) in enumerate(self.preprocessor.layouts(batch)):
            # sequence order (graph outputs at the visual positions) -> spatial order
            pages.append(PageTokens(layout.to_spatial(emb[b, pos], axis=0), layout.to_spatial(cent[b, pos]),
                                     layout, layout.to_spatial(eos[b, pos])))
        return pages

    def encode_pages_pruned(self, images, options: IndexOptions) -> list[PrunedPage]:
        """Pages straight to what the index stores, as ``options`` say (keep ratio, method, mode,
        budget scale; a method of None is the default).

        ``exact``: :meth:`encode_pages` then :func:`reduce` with the index method (``sap``:
        :func:`prune`). ``fast`` (format-2 bundles, ``sap`` only): the head runs on every token and
        SAP picks the kept tokens from its centrality, as in exact mode (the same kept set); then
        the tail runs on the page's non-visual tokens (the prompt) and the kept visual tokens only,
        at their original positions (:func:`sapindex.runtime.session.tail_feed`). Their vectors are
        an approximation of exact mode's: in the layers after the window they attend the kept tokens
        only (measured in bench/RESULTS.md, "Fast mode").

        Args:
            images (Sequence[PIL.Image.Image]): A non-empty batch of page images.
            options: The run's options; only ``keep_ratio``, ``method``, ``mode``, ``budget_scale``
                and ``position_correction`` (``sap-poscorr``) are read here.

        Returns:
            One :class:`PrunedPage` per image, in input order: the kept ``[k, dim]`` vectors, their
            ascending spatial positions and the scores they were ranked by.

        Raises:
            SapIndexError: The method is unknown, not available in fast mode or lacks (or wrongly
                has) a budget scale; fast mode on a format-1 bundle; ``images`` is empty or holds a
                page the preprocessing refuses (as :meth:`encode_pages`).
        """
        method, keep_ratio = options.method or DEFAULT_METHOD, options.keep_ratio
        check_method(method, mode=options.mode, budget_scale=options.budget_scale)
        if options.mode == "exact":
            return [reduce(page, method, keep_ratio, options.budget_scale) for page in self.encode_pages(images)]
        check_fast_mode(self.bundle)
        batch = self.preprocessor.pages(images)
        head = self.sessions.run_head(batch)
        valid = batch["attention_mask"].astype(bool)
        picked, tokens = [], []
        for b, (pos, layout) in enumerate(self.preprocessor.layouts(batch)):
            kept, scores = _select(layout.to_spatial(head["centrality"][b, pos]), layout, keep_ratio,
                                   options.position_correction)
            kept_seq = layout.to_spatial(pos)[kept]  # their sequence positions
            keep = valid[b].copy()
            keep[pos] = False
            keep[kept_seq] = True
            tokens.append(np.flatnonzero(keep))
            picked.append((kept, kept_seq, scores, layout))
        emb = self.sessions.run_tail(tail_feed(head, tokens))  # [B, L, dim]
        return [PrunedPage(emb[b, np.searchsorted(tokens[b], kept_seq)], kept.astype(np.int32), layout.grid,
                           len(layout.order), layout.global_grid, scores[kept])
                for b, (kept, kept_seq, scores, layout) in enumerate(picked)]

    def query_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each query feeds the text graph (prefix and augmentation tokens included).

        Args:
            texts: The queries, as plain strings.

        Returns:
            The token count of each query, in input order (tokenized only: no graph runs).

        Raises:
            SapIndexError: ``texts`` is empty.
        """
        return self.preprocessor.queries(texts)["attention_mask"].sum(axis=1).astype(int).tolist()

    def encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        """One ``[M, dim]`` array per query, padding dropped.

        Args:
            texts: The queries, as plain strings, encoded in one text-graph call.

        Returns:
            One float ``[M, dim]`` array per query, in input order (``M``: its tokens, padding dropped).

        Raises:
            SapIndexError: ``texts`` is empty.
        """
        batch = self.preprocessor.queries(texts)
        feed = {**batch, **self.preprocessor.query_extras(batch, self.sessions.hidden)}
        emb = self.sessions.run_queries(feed)  # [B, M, dim]
        mask = batch["attention_mask"].astype(bool)
        return [emb[i][mask[i]] for i in range(len(texts))]
