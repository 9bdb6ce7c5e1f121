"""Rendering for people: aligned key/value tables, byte sizes, and progress bars on stderr.

The library reports progress in two shapes: ``progress(n)`` (n more items done) with
``on_total(n)`` (the count, once known) from calibration and evaluation, and
``progress(done, known)`` (absolute, the total still growing while inputs are walked) from
indexing. :class:`ProgressBar` serves both, so every command draws the same bar.
"""

from __future__ import annotations

import sys
from typing import Iterable

import click


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


class ProgressBar:
    """A tqdm bar on stderr, hidden when ``quiet`` (``--json``) or when stderr is not a terminal.

    Use as a context manager; hand the library :meth:`advance` and :meth:`set_total`
    (``progress(n)`` / ``on_total(n)``) or :meth:`reach` (``progress(done, known)``).
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

    def advance(self, n: int) -> None:
        """``progress(n)``: ``n`` more items done."""
        self._bar.update(n)

    def set_total(self, n: int) -> None:
        """``on_total(n)``: the number of items, once the library knows it."""
        self._bar.reset(total=n)

    def reach(self, done: int, known: int) -> None:
        """``progress(done, known)``: ``done`` items of the ``known`` so far."""
        self._bar.total = max(known, done)
        self._bar.n = done
        self._bar.refresh()
