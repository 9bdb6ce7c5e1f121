"""``sapindex serve``: an HTTP JSON search service over one index (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from sapindex.cli._options import device_option, two_stage_options

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _check_port(host: str, port: int) -> None:
    from sapindex.errors import SapIndexError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SapIndexError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _read_token(path: Path) -> str:
    from sapindex.errors import SapIndexError

    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SapIndexError(f"{path}: cannot read the token file ({exc.__class__.__name__})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise SapIndexError(f"{path}: the token must be one line of at least 16 characters without spaces")
    return token


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle to encode queries (default: the one the index was built with).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but localhost needs --token-file.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="A file holding the bearer token every request must send (Authorization: Bearer ...).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads (default: all cores).")
@two_stage_options()
@device_option()
def serve(index_dir, bundle, host, port, token_file, threads, nprobe, kprime, depth, device):
    """Serve an index over HTTP: the search page at GET / (open it in a browser), and POST /search,
    POST /search/batch, GET /explain, GET /page, GET /health, GET /stats.

    The bundle and the index's kept vectors are loaded once; pages that an `index` run adds
    meanwhile become searchable without a restart.

    \b
    Example:
      sapindex serve myindex --port 8000
      curl -s localhost:8000/search -H 'content-type: application/json' \\
           -d '{"query": "what was the 2023 revenue?", "k": 5}'
    """
    from sapindex.errors import SapIndexError

    try:
        import uvicorn

        from sapindex.serve.app import create_app
    except ImportError as exc:
        raise SapIndexError(f"serve needs the serve extra ({exc.name} is missing): "
                            f"pip install \"sapindex[serve]\"") from None
    from sapindex.search import Searcher

    token = _read_token(token_file) if token_file else None
    if host not in LOCAL_HOSTS and token is None:
        raise SapIndexError(f"--host {host} exposes the index beyond this machine; give --token-file "
                            "(or put an authenticating proxy in front and listen on 127.0.0.1)")
    _check_port(host, port)
    searcher = Searcher.open(index_dir, bundle, device, threads, nprobe=nprobe, kprime=kprime, depth=depth)
    stats = searcher.stats()
    click.echo(f"serving {index_dir} ({stats['pages']} pages, version {stats['version']}) on "
               f"http://{host}:{port}/{' with a bearer token' if token else ''} (open it in a browser to search)",
               err=True)
    with searcher:
        uvicorn.run(create_app(searcher, token), host=host, port=port, log_level="warning", access_log=False)
