"""``python -m sapindex.cli``: the same entry point as the ``sapindex`` script."""

from __future__ import annotations

from sapindex.cli.main import main

main()
