"""A Dask cluster on one machine in one command (``sims cluster up``): a scheduler and N workers.

The cluster is plain Dask distributed (a :class:`~distributed.SpecCluster` of a
:class:`~distributed.Scheduler` and :class:`~distributed.Nanny` workers, each worker a process
of its own that its nanny restarts if it dies), so anything that speaks to a Dask scheduler uses
it: ``sims index build --scheduler``, the sharded retrieval of ``sims serve``, and the synthesis
workers of ``sims serve --synthesis-cluster``.

Two kinds of worker:

- *general* workers, for any task (index builds, retrieval shards);
- *synthesis* workers, which also carry the resource :data:`SYNTHESIS_RESOURCE` (one unit
  each). Synthesis tasks ask for one unit, so they run only there, one at a time per worker,
  and the number of units is the number of synthesis replicas. A plain ``dask worker
  --resources synthesis=1`` is a synthesis worker too (docker-compose.yml starts them so).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The Dask worker resource that marks a synthesis replica (one unit = one synthesis at a time).
SYNTHESIS_RESOURCE = "synthesis"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSpec:
    """What ``sims cluster up`` starts.

    Attributes:
        workers: general workers (any task).
        synthesis_workers: workers that also carry one :data:`SYNTHESIS_RESOURCE` unit.
        host: interface the scheduler and workers bind (``0.0.0.0`` to serve other machines).
        port: scheduler port (0 = a free one).
        threads: threads per general worker (synthesis workers have one).
        memory_limit: per worker, as Dask reads it (``"4GiB"``, ``"auto"``, ``0`` = none).
        dashboard_address: the scheduler's dashboard (``":8787"``; needs bokeh), None = off.
    """

    workers: int = 2
    synthesis_workers: int = 0
    host: str = "127.0.0.1"
    port: int = 8786
    threads: int = 1
    memory_limit: str | int = "auto"
    dashboard_address: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 0 or self.synthesis_workers < 0 or self.workers + self.synthesis_workers < 1:
            raise ValueError(
                f"a cluster needs at least one worker, got {self.workers} general and "
                f"{self.synthesis_workers} synthesis workers"
            )
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")

    def worker_specs(self) -> dict[str, dict[str, Any]]:
        """The SpecCluster worker specification, by worker name."""
        from distributed import Nanny

        base = {"host": self.host, "memory_limit": self.memory_limit, "silence_logs": logging.WARNING}
        specs = {
            f"worker-{i}": {"cls": Nanny, "options": {**base, "nthreads": self.threads}} for i in range(self.workers)
        }
        for i in range(self.synthesis_workers):
            options = {**base, "nthreads": 1, "resources": {SYNTHESIS_RESOURCE: 1}}
            specs[f"synthesis-{i}"] = {"cls": Nanny, "options": options}
        return specs


def start_cluster(spec: ClusterSpec) -> Any:
    """Start the scheduler and the workers and wait until every worker has joined; returns the
    :class:`~distributed.SpecCluster` (close it, or use it as a context manager)."""
    from distributed import Client, Scheduler, SpecCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # importing distributed set it to INFO
    # Without a dashboard the scheduler still serves /health and /metrics over HTTP: on a free port.
    scheduler_options: dict[str, Any] = {
        "host": spec.host,
        "port": spec.port,
        "dashboard": spec.dashboard_address is not None,
        "dashboard_address": spec.dashboard_address or ":0",
    }
    cluster = SpecCluster(
        workers=spec.worker_specs(),
        scheduler={"cls": Scheduler, "options": scheduler_options},
        silence_logs=logging.WARNING,
        name="sims",
    )
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(spec.workers + spec.synthesis_workers, timeout=120)
    except BaseException:
        cluster.close()
        raise
    return cluster


def run_cluster(spec: ClusterSpec, announce: Callable[[str], None] = print) -> None:
    """Start a cluster, ``announce`` its scheduler address, and keep it up until SIGINT or SIGTERM,
    then close the workers and the scheduler (blocking; call from the main thread)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster = start_cluster(spec)
        try:
            announce(cluster.scheduler_address)
            while not stop.wait(0.5):  # a timed wait, so that the signal handler gets to run
                pass
            log.info("stopping the cluster at %s", cluster.scheduler_address)
        finally:
            cluster.close(timeout=30)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
