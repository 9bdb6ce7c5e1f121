"""Rendering for people: aligned key/value tables, byte sizes, and progress bars on stderr.

The library reports progress in one shape, ``progress(done, total)`` with absolute counts
(calibration, evaluation, indexing, where the total grows while inputs are walked), so one
:class:`ProgressBar` draws every command's bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click


def warn(message: str) -> None:
    """``warning: <message>`` on stderr: one line, the command goes on."""
    click.echo(f"warning: {message}", err=True)


def kv_table(rows: Iterable[tuple[str, object]], width: int) -> None:
    """Print ``key value`` lines with the keys left-aligned in ``width`` columns."""
    for key, value in rows:
        click.echo(f"{key:<{width}} {value}")


def size(n: float) -> str:
    """Bytes for people: 1000-based units."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def agreement(validation: dict) -> str:
    """A bundle's validation figures beyond max |diff| (cosine, kept-set Jaccard), as export and
    inspect print them; empty for bundles exported before these were recorded."""
    if "min_cosine_embeddings" not in validation:
        return ""
    return (f"smallest cosine {validation['min_cosine_embeddings']:.4f}, kept-set Jaccard at 0.1 "
            f"{validation['min_kept_jaccard_at_0.1']:.3f} (mean {validation['mean_kept_jaccard_at_0.1']:.3f})")


def quantized(quantization: dict) -> str:
    """How an int8 bundle was made, labelled as the approximation it is."""
    return (f"{quantization.get('scheme', 'dynamic')}: {quantization['weights']} weights, "
            f"{quantization['activations']} activations (an approximation of the fp32 model)")


class ProgressBar:
    """A tqdm bar on stderr, hidden when ``quiet`` (``--json``) or when stderr is not a terminal.

    Use as a context manager and hand the library :meth:`reach` as its ``progress(done, total)``.
    """

    def __init__(self, label: str, unit: str, quiet: bool = False) -> None:
        self.label, self.unit, self.quiet = label, unit, quiet
        self._bar = None

    def __enter__(self) -> ProgressBar:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(desc=self.label, unit=self.unit, disable=self.quiet or None, file=sys.stderr,
                         dynamic_ncols=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def note(self, message: str) -> None:
        """A status line above the bar (a library's ``log``), so that it does not break the bar."""
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def reach(self, done: int, known: int) -> None:
        """``progress(done, known)``: ``done`` items of the ``known`` so far (the total may still grow,
        as while ``index`` walks its inputs)."""
        self._bar.total = max(known, done)
        self._bar.n = done
        self._bar.refresh()
