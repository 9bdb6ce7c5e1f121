"""Joining a Ray cluster for one indexing run, and checking that it can hold the run's actors.

Why a module of its own: how ``--ray`` is spelled (``local``, ``auto``, an address), the quiet
settings a CLI run needs (Ray and Ray Data log to stderr by default and draw their own bars,
which would tear sapindex's bar apart) and the resource check live here, away from the pipeline.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from sapindex.errors import SapIndexError

INSTALL_HINT = 'pip install "sapindex[ray]" (on the driver and on every node)'


@dataclass(frozen=True)
class Resources:
    """What each encoder actor reserves; rendering tasks take one CPU each."""

    encoders: int
    cpus_per_encoder: float
    gpus_per_encoder: float

    def check(self, cluster: dict) -> None:
        """Refuse a cluster too small for the actor pool plus one rendering task (Ray Data would
        wait for the missing resources forever)."""
        cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
        need_cpus = self.encoders * self.cpus_per_encoder + 1
        need_gpus = self.encoders * self.gpus_per_encoder
        if cpus < need_cpus or gpus < need_gpus:
            raise SapIndexError(
                f"--ray: {self.encoders} encoder(s) x ({self.cpus_per_encoder:g} CPU, {self.gpus_per_encoder:g} GPU) "
                f"plus 1 CPU for rendering need {need_cpus:g} CPUs and {need_gpus:g} GPUs, but the cluster has "
                f"{cpus:g} CPUs and {gpus:g} GPUs; use fewer --encoders or --threads, or a larger cluster")


def import_ray():
    """``ray`` with Ray Data, or a one-line error saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SapIndexError(f"--ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def connected(address: str, resources: Resources):
    """Connect (or start a one-machine cluster) for the duration of the block; yields ``ray``.

    ``address``: ``local`` starts a private cluster on this machine that ends with the run (and
    dies with this process, even under kill -9); ``auto`` joins the cluster this machine belongs
    to (``ray start``); anything else is a Ray address (``host:6379``, ``ray://head:10001``).
    """
    ray = import_ray()
    try:
        with warnings.catch_warnings(), _stderr_muted():
            # lancedb (the index is open) warns at every fork; Ray's forks exec at once
            warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
            _init(ray, address, resources)
    except (ConnectionError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if address == "auto" and isinstance(err, ConnectionError):
            reason = "no running Ray cluster found from this machine (start one with `ray start`, or use --ray local)"
        raise SapIndexError(f"--ray {address}: cannot join a Ray cluster: {reason}") from None
    restore = _cluster_messages_to_stderr()
    try:
        resources.check(ray.cluster_resources())
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws one bar for the whole cluster
        context.print_on_execution_start = False
        context.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        yield ray
    finally:
        ray.shutdown()
        restore()


def _cluster_messages_to_stderr():
    """Ray prints the cluster's messages to the driver (a worker died, its task is retried) on
    stdout, where they would corrupt ``--json``: send them to stderr. Returns the undo."""
    module = sys.modules.get("ray._private.worker")
    original = getattr(module, "print_to_stdstream", None)
    if original is None:  # another Ray layout: leave it as it is
        return lambda: None
    module.print_to_stdstream = lambda data, *args, **kwargs: original({**data, "is_err": True}, *args, **kwargs)
    return lambda: setattr(module, "print_to_stdstream", original)


@contextmanager
def _stderr_muted():
    """File descriptor 2 to /dev/null: Ray's C++ core writes there directly at start (a line saying
    which log level it read); a failure to start still reaches the user as the exception."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _init(ray, address: str, resources: Resources) -> None:
    # Ray's C++ core logs to the driver's stderr (e.g. a line per Ray Data actor about its
    # constructor arguments); its log files keep everything. A user's own setting wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address == "local":
        cpus = max(os.cpu_count() or 1, math.ceil(resources.encoders * resources.cpus_per_encoder + 1))
        ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
