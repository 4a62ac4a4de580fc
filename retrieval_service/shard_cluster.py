"""Shards on Dask: each shard a :class:`~retrieval_service.shard_server.ShardServer` actor on one worker.

An actor's methods are called straight from the service's client to its worker (with
``direct_to_workers``), not through the scheduler, and run on the worker's one actor thread.
:class:`DaskShards` is the coordinator's :class:`~retrieval_service.sharded.ShardCalls` over them:

- **placement**: one shard per worker while there are enough (workers with the synthesis resource
  only when no other worker is there), pinned there (``workers=[address]``
  without ``allow_other_workers``), so Dask never re-creates a lost shard by itself elsewhere;
- **faults**: every call has a deadline (``timeout``). A shard whose worker is lost, or that does
  not answer in time, makes the whole call raise :class:`~memory_bank.errors.UnavailableError`
  (503 ``shard_unavailable``) naming it: answers from the other shards are dropped, never
  returned alone. A lost shard is re-placed at once, in the background, on a worker that holds
  none of this version's shards (a restarted one, when its nanny brings it back within
  ``replace_wait``) or else the least loaded; until it has loaded, calls to it fail at once;
- **versions**: a :class:`DaskShards` is one bank version, its actors load that version and check it
  on every call. A reload builds a new one beside it (the service swaps engines only when every
  shard of the new version has loaded); the old actors go when the last request on them ends.

:class:`ShardCluster` is the Dask client of the service, on a local cluster of ``N`` worker
processes it starts (``sims serve --shards N``) or on a running scheduler (``--cluster ADDRESS``).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
import uuid
from dataclasses import KW_ONLY, dataclass
from typing import Any

from distributed import Client, Future, LocalCluster

from memory_bank.candidate_index import CandidateConfig
from memory_bank.errors import UnavailableError
from retrieval_service.engine import EXACT_BELOW
from retrieval_service.local_cluster import SYNTHESIS_RESOURCE
from retrieval_service.shard_plan import ShardPlan, ShardSpec
from retrieval_service.shard_server import ShardServer, ShardSource

log = logging.getLogger(__name__)

#: Seconds a shard call may take before the request answers 503.
DEFAULT_TIMEOUT = 10.0
#: Seconds a re-placed shard waits for a worker that holds no shard (a restarting one) before doubling up.
REPLACE_WAIT = 15.0
#: Seconds a shard may take to load (a 10^6-segment shard loads in well under a minute here).
LOAD_TIMEOUT = 600.0


@dataclass
class _Handle:
    """Where one shard is, and whether it can be called."""

    spec: ShardSpec
    future: Future | None = None
    actor: Any = None
    address: str | None = None
    restarting: bool = False
    why: str = ""


def shard_workers(client: Client) -> list[str]:
    """Addresses of the workers that hold shards: those without the synthesis resource (a
    synthesis replica's one thread is for syntheses), or every worker when all carry it."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    general = [a for a, w in workers.items() if not w.get("resources", {}).get(SYNTHESIS_RESOURCE)]
    return general or list(workers)


@dataclass(eq=False, repr=False)  # a live set of actors: identity equality, the object repr
class DaskShards:
    """The shards of one bank version as Dask actors (see the module docstring).

    Making one places and loads every shard (blocking until all have loaded, or raising).
    """

    client: Client
    source: ShardSource
    plan: ShardPlan
    candidate_config: CandidateConfig | None = None
    exact_below: int = EXACT_BELOW
    _: KW_ONLY
    timeout: float = DEFAULT_TIMEOUT
    replace_wait: float = REPLACE_WAIT
    load_timeout: float = LOAD_TIMEOUT

    def __post_init__(self) -> None:
        self.version = self.source.frame().version
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False
        self.handles = {s.shard_id: _Handle(s) for s in self.plan.shards if s.parts}
        workers = sorted(self._workers())
        if not workers:
            raise UnavailableError("the Dask cluster has no workers", kind="shard_unavailable")
        for i, h in enumerate(self.handles.values()):
            self._submit(h, workers[i % len(workers)])
        for h in self.handles.values():
            self._wait_loaded(h)

    # ShardCalls
    def call(self, method: str, args: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        start = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        pending, failed = {}, []
        pickling = shard_seconds = 0.0
        for s, a in args.items():
            h = self.handles[s]
            actor = h.actor
            if actor is None:
                failed.append((h, h.why or "it is being restarted"))
                continue
            t = time.perf_counter()
            blob = pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)
            pickling += time.perf_counter() - t
            try:
                pending[s] = (h, actor, actor.pickled(method, blob))
            except Exception as e:  # "Worker holding Actor was lost"
                failed.append((h, self._lost(h, actor, e)))
        out = {}
        for s, (h, actor, future) in pending.items():
            try:
                blob = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                failed.append((h, f"it did not answer within {self.timeout:g} s"))
                continue
            except (Exception, asyncio.CancelledError) as e:  # the worker died, or its connection broke
                failed.append((h, self._lost(h, actor, e)))
                continue
            t = time.perf_counter()
            error, out[s], inside = pickle.loads(blob)
            pickling += time.perf_counter() - t
            shard_seconds = max(shard_seconds, inside)
            if error is not None:  # the shard's own error (a SimsError is answered as such; others are bugs)
                raise error
        timings = self.timings
        timings["shard_calls"] = timings.get("shard_calls", 0.0) + time.perf_counter() - start
        timings["shard_compute"] = timings.get("shard_compute", 0.0) + shard_seconds
        timings["shard_pickle"] = timings.get("shard_pickle", 0.0) + pickling
        if failed:
            what = "; ".join(f"{h.spec.describe()} is unavailable: {why}" for h, why in failed)
            raise UnavailableError(f"retrieval shard down: {what}", kind="shard_unavailable", retry_after=5)
        return out

    @property
    def timings(self) -> dict[str, float]:
        """Seconds this thread spent in shard calls since :meth:`take_timings`: ``shard_calls`` (wall
        time of the calls), ``shard_compute`` (the slowest shard's own time, per call), ``shard_pickle``
        (pickling here); the rest of a call's time is Dask's transport and waiting."""
        if not hasattr(self._local, "timings"):
            self._local.timings = {}
        return self._local.timings

    def take_timings(self) -> dict[str, float]:
        """:attr:`timings`, reset."""
        got, self._local.timings = self.timings, {}
        return got

    def describe(self) -> list[dict[str, Any]]:
        got = self.call("describe", {s: () for s in self.handles})
        return [{**got[s], "worker": self.handles[s].address} for s in sorted(got)]

    def close(self) -> None:
        """Release every actor (their workers drop the shards)."""
        with self._lock:
            self._closed = True
            for h in self.handles.values():
                if h.future is not None:
                    h.future.release()
                h.future = h.actor = None

    # Placement and re-placement
    def _workers(self) -> list[str]:
        return shard_workers(self.client)

    def _submit(self, h: _Handle, address: str) -> None:
        key = f"sims-shard-{self.version}-{h.spec.shard_id}-{uuid.uuid4().hex[:8]}"
        h.future = self.client.submit(
            ShardServer,
            self.source,
            h.spec,
            self.candidate_config,
            self.exact_below,
            actor=True,
            workers=[address],
            allow_other_workers=False,
            pure=False,
            key=key,
        )
        h.address = address

    def _wait_loaded(self, h: _Handle) -> None:
        try:
            h.actor = h.future.result(timeout=self.load_timeout)  # type: ignore[union-attr]
        except Exception as e:
            why = f"{h.spec.describe()} failed to load on {h.address}: {e}"
            raise UnavailableError(why, kind="shard_unavailable") from e
        h.why = ""
        log.info("%s of %s loaded on %s", h.spec.describe(), self.version, h.address)

    def _lost(self, h: _Handle, actor: Any, error: Exception) -> str:
        """Mark ``h`` down (once per lost actor) and re-place it in the background; the reason, for the 503."""
        with self._lock:
            if h.actor is actor and not h.restarting and not self._closed:
                h.actor, h.restarting = None, True
                h.why = f"its worker {h.address} was lost; restarting it"
                log.warning("%s: %s (%s)", h.spec.describe(), h.why, error)
                threading.Thread(
                    target=self._replace, args=(h,), name=f"replace-shard-{h.spec.shard_id}", daemon=True
                ).start()
        return h.why or "its worker was lost"

    def _replace(self, h: _Handle) -> None:
        lost = h.address
        if h.future is not None:
            h.future.release()  # pinned to a gone worker: it would never run again
        while not self._closed:
            try:
                self._submit(h, self._pick_worker(lost))
                self._wait_loaded(h)
                break
            except Exception as e:  # no worker yet, or the new one died too: try again
                log.warning("%s: re-placing failed (%s); trying again", h.spec.describe(), e)
                if h.future is not None:
                    h.future.release()
                time.sleep(1.0)
        with self._lock:
            h.restarting = False

    def _pick_worker(self, lost: str | None) -> str:
        """A worker holding none of this version's shards (waiting ``replace_wait`` for one), else the least loaded."""
        deadline = time.monotonic() + self.replace_wait
        while True:
            workers = [w for w in self._workers() if w != lost]
            held = [x.address for x in self.handles.values() if x.actor is not None]
            idle = [w for w in workers if w not in held]
            if idle:
                return sorted(idle)[0]
            if workers and time.monotonic() >= deadline:
                return min(workers, key=lambda w: (held.count(w), w))
            time.sleep(0.25)


class ShardCluster:
    """The service's Dask client: on ``N`` local worker processes it starts, or on a scheduler's address."""

    def __init__(self, shards: int = 0, address: str | None = None) -> None:
        if address is None and shards < 1:
            raise ValueError("a shard cluster needs a number of local workers or a scheduler address")
        self.cluster: LocalCluster | None = None
        if address is None:
            # One thread per worker: a shard's actor runs on its own thread anyway, and the cores are few.
            self.cluster = LocalCluster(
                n_workers=shards, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=0
            )
            address = self.cluster.scheduler_address
        # The default client: actor handles find their client that way.
        self.client = Client(address, direct_to_workers=True)
        self.num_workers = len(shard_workers(self.client))
        self.shards = shards or self.num_workers

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
