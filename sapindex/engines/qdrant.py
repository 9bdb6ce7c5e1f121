"""Qdrant as the search engine of a pruned index: push its pages, keep the collection in step, search it.

Why: ``sapindex serve`` is one process on one machine. Teams whose archive outgrows it, or who
already run Qdrant, get sharding and replication from the engine; sapindex feeds it the 10x smaller
SAP vectors and encodes queries locally (torch-free), and Qdrant ranks.

The collection holds one point per page with one multivector, named for the bundle
(``sap-<fingerprint[:12]>``): the page's kept vectors, compared by MaxSim over dot products (the
stored vectors are L2-normalised, as colpali-engine's are, so the score is the one ``sapindex
search`` computes), stored as float16. The collection's metadata records the bundle fingerprint,
the dimension and the bundle's path, so that a push from another bundle is refused and a search
finds its query encoder. A point's id is a UUID derived from the page's identity
``(content_hash, page)``: a rerun writes the same points, and points already there with the same
stamp (indexed_at, n_kept, keep_ratio, method, mode) are skipped, so a killed push resumes where it
stopped. ``sync`` deletes the points of pages the index no longer holds (``sapindex remove``, a
changed file).

Qdrant's local mode (a directory or ``:memory:``, no server) takes the same client calls and scores
exactly; it keeps no quantization and stores the given float values. A server searches its HNSW
graph over the multivectors (approximate; ``exact=True`` asks it for a full scan).
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sapindex import __version__
from sapindex.errors import SapIndexError
from sapindex.index.store import Hit, Index
from sapindex.runtime.encoder import Encoder
from sapindex.search.scan import TopK
from sapindex.search.searcher import MAX_QUERY_TOKENS, QueryEncoding, query_encoder

__all__ = ["QUANTIZATIONS", "PushReport", "QdrantSearcher", "connect", "payload", "point_id", "push"]

QUANTIZATIONS = ("none", "scalar", "binary")
DEFAULT_BATCH = 64  # points per upsert: ~64 x 74 x 128 floats of JSON, well under a server's 32 MB request limit
_ID_SPACE = uuid.UUID("5a9d1e4c-2f0b-4c8e-9a57-0d3b8f6e1c27")  # sapindex's namespace for point ids
_STAMP = ("indexed_at", "n_kept", "keep_ratio", "method", "mode")
_SCROLL = 1024


def point_id(content_hash: str, page: int) -> str:
    """The point id of page ``page`` of the file with ``content_hash``: the same on every push."""
    return str(uuid.uuid5(_ID_SPACE, f"{content_hash}:{int(page)}"))


def vector_name(fingerprint: str) -> str:
    """The collection's multivector, named for the bundle that made the vectors."""
    return f"sap-{fingerprint[:12]}"


def connect(target: str, api_key_file: str | Path | None = None, timeout: int = 30,
            warn: Callable[[str], None] | None = None) -> Any:
    """A Qdrant client for ``target``, checked to answer: a URL (``http(s)://host:6333``), a
    directory (local mode, created if missing) or ``:memory:``.

    Args:
        target: Where the collection lives.
        api_key_file: A file holding the cluster's API key (one line), for secured clusters.
        timeout: Seconds to wait for the server per request.
        warn: Told, in one line, that an API key goes to an ``http://`` URL (unencrypted); None: not told.

    Returns:
        A ``qdrant_client.QdrantClient``.

    Raises:
        SapIndexError: qdrant-client is not installed, the key file is unreadable or empty, the
            server cannot be reached or refuses the key, or a local directory is in use.
    """
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise SapIndexError('Qdrant needs qdrant-client: pip install "sapindex[qdrant]"') from None
    key = _api_key(api_key_file)
    remote = target.startswith(("http://", "https://"))
    if key and not remote:
        raise SapIndexError(f"{target}: --api-key-file is for a server URL, not local mode")
    if key and target.startswith("http://") and warn:
        warn(f"{target}: the API key travels unencrypted; use https:// (TLS is the cluster's)")
    try:
        if remote:
            with warnings.catch_warnings():  # said above, in one line
                warnings.simplefilter("ignore", UserWarning)
                client = QdrantClient(url=target, api_key=key, timeout=timeout, check_compatibility=False)
        elif target == ":memory:":
            client = QdrantClient(location=":memory:")
        else:
            client = QdrantClient(path=str(target))
    except (RuntimeError, OSError) as exc:  # local mode: the directory is locked by another process
        raise SapIndexError(f"{target}: {_first_line(exc)}") from None
    _call(target, client.get_collections)
    return client


