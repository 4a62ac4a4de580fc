"""Synthesis workers on a Dask cluster: the ``dask`` backend of ``sims serve --synthesis-cluster``.

Every synthesis is one Dask task. The scheduler places it on a worker that carries the resource
:data:`~retrieval_service.local_cluster.SYNTHESIS_RESOURCE` (``sims cluster up
--synthesis-workers N``, or ``dask worker --resources synthesis=1``), one at a time per unit, so
the replica count is the number of units. The engine owns placement, queueing and restarts: a
worker that dies mid-task has its task run again on another (the caller sees a slower 200), and
its nanny starts a new worker, which the plugin below sets up like the others.

1. :class:`SynthesisWorkerPlugin`, registered by the service, loads the networks once on every
   synthesis worker and opens bank versions there on demand, from the bank's local path or fsspec
   URL (each with its own retrieval engine; the two newest are kept). No HTTP hop: retrieval and
   segment reads happen on the worker, on the version the service serves.
2. :func:`synthesize_task` runs :func:`~synthesis.worker.runtime.synthesize_reply` there, so a
   request gives the same bytes as ``sims serve --with-worker`` on the same bank version.
3. :class:`DaskSynthesisBackend` is the service's side. Its
   :class:`~retrieval_service.admission.Admission` has the replicas as slots and ``queue``
   (``SIMS_WORKER_QUEUE``) waiting syntheses per replica; it admits a synthesis only if it is
   predicted to finish within its deadline and refuses the rest with 503 ``synthesis_busy`` and
   ``Retry-After`` before the upload is read, so a burst holds no more uploads or tasks than
   that; a synthesis past its deadline (``SIMS_SYNTHESIS_TIMEOUT``, or the client's) is 504 and
   its task is released (dropped if it has not started; the worker's
   :class:`~synthesis.pipeline.Deadline` stops it at the next step otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client, KilledWorker, WorkerPlugin, get_worker
from distributed.comm.core import CommClosedError

from memory_bank.errors import (
    LayoutError,
    OptionError,
    SimsError,
    TimedOutError,
    UnavailableError,
    UpstreamError,
)
from memory_bank.png import LayoutSpec
from memory_bank.storage import is_url, storage_errors
from retrieval_service.admission import Admission, AdmittingBackend, Ticket
from retrieval_service.bank_state import load_state
from retrieval_service.http_errors import STORAGE_RETRY_AFTER
from retrieval_service.local_cluster import SYNTHESIS_RESOURCE
from retrieval_service.types import BackendSettings, BankSource, SynthesisReply, SynthesizeOptions
from synthesis.canvas.builder import CanvasBuilder
from synthesis.pipeline import Deadline, Networks, SynthesisPipeline, SynthesisStoppedError
from synthesis.worker import runtime
from synthesis.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from distributed import Worker

log = logging.getLogger(__name__)

#: Bank versions a worker keeps open: the served one and the one before (requests still on it).
KEEP_VERSIONS = 2
#: Seconds to reach the scheduler before trying again.
CONNECT_TIMEOUT = 5.0
#: Seconds past its deadline a timed-out task may take to stop (at its next step) before its place is freed anyway.
STOP_GRACE = 10.0
#: Errors of a synthesis that are the caller's to see as they are; any other is a 502.
RELAYED_ERRORS = (LayoutError, OptionError, TimedOutError, UnavailableError)


@dataclass(frozen=True)
class SynthesisJob:
    """One synthesis as a task argument: the request, the bank version, and when the reply is due."""

    layout_png: bytes
    options: SynthesizeOptions
    instances_png: bytes | None
    version: str
    deadline: float  # time.time() by which the reply is due (clocks of the service and workers agree)


class SynthesisWorkerPlugin(WorkerPlugin):
    """The networks and bank versions of one Dask synthesis worker, loaded once and kept.

    Registered by the service (idempotent: under a name that hashes its settings, so service
    processes with the same settings share one copy); the scheduler sets it up on every worker,
    also on workers that join later. General workers (no ``synthesis`` resource) load nothing.
    Paths are the workers' own: the bank's root (a directory or an fsspec URL, credentials from
    the worker's environment) and the networks of ``worker`` (``SIMS_WORKER_*``).
    """

    idempotent = True

    def __init__(self, bank: str, worker: WorkerSettings, weights: Path | None = None) -> None:
        self.bank = bank
        self.worker = worker
        self.weights = weights
        digest = hashlib.sha256(f"{bank}\0{weights}\0{worker.model_dump_json()}".encode()).hexdigest()
        self.name = f"sims-synthesis-{digest[:12]}"
        self._reset()

    def _reset(self) -> None:
        self.address = "?"
        self.networks: Networks | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._versions: OrderedDict[str, tuple[SynthesisPipeline, LayoutSpec]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Only the settings travel (to the scheduler and the workers), never what a worker loaded.
        return {"bank": self.bank, "worker": self.worker, "weights": self.weights, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    async def setup(self, worker: Worker) -> None:
        """Load the networks on a synthesis worker (in a thread: the worker keeps its heartbeat)."""
        self.address = worker.address
        if not worker.state.total_resources.get(SYNTHESIS_RESOURCE):
            return
        restore_malloc_thresholds()
        try:
            await asyncio.to_thread(self._load_networks)
        except Exception as e:  # kept: every synthesis on this worker says why
            self.error = f"loading the synthesis networks failed: {' '.join(str(e).split())}"
            log.error("synthesis worker %s: %s", worker.address, self.error)

    def _load_networks(self) -> Networks:
        with self._lock:
            if self.networks is None:
                if self.worker.threads:
                    import torch

                    torch.set_num_threads(self.worker.threads)
                self.networks = runtime.load_networks(self.worker, self.weights)
            return self.networks

    def pipeline(self, version: str) -> tuple[SynthesisPipeline, LayoutSpec]:
        """The pipeline over one bank version and what the version accepts as a layout (opened once)."""
        if self.error is not None:
            raise UnavailableError(f"synthesis worker {self.address}: {self.error}", kind="synthesis_unavailable")
        networks = self._load_networks()
        with self._lock:
            got = self._versions.get(version)
            if got is None:
                state = load_state(self.bank, version)
                builder = CanvasBuilder.from_bank(state.bank, retriever=state.engine)
                got = (networks.pipeline(builder), LayoutSpec.from_manifest(state.bank.manifest))
                self._versions[version] = got
                while len(self._versions) > KEEP_VERSIONS:
                    self._versions.popitem(last=False)
            self._versions.move_to_end(version)
            return got


#: glibc ``mallopt`` parameters, and the values its dynamic thresholds settle at on 64-bit Linux.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20


def restore_malloc_thresholds() -> bool:
    """Undo the Dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` in this process (glibc only; True if done).

    Setting a trim threshold turns off glibc's dynamic mmap threshold, so every buffer over 128 KiB
    is mmapped and unmapped again, page faults and all: torch's activations are such buffers, and a
    synthesis on a Dask worker took 2-2.5x as long as in a plain process. The values are those the
    dynamic thresholds grow to by themselves.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc
        return False
    log.debug("malloc thresholds restored: %s", done)
    return done


def _plugin(name: str) -> SynthesisWorkerPlugin:
    worker = get_worker()
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, SynthesisWorkerPlugin):
        raise UnavailableError(
            f"synthesis is not set up on Dask worker {worker.address}", kind="synthesis_unavailable", retry_after=1
        )
    return plugin


def synthesize_task(plugin: str, job: SynthesisJob) -> SynthesisReply:
    """One synthesis on a Dask synthesis worker (the task; runs on one of the worker's threads)."""
    remaining = job.deadline - time.time()
    if remaining <= 0:  # waited in the scheduler's queue past its deadline: do nothing
        raise SynthesisStoppedError("synthesis waited past its deadline for a worker", kind="synthesis_timeout")
    pipeline, spec = _plugin(plugin).pipeline(job.version)
    return runtime.synthesize_reply(pipeline, job.layout_png, job.options, spec, Deadline(remaining), job.instances_png)


def warm_task(plugin: str, version: str) -> str:
    """Open a bank version on a synthesis worker before requests need it (the task; returns the version)."""
    _plugin(plugin).pipeline(version)
    return version


class DaskSynthesisBackend(AdmittingBackend):
    """:class:`~retrieval_service.types.SynthesisBackend` sending each synthesis to a Dask cluster.

    Args:
        address: the scheduler, e.g. ``tcp://127.0.0.1:8786``.
        bank: the service's bank (its served version names the version workers synthesize from).
        plugin: what the workers load (None without a bank: every request is 503 ``not_ready``).
        timeout: seconds a synthesis may take, queueing included (504 after).
        queue: syntheses that may wait per replica (beyond its one running); more are refused.
        max_in_flight: a fixed bound instead (0 = replicas x (1 + queue)).
        poll: seconds between looks at the cluster (replicas, new workers to warm, reconnects).
    """

    name = "dask"

    def __init__(
        self,
        address: str,
        bank: BankSource | None,
        plugin: SynthesisWorkerPlugin | None,
        *,
        timeout: float = 60.0,
        queue: int = 0,
        max_in_flight: int = 0,
        poll: float = 1.0,
    ) -> None:
        if queue < 0 or max_in_flight < 0:
            raise ValueError(f"queue and max_in_flight must be >= 0, got {queue} and {max_in_flight}")
        self.address = address
        self.bank = bank
        self.plugin = plugin
        self.timeout = timeout
        self.queue = queue
        self.max_in_flight = max_in_flight
        self.poll = poll
        self.replicas = 0  # synthesis resource units on the cluster, at the last look
        # The replicas are the slots; a task's start on a worker is not seen here, so it is inferred.
        # The scheduler binds a task to a replica when it is submitted, not when a replica frees.
        self.admission = Admission(
            0, 0, kind="synthesis_busy", what="synthesis on the Dask cluster", infer_starts=True, first_free=False
        )
        self.peak_in_flight = 0
        self.error: str | None = f"connecting to the Dask scheduler at {address}"
        self._client: Client | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._warming: dict[tuple[str, str | None], Any] = {}  # (worker, version) -> its running warm task
        self._warmed: set[tuple[str, str | None]] = set()  # (worker, version) warm tasks that finished
        self._ready: set[str] = set()  # synthesis workers that have finished a warm task
        self._warm_errors: dict[str, str] = {}  # why a worker's last warm task failed
        self._lingering: set[asyncio.Future[None]] = set()  # timed-out tasks waited for in the background

    @property
    def limit(self) -> int:
        """Syntheses admitted at once now: running plus waiting, over all replicas."""
        return self.max_in_flight or self.replicas * (1 + self.queue)

    @property
    def in_flight(self) -> int:
        """Syntheses admitted and not answered yet."""
        return self.admission.admitted

    def _set_replicas(self, replicas: int) -> None:
        self.replicas = replicas
        concurrency = min(replicas, self.limit)
        self.admission.set_capacity(concurrency, max(0, self.limit - concurrency))

    async def start(self) -> None:
        """Connect in the background: the service starts even while the cluster is not up."""
        if self.plugin is None:
            self.error = "no bank configured: pass --bank or set SIMS_BANK"
            return
        self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._drop()

    def admit(self, timeout: float) -> Ticket:
        """A place for a synthesis due within ``timeout`` seconds: 503 now when no synthesis worker
        is up (``synthesis_unavailable``), or when every replica is busy beyond its queue or the
        synthesis would not finish in time (``synthesis_busy``); the route asks before reading the upload."""
        if self.plugin is None:
            raise UnavailableError(self.error or "no bank configured", kind="not_ready")
        if self._client is None or self.replicas == 0:
            raise UnavailableError(
                f"no synthesis worker is up: {self.error}", kind="synthesis_unavailable", retry_after=1
            )
        ticket = self.admission.admit(timeout)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return ticket

    async def run_claimed(
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None, ticket: Ticket
    ) -> SynthesisReply:
        """Run it as a task on a replica (:meth:`_run`)."""
        try:
            return await self._run(layout_png, options, instances_png, ticket)
        except TimedOutError:
            raise  # its ticket is settled when the task ends (see _run)
        except BaseException:
            ticket.release()  # a failure that says nothing about the time a synthesis takes
            raise

    async def _run(
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None, ticket: Ticket
    ) -> SynthesisReply:
        assert self.bank is not None and self.plugin is not None
        if self._client is None:
            raise UnavailableError(f"no synthesis worker is up: {self.error}", kind="synthesis_unavailable")
        served = self.bank.require()
        remaining = ticket.remaining()
        job = SynthesisJob(layout_png, options, instances_png, served.version, time.time() + remaining)
        future = self._client.submit(
            synthesize_task,
            self.plugin.name,
            job,
            key=f"sims-synthesize-{uuid.uuid4().hex}",
            resources={SYNTHESIS_RESOURCE: 1},
            pure=False,
        )
        lingering = False
        try:
            reply: SynthesisReply = await asyncio.wait_for(future, remaining)
        except TimeoutError:
            # A task still queued is dropped at once; a running one stops at its next step, and its
            # replica is free only then: the ticket is kept until the task ends.
            lingering = True
            task = asyncio.ensure_future(self._linger(future, ticket))
            self._lingering.add(task)
            task.add_done_callback(self._lingering.discard)
            raise TimedOutError(f"synthesis took longer than {ticket.timeout:g} s", kind="synthesis_timeout") from None
        except SynthesisStoppedError:  # it reached the worker past its deadline
            ticket.finish_partial()
            raise
        except RELAYED_ERRORS:
            raise
        except SimsError as e:  # e.g. the worker cannot open the bank: not the caller's doing
            raise UpstreamError(f"the synthesis worker failed: {e}", kind="synthesis_failed") from None
        except KilledWorker as e:
            raise UpstreamError(f"the synthesis killed the workers it ran on: {e}", kind="synthesis_failed") from None
        except CancelledError:  # the scheduler lost the task (e.g. it restarted)
            raise UnavailableError(
                "the Dask scheduler dropped the synthesis", kind="synthesis_unavailable", retry_after=1
            ) from None
        except CommClosedError as e:  # the scheduler is unreachable
            raise UnavailableError(
                f"the Dask scheduler at {self.address} is unreachable: {e}", kind="synthesis_unavailable", retry_after=1
            ) from None
        except storage_errors() as e:  # the bank's store failed under the worker (raised by the task)
            raise UnavailableError(
                f"reading the bank failed on the synthesis worker ({type(e).__name__}: {' '.join(str(e).split())}); "
                "retry later",
                kind="storage_unavailable",
                retry_after=STORAGE_RETRY_AFTER,
            ) from None
        except Exception as e:  # a bug on the worker: one line, never a 500
            raise UpstreamError(
                f"the synthesis worker failed: {type(e).__name__}: {' '.join(str(e).split())}", kind="synthesis_failed"
            ) from None
        finally:
            if not lingering:
                future.release()  # forget the task (its result has left the cluster)
        ticket.finish()  # measured from its inferred start on a replica
        return reply

    async def _linger(self, future: Any, ticket: Ticket) -> None:
        """Wait (at most :data:`STOP_GRACE` s) for a timed-out task to end, then free its place."""
        if future.status == "pending":
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(future, STOP_GRACE)  # a Dask future: waiting less does not cancel it
        ticket.finish_partial()
        future.release()

    # The cluster, watched in the background

    async def _watch(self) -> None:
        while True:
            try:
                if self._client is None:
                    self._client = await self._connect()
                await self._look(self._client)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reason = " ".join(str(e).split()) or type(e).__name__
                why = f"the Dask scheduler at {self.address} is unreachable: {reason}"
                if why != self.error:
                    log.warning("%s", why)
                self.error = why
                self._set_replicas(0)
                await self._drop()
            await asyncio.sleep(self.poll)

    async def _connect(self) -> Client:
        assert self.plugin is not None
        client = Client(self.address, asynchronous=True, timeout=CONNECT_TIMEOUT, set_as_default=False)
        try:
            await client
            # Waits for every current worker's setup (the networks load there).
            await client.register_plugin(self.plugin, name=self.plugin.name)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
            raise
        log.info("synthesis on the Dask cluster at %s (plugin %s)", self.address, self.plugin.name)
        return client

    async def _look(self, client: Client) -> None:
        """Count the replicas that are ready, and open the served bank version on synthesis workers
        that lack it.

        A synthesis worker counts once a warm task has run on it (its networks are loaded and a bank
        version is open): a worker that has just joined, e.g. the replacement of one that died, is
        not admitted work it would keep waiting for the seconds it takes to load.
        """
        info = await client.scheduler.identity(n_workers=-1)
        units = {a: w.get("resources", {}).get(SYNTHESIS_RESOURCE, 0) for a, w in info.get("workers", {}).items()}
        workers = [a for a, n in units.items() if n > 0]
        try:
            version = self.bank.require().version if self.bank is not None else None
        except SimsError:
            version = None  # the service's bank is still loading
        for key in [k for k in self._warming if k[0] not in units]:
            self._warming.pop(key).release()
        self._warmed = {k for k in self._warmed if k[0] in units}
        self._ready &= set(workers)
        failures = {}
        for address in workers:
            key = (address, version)
            future = self._warming.get(key)
            if future is not None and future.status != "pending":
                if future.status == "finished":
                    self._warmed.add(key)
                    self._ready.add(address)
                    self._warm_errors.pop(address, None)
                else:  # tried again below
                    self._warm_errors[address] = await _one_line_error(future)
                del self._warming[key]
                future.release()  # a finished task's result leaves the cluster
            if version is not None and key not in self._warmed and key not in self._warming:
                self._warming[key] = self._warm(client, address, version)
            if address not in self._ready and address in self._warm_errors:
                failures[address] = self._warm_errors[address]
        self._set_replicas(int(sum(units[a] for a in self._ready)))
        if self.replicas:
            self.error = None
        elif failures:
            self.error = "; ".join(failures.values())
        elif workers:
            self.error = f"{len(workers)} synthesis workers are still loading their networks and the bank"
        else:
            self.error = (
                f"the Dask cluster at {self.address} has no synthesis workers (workers with the resource "
                f"`{SYNTHESIS_RESOURCE}`: `sims cluster up --synthesis-workers N`)"
            )

    def _warm(self, client: Client, address: str, version: str) -> Any:
        return client.submit(
            warm_task,
            self.plugin.name,  # type: ignore[union-attr]
            version,
            key=f"sims-warm-{uuid.uuid4().hex}",
            workers=[address],
            allow_other_workers=False,
            resources={SYNTHESIS_RESOURCE: 1},
            pure=False,
        )

    async def _drop(self) -> None:
        client, self._client = self._client, None
        self._warming.clear()  # futures of that client; a new one warms every worker again
        self._warmed.clear()
        self._ready.clear()
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 5)
            except Exception as e:
                log.debug("closing the Dask client: %s", e)


async def _one_line_error(future: Any) -> str:
    """Why a task failed, on one line."""
    try:
        e = await asyncio.wait_for(future.exception(), 5)
    except Exception as seen:  # e.g. the task was cancelled, or the scheduler went away
        e = seen
    return " ".join(str(e).split()) or type(e).__name__


def create_backend(settings: BackendSettings, bank: BankSource | None) -> DaskSynthesisBackend:
    """Entry point ``dask`` of ``sims.synthesis_backends`` (chosen by ``SIMS_SYNTHESIS_CLUSTER``):
    networks from ``SIMS_WORKER_*`` (the service's ``synthesis_weights`` when set), paths as the
    workers see them; the queue per replica is ``SIMS_WORKER_QUEUE``."""
    if not settings.synthesis_cluster:
        raise ValueError("the dask synthesis backend needs a scheduler address (SIMS_SYNTHESIS_CLUSTER)")
    worker = WorkerSettings()
    root = settings.bank
    plugin = None
    if root is not None:
        # A local bank by its absolute path: the workers may have been started in another directory.
        root = str(root) if is_url(root) else str(Path(root).resolve())
        plugin = SynthesisWorkerPlugin(root, worker, settings.synthesis_weights)
    return DaskSynthesisBackend(
        settings.synthesis_cluster,
        bank,
        plugin,
        timeout=settings.synthesis_timeout,
        queue=worker.queue,
        max_in_flight=settings.synthesis_max_in_flight,
    )
