"""``sapindex index --ray``: the local run's index, encoded by a Ray cluster (Ray Data).

What runs where:

- **driver** (this process): lists the inputs, hashes each file and checks which pages are stored
  (:mod:`sapindex.cluster.listing`), and is the index's only writer: each output batch is one
  atomic LanceDB commit through the same :class:`~sapindex.index.indexer.Recorder` as a local run
  (same schema, failure table, summary and progress);
- **rendering tasks** (one CPU each): a chunk of one file's pages, read from the path the driver
  listed (inputs must be readable at the same path on every node);
- **encoder actors** (``--encoders``, each ``--threads`` CPUs and ``--gpus-per-encoder`` GPUs):
  one ONNX Runtime session set each, fed ``batch_size`` pages; SAP pruning runs there too, so
  only the kept ~10 % of the vectors travel back.

Faults: Ray Data restarts a killed actor and retries its batch; a page that arrives twice is
stored once (the recorder drops it). A killed driver leaves the index as of its last commit, and
rerunning the command skips what is stored. The object store bounds memory: rendering waits when
encoders fall behind, and the driver holds at most two waves of page references.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from sapindex.cluster.connect import Resources, connected, import_ray
from sapindex.cluster.listing import Lister, Wave, plan_waves
from sapindex.cluster.workers import PageEncoder, decode, render_chunk
from sapindex.errors import SapIndexError
from sapindex.index.indexer import IndexSummary, Recorder, recording
from sapindex.index.sources import check_some_input_exists, iter_sources
from sapindex.runtime.options import IndexOptions

# the first wave: enough batches to keep every encoder busy a few rounds
FIRST_WAVE_BATCHES_PER_ENCODER = 4


def run_index_on_ray(bundle_path: str | Path, inputs: list[str], out: str | Path, options: IndexOptions | None = None,
                     *, address: str = "local", encoders: int = 1, gpus_per_encoder: float = 0.0, stdin=None,
                     progress: Callable[[int, int], None] | None = None) -> IndexSummary:
    """:func:`sapindex.index.indexer.run_index` on a Ray cluster; the same arguments, plus:

    Args:
        bundle_path: the exported bundle directory, as for ``run_index`` (readable at the same path
            on every node).
        inputs: files, directories, ``-`` or ``@list.txt``, as for ``run_index``; the files must be
            readable at the same path on every node.
        out: the index directory (on the driver); created, or resumed.
        options: as for ``run_index`` (None: the defaults); its device is set from ``gpus_per_encoder``.
        address: ``local`` (a private cluster on this machine, ended with the run), ``auto``
            (the cluster this machine joined with ``ray start``) or a Ray address.
        encoders: encoder actors (each holds the bundle's sessions: its memory, or its GPU share).
        gpus_per_encoder: GPUs each encoder reserves; above 0 the encoders run on CUDA (as does
            ``options.device="cuda"``, with one GPU each).
        stdin (TextIO | None): the stream a ``-`` input reads paths from (None: ``sys.stdin``).
        progress: called as ``progress(pages_done, pages_known)`` after each stored batch.

    ``options.threads`` is the CPUs each encoder reserves and the ONNX Runtime threads it runs
    (default 1).

    Returns:
        The run's :class:`~sapindex.index.indexer.IndexSummary`, as ``run_index`` returns it.

    Raises:
        SapIndexError: Ray Data is not installed; ``encoders`` is below 1 or ``gpus_per_encoder``
            below 0; the cluster cannot be joined or lacks the CPUs and GPUs the encoders and one
            rendering task need; a worker raised one (another bundle on a node, ...); or any refusal
            of ``run_index`` (no input exists, bundle, options, index).
    """
    import_ray()  # before the index is created
    options = options or IndexOptions()
    if encoders < 1:
        raise SapIndexError(f"--encoders must be at least 1, got {encoders}")
    if gpus_per_encoder < 0:
        raise SapIndexError(f"--gpus-per-encoder must be 0 or more, got {gpus_per_encoder}")
    if options.device == "cuda" and gpus_per_encoder == 0:
        gpus_per_encoder = 1.0
    threads = options.threads or 1
    options = options.replace(device="cuda" if gpus_per_encoder > 0 else "cpu", threads=threads)
    started = time.perf_counter()
    check_some_input_exists(inputs)
    resources = Resources(encoders, float(threads), float(gpus_per_encoder))
    with recording(bundle_path, out, options, progress, around=lambda: connected(address, resources)) as run:
        options, recorder = run.options, run.recorder
        batch_size = options.batch_size
        assert batch_size is not None  # resolved by IndexOptions.for_run
        sources = iter_sources(inputs, stdin=stdin if stdin is not None else sys.stdin)
        lister = Lister(plan_waves(sources, recorder.done, chunk_pages=batch_size,
                                   first_pages=batch_size * encoders * FIRST_WAVE_BATCHES_PER_ENCODER))
        encoder_args = {"bundle_path": str(Path(run.bundle.path).resolve()), "fingerprint": run.bundle.fingerprint,
                        "options": options}
        try:
            for wave in lister:
                _run_wave(run.context, wave, recorder, resources, encoder_args, options)
        finally:
            lister.stop()
        return recorder.finish(started)


def _run_wave(ray, wave: Wave, recorder: Recorder, resources: Resources, encoder_args: dict,
              options: IndexOptions) -> None:
    for info, already in wave.files:
        recorder.file_listed(info, already)
    recorder.store([], wave.failures)
    if not wave.chunks:
        return
    dataset = (
        ray.data.from_items(wave.chunks, override_num_blocks=len(wave.chunks))  # one rendering task per chunk
        .flat_map(render_chunk, fn_kwargs={"dpi": options.dpi}, num_cpus=1)
        .map_batches(PageEncoder, fn_constructor_kwargs=encoder_args, batch_size=options.batch_size,
                     batch_format="numpy",
                     compute=ray.data.ActorPoolStrategy(size=resources.encoders),
                     num_cpus=resources.cpus_per_encoder, num_gpus=resources.gpus_per_encoder or None)
    )
    try:
        with warnings.catch_warnings():
            # a wave smaller than the actor pool (the end of a run) is expected, not worth a warning
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                recorder.store(*decode(batch))
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        raise cause from None


def _user_error(err: BaseException) -> SapIndexError | None:
    """The :class:`SapIndexError` a worker raised (e.g. another bundle on a node), found through
    Ray's wrapping; None for anything else (a bug: it propagates with its traceback)."""
    seen = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, SapIndexError):
            return SapIndexError(str(cur).strip().splitlines()[-1] if str(cur).strip() else type(cur).__name__)
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    return None