def _api_key(path: str | Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SapIndexError(f"{path}: cannot read the API key ({exc.__class__.__name__})") from None
    if not key or "\n" in key:
        raise SapIndexError(f"{path}: the API key file must hold the key on one line")
    return key


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def _call(target: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(...)`` with the client's failures as one-line SapIndexErrors naming ``target``."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        return fn(*args, **kwargs)
    except UnexpectedResponse as exc:
        if exc.status_code in (401, 403):
            raise SapIndexError(f"{target}: Qdrant refused the request ({exc.status_code} {exc.reason_phrase}): "
                                "check --api-key-file") from None
        raise SapIndexError(f"{target}: Qdrant answered {exc.status_code} {exc.reason_phrase}: "
                            f"{_first_line(Exception(exc.content.decode('utf-8', 'replace')))}") from None
    except ResponseHandlingException as exc:
        raise SapIndexError(f"{target}: cannot reach Qdrant ({_first_line(exc.source or exc)})") from None
    except ValueError as exc:  # local mode reports bad requests as ValueError
        raise SapIndexError(f"{target}: {_first_line(exc)}") from None


# ---------------------------------------------------------------------------------------- the collection


def _collection_meta(index: Index) -> dict:
    return {"bundle_fingerprint": index.bundle_fingerprint, "dim": index.dim,
            "bundle_path": index.meta.get("bundle_path"), "builtin": bool(index.meta.get("builtin")),
            "sapindex_version": __version__}


def _recorded(client: Any, target: str, collection: str) -> dict | None:
    """The sapindex metadata of ``collection`` (None when it does not exist); refuses a foreign one."""
    if not _call(target, client.collection_exists, collection):
        return None
    info = _call(target, client.get_collection, collection)
    meta = (info.config.metadata or {}).get("sapindex")
    if not meta:
        raise SapIndexError(f"{target}: collection {collection!r} was not made by sapindex push; name another")
    return meta


def ensure_collection(client: Any, target: str, collection: str, index: Index, quantization: str = "none",
                      shards: int | None = None, replicas: int | None = None) -> str:
    """Create ``collection`` for ``index``'s vectors, or check that it holds vectors of the same
    bundle and dimension; return the multivector's name. Nothing is written when refused.
    ``shards`` and ``replicas`` (None: the server's defaults) apply when it is created.

    Raises:
        SapIndexError: The collection exists and was made by another tool, another bundle or
            another dimension; the quantization is unknown.
    """
    from qdrant_client import models

    if quantization not in QUANTIZATIONS:
        raise SapIndexError(f"quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
    name = vector_name(index.bundle_fingerprint)
    meta = _recorded(client, target, collection)
    if meta is not None:
        if meta["bundle_fingerprint"] != index.bundle_fingerprint:
            raise SapIndexError(
                f"{target}: collection {collection!r} holds vectors of bundle {meta['bundle_fingerprint'][:12]}, "
                f"{index.path} is of {index.bundle_fingerprint[:12]}; push it to another collection")
        if int(meta["dim"]) != index.dim:
            raise SapIndexError(f"{target}: collection {collection!r} holds {meta['dim']}-d vectors, "
                                f"{index.path} has {index.dim}-d")
        return name
    quantizer = {
        "none": None,
        "scalar": models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, always_ram=True)),
        "binary": models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True)),
    }[quantization]
    params = models.VectorParams(
        size=index.dim, distance=models.Distance.DOT, datatype=models.Datatype.FLOAT16,
        multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM))
    _call(target, client.create_collection, collection, vectors_config={name: params}, shard_number=shards,
          replication_factor=replicas, quantization_config=quantizer, metadata={"sapindex": _collection_meta(index)})
    return name


# ---------------------------------------------------------------------------------------- push


@dataclass(frozen=True)
class PushReport:
    """What a push did.

    Attributes:
        pushed: Pages written (new or changed since the last push).
        skipped: Pages already in the collection with the same stamp.
        deleted: Points deleted because the index no longer holds their page (``sync``).
        pages: Pages the index holds.
        seconds: Wall time of the push.
    """

    pushed: int
    skipped: int
    deleted: int
    pages: int
    seconds: float


