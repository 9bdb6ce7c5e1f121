"""Options that several commands share, declared once so that they read the same in every ``--help``.

Each is a factory called at the decorator (``@json_option()``); where the help text differs per
command it is the argument, the flag name, type and default never do.
"""

from __future__ import annotations

from pathlib import Path

import click

from sapindex.sap import DEFAULT_KEEP_RATIO

DEVICES = ("cpu", "cuda")


def json_option(help: str = "Print JSON."):
    """``--json``: machine-readable output instead of the summary for people (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def device_option():
    """``--device``: where the model or the ONNX graphs run."""
    return click.option("--device", default="cpu", show_default=True, type=click.Choice(list(DEVICES)))


def base_model_option(help: str = "Local base of a LoRA adapter."):
    """``--base-model``: the local base checkpoint that a LoRA adapter directory needs."""
    return click.option("--base-model", type=click.Path(path_type=Path), default=None, help=help)


def keep_ratio_option(help: str = "Fraction of visual tokens kept per page."):
    """``--keep-ratio``: the SAP operating point, by default the paper's."""
    return click.option("--keep-ratio", default=DEFAULT_KEEP_RATIO, show_default=True, help=help)


def qdrant_options(required: bool):
    """``--qdrant``, ``--collection``, ``--api-key-file``: where a Qdrant collection lives."""
    def decorate(fn):
        fn = click.option("--api-key-file", type=click.Path(path_type=Path), default=None,
                          help="File holding the Qdrant cluster's API key (one line); TLS is the URL's (https).")(fn)
        fn = click.option("--collection", required=required, default=None, help="The Qdrant collection.")(fn)
        return click.option("--qdrant", required=required, default=None, metavar="URL|DIR",
                            help="A Qdrant server URL, or a directory for Qdrant's local mode.")(fn)
    return decorate


def two_stage_options():
    """``--nprobe``, ``--kprime``, ``--depth``: the two-stage search's recall against its time (``two_stage``)."""
    def decorate(fn):
        for name, default, what in (("depth", 512, "pages rescored exactly per query"),
                                    ("kprime", 1024, "vectors retrieved per query token"),
                                    ("nprobe", 32, "inverted lists probed per query token")):
            fn = click.option(f"--{name}", type=click.IntRange(min=1), default=default, show_default=True,
                              help=f"Two-stage search (an optimized index): {what}; more is slower and finds more "
                                   "of the exact top pages (bench/RESULTS.md 'A million pages').")(fn)
        return fn
    return decorate
