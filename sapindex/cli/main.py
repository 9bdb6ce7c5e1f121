"""The ``sapindex`` command line: the group, its commands, and the entry point's error policy.

Exit codes: 0 success; 1 internal error (a bug: please report it, rerun with
``SAPINDEX_DEBUG=1`` for the traceback); 2 bad input or environment (the message names the
file or row and the reason); 3 ``index`` stored what it could and names the inputs it could not
read; 130 interrupted.

Each command lives in its own module (``sapindex/cli/<verb>.py``); this module imports them,
never the reverse.
"""

from __future__ import annotations

import os
import sys

import click

from sapindex import __version__
from sapindex.cli.calibrate import calibrate
from sapindex.cli.compact import compact
from sapindex.cli.demo import demo
from sapindex.cli.dump import dump
from sapindex.cli.eval import eval_command
from sapindex.cli.export import export
from sapindex.cli.index import index
from sapindex.cli.info import info
from sapindex.cli.inspect import inspect
from sapindex.cli.optimize import optimize
from sapindex.cli.prune import prune
from sapindex.cli.push import push
from sapindex.cli.remove import remove
from sapindex.cli.search import search
from sapindex.cli.serve import serve
from sapindex.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, SapIndexError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sapindex")
def cli() -> None:
    """sapindex: Structural Anchor Pruning for ColPali-family visual document retrievers.

    \b
    Example:
      sapindex demo --out demo/
      sapindex calibrate --model /models/colqwen2-v1.0-merged --pairs calib.jsonl --out calib/
    """


for command in (calibrate, info, export, index, search, serve, optimize, prune, remove, compact, push, dump,
                eval_command, inspect, demo):
    cli.add_command(command)


def main() -> None:
    """Console entry point: user errors are one line and exit 2, never a traceback."""
    try:
        rc = cli.main(standalone_mode=False)
        if isinstance(rc, int):
            sys.exit(rc)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SapIndexError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: keep the user's terminal clean unless asked
        if os.environ.get("SAPINDEX_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with SAPINDEX_DEBUG=1 for details)", err=True)
        sys.exit(EXIT_INTERNAL)