def _stamp(fields: dict) -> str:
    """What says a point is the index row's current version: its payload's stamp fields, as one string."""
    return json.dumps([fields.get(k) for k in _STAMP])


def _payload_value(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v.item() if isinstance(v, np.generic) else v


def payload(row: dict) -> dict:
    """The payload of a page's point: the index row's fields that identify and describe the page."""
    keys = ("path", "page", "width", "height", "keep_ratio", "method", "mode", "indexed_at", "content_hash",
            "bundle_fingerprint", "n_kept", "n_visual")
    return {k: _payload_value(row[k]) for k in keys}


def _stored(client: Any, target: str, collection: str) -> dict[str, str]:
    """``{point id: stamp}`` of every point in the collection (one scroll of the stamp fields)."""
    out: dict[str, str] = {}
    offset = None
    while True:
        records, offset = _call(target, client.scroll, collection, limit=_SCROLL, offset=offset,
                                with_payload=list(_STAMP), with_vectors=False)
        for r in records:
            out[str(r.id)] = _stamp(r.payload)
        if offset is None:
            return out


def push(client: Any, target: str, collection: str, index: Index, *, batch_size: int = DEFAULT_BATCH,
         sync: bool = False, quantization: str = "none", shards: int | None = None, replicas: int | None = None,
         progress: Callable[[int, int], None] | None = None) -> PushReport:
    """Upsert every page of ``index`` into ``collection`` (created if needed), skipping pages
    already there unchanged; with ``sync``, delete the points of pages the index no longer holds.

    Args:
        client: A client from :func:`connect`.
        target: What ``client`` points at, for messages.
        collection: The collection's name.
        index: The index to push (a reader).
        batch_size: Points per upsert request.
        sync: Also delete points whose page the index no longer holds.
        quantization: ``none``, ``scalar`` (int8) or ``binary``: Qdrant's in-RAM quantization, applied
            when the collection is created.
        shards: Shards of a new collection, spread over the cluster's nodes; None: the server's default.
        replicas: Copies of each shard in a new collection; None: the server's default (1).
        progress: Called as ``progress(pages_done, pages_total)``.

    Returns:
        What was written, skipped and deleted.

    Raises:
        SapIndexError: The collection is refused (:func:`ensure_collection`), or Qdrant fails a request.
    """
    import time

    from qdrant_client import models

    if batch_size < 1:
        raise SapIndexError(f"batch size must be positive, got {batch_size}")
    started = time.perf_counter()
    name = ensure_collection(client, target, collection, index, quantization, shards, replicas)
    stored = _stored(client, target, collection)
    total = index.count_pages()
    held: set[str] = set()
    pushed = skipped = done = 0
    batch: list = []

    def flush() -> None:
        if batch:
            _call(target, client.upsert, collection, points=batch, wait=True)
            batch.clear()

    for row in index.iter_rows():
        pid = point_id(row["content_hash"], row["page"])
        held.add(pid)
        done += 1
        fields = payload(row)
        if stored.get(pid) == _stamp(fields):
            skipped += 1
        else:
            batch.append(models.PointStruct(id=pid, vector={name: row["vectors"].tolist()}, payload=fields))
            pushed += 1
            if len(batch) >= batch_size:
                flush()
        if progress and (done % batch_size == 0 or done == total):
            progress(done, total)
    flush()
    stale = [pid for pid in stored if pid not in held] if sync else []
    for i in range(0, len(stale), _SCROLL):
        _call(target, client.delete, collection,
              points_selector=models.PointIdsList(points=list(stale[i:i + _SCROLL])), wait=True)
    if progress:
        progress(done, max(total, done))
    return PushReport(pushed=pushed, skipped=skipped, deleted=len(stale), pages=done,
                      seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------- search


class QdrantSearcher(QueryEncoding):
    """Search a collection that ``sapindex push`` filled: queries encoded here by the bundle, ranked by Qdrant.

    >>> with QdrantSearcher.open("http://qdrant:6333", "archive") as s:
    ...     hits = s.search("what was the 2023 revenue?", k=5)

    The hits are the :class:`~sapindex.index.store.Hit` s of :class:`~sapindex.search.Searcher`:
    (path, page, score), the score being Qdrant's MaxSim over the stored vectors, best first, ties
    broken by (path, page).

    Args:
        client: A client from :func:`connect`.
        target: What ``client`` points at, for messages.
        collection: The collection's name.
        encoder: A query encoder of the collection's bundle (:meth:`open` checks the fingerprint).
        fingerprint: The bundle fingerprint the collection records.
        max_query_tokens: Queries longer than this many tokens are refused; default 512.
    """

    def __init__(self, client: Any, target: str, collection: str, encoder: Encoder, fingerprint: str,
                 max_query_tokens: int = MAX_QUERY_TOKENS):
        super().__init__(encoder, max_query_tokens)
        self.client, self.target, self.collection = client, target, collection
        self.vector = vector_name(fingerprint)

    @classmethod
    def open(cls, target: str, collection: str, bundle: str | Path | None = None, *,
             api_key_file: str | Path | None = None, device: str = "cpu", threads: int | None = None,
             warn: Callable[[str], None] | None = None, **kwargs) -> QdrantSearcher:
        """Connect to ``target``, read the collection's record and open its bundle's query encoder.

        Args:
            target: A Qdrant URL, a local-mode directory or ``:memory:``.
            collection: The collection ``sapindex push`` filled.
            bundle: The bundle to encode queries with; None: the one the collection records.
            api_key_file: A file holding the cluster's API key.
            device: ``cpu`` or ``cuda``, where queries are encoded.
            threads: ONNX Runtime threads for the query encoder; None: its default.
            warn: See :func:`connect`.
            **kwargs (int): ``max_query_tokens``.

        Returns:
            The searcher; close it (or use ``with``) when done.

        Raises:
            SapIndexError: Qdrant cannot be reached or refuses the key; the collection does not exist
                or was not made by ``sapindex push``; the bundle is missing or of another fingerprint.
        """
        client = connect(target, api_key_file, warn=warn)
        try:
            meta = _recorded(client, target, collection)
            if meta is None:
                raise SapIndexError(f"{target}: no collection {collection!r}; fill it with sapindex push")
            encoder = query_encoder(target, f"collection {collection!r}", meta["bundle_fingerprint"], meta, bundle,
                                    device, threads)
        except BaseException:
            client.close()
            raise
        return cls(client, target, collection, encoder, meta["bundle_fingerprint"], **kwargs)

    def close(self) -> None:
        """Close the client (also on leaving a ``with`` block)."""
        self.client.close()

    def __enter__(self) -> QdrantSearcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, query: str, k: int = 10, *, exact: bool = False) -> list[Hit]:
        """The ``k`` best pages for ``query`` (see :meth:`search_many`)."""
        return self.search_many([query], k, exact=exact)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, *, exact: bool = False,
                    names: Sequence[str] | None = None) -> list[list[Hit]]:
        """The ``k`` best pages for each query, in one batch request to Qdrant.

        Args:
            queries: The query texts.
            k: How many pages per query at most, a positive integer.
            exact: Ask Qdrant for a full scan instead of its HNSW graph (a server; local mode is exact).
            names: What each query is called in an error; None: ``query 1``, ``query 2``, ...

        Returns:
            One list of up to ``k`` hits per query, in input order, best first.

        Raises:
            SapIndexError: A query is refused, ``k`` is not a positive integer, or Qdrant fails the request.
        """
        k = self.checked_k(k)
        return self.search_vectors(self.encode(queries, names), k, exact=exact)

    def search_vectors(self, query_vectors: Sequence[np.ndarray], k: int = 10, *,
                       exact: bool = False) -> list[list[Hit]]:
        """:meth:`search_many` for queries already encoded (``[M, dim]`` each)."""
        from qdrant_client import models

        requests = [models.QueryRequest(query=np.asarray(q, np.float32).tolist(), using=self.vector, limit=k,
                                        with_payload=["path", "page"], params=models.SearchParams(exact=exact))
                    for q in query_vectors]
        answers = _call(self.target, self.client.query_batch_points, self.collection, requests=requests)
        return [_hits(a.points) for a in answers]


def _hits(points: list) -> list[Hit]:
    """Qdrant's points as hits, in the order every sapindex search gives (score, then path and page)."""
    top = TopK(None)
    top.add(np.array([p.score for p in points], np.float64), [p.payload["path"] for p in points],
            [int(p.payload["page"]) for p in points])
    return top.hits()
