"""Where ``POST /synthesize`` sends its work: synthesis backends.

Dependencies point one way: ``synthesis`` uses the retrieval service's types, client and codecs,
never the reverse. So the service knows synthesis only through the small
:class:`~retrieval_service.types.SynthesisBackend` protocol, and two kinds exist:

- :class:`HttpSynthesisBackend` forwards to synthesis workers (``sims worker``) at the
  comma-separated ``SIMS_SYNTHESIS_URL``. It keeps a mirror of each worker's admission (the same
  :mod:`retrieval_service.admission` the worker runs) and gives a request to the worker predicted
  to finish it soonest, or refuses it with 503 ``synthesis_busy`` and ``Retry-After`` before its
  upload is read when no worker would finish it within its deadline. A worker that refuses the
  connection or answers 503 passes the request on to the next that can take it; when none is up
  the answer is 503 ``synthesis_unavailable``; a worker that does not answer by the deadline
  (``SIMS_SYNTHESIS_TIMEOUT``, or the client's when shorter) gives 504 ``synthesis_timeout``. The
  time left goes to the worker as ``X-SIMS-Timeout``, so its work stops by then too. At most
  ``SIMS_SYNTHESIS_MAX_IN_FLIGHT`` requests are with the workers at once.
- a plugin named by ``SIMS_SYNTHESIS_BACKEND`` and loaded from the ``sims.synthesis_backends``
  entry point group: ``in_process`` (``synthesis.worker.backend:create_backend``) runs the
  pipeline inside the service on its own bank and engine, with no HTTP hop
  (``sims serve --with-worker``); ``dask`` (``synthesis.worker.cluster:create_backend``), chosen
  by ``SIMS_SYNTHESIS_CLUSTER``, sends each synthesis as a task to the synthesis workers of a
  Dask cluster (``sims serve --synthesis-cluster``).

Either answers with a :class:`~retrieval_service.types.SynthesisReply` (the response body the
worker made: a PNG, JSON or multipart) or raises a :class:`~memory_bank.errors.SimsError`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import logging
import math
from importlib.metadata import entry_points

import httpx

from memory_bank.errors import TimedOutError, UnavailableError, UpstreamError
from retrieval_service.admission import (
    ADMITTED_HEADER,
    SLOTS_HEADER,
    TIMEOUT_HEADER,
    Admission,
    AdmittingBackend,
    Ticket,
    parse_slots_header,
)
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder
from retrieval_service.client import retry_after_seconds
from retrieval_service.http_models import SynthesizeRequest
from retrieval_service.types import BackendFactory, SynthesisBackend, SynthesisReply, SynthesizeOptions

log = logging.getLogger(__name__)

BACKEND_GROUP = "sims.synthesis_backends"
#: Response headers a worker sets that the service passes on.
RELAYED_HEADERS = ("x-sims-bank-version", "x-sims-seed", "server-timing")


#: Seconds past a deadline to wait for a worker's answer (it answers a timed-out synthesis once it has
#: stopped, at its next step), which frees the request's place in the worker's mirror.
WORKER_STOP_GRACE = 10.0
#: The 503s of a worker that cannot take a request (another may): busy, starting, or without networks.
_WORKER_DOWN = frozenset({"synthesis_busy", "worker_not_ready", "synthesis_unavailable", "synthesis_error"})

#: The plugin that sends syntheses to the workers of a Dask cluster (``synthesis_cluster``).
CLUSTER_BACKEND = "dask"


def load_backend(settings: Settings, holder: BankHolder | None) -> SynthesisBackend | None:
    """The backend the settings ask for: a named plugin, a Dask cluster's workers (the ``dask``
    plugin), the HTTP workers, or None."""
    name = settings.synthesis_backend or (CLUSTER_BACKEND if settings.synthesis_cluster else None)
    if name:
        found = {ep.name: ep for ep in entry_points(group=BACKEND_GROUP)}
        ep = found.get(name)
        if ep is None:
            raise ValueError(
                f"no synthesis backend named {name!r} is installed "
                f"(entry point group {BACKEND_GROUP}: {sorted(found) or 'empty'})"
            )
        factory: BackendFactory = ep.load()
        return factory(settings, holder)
    if settings.synthesis_urls:
        return HttpSynthesisBackend(
            settings.synthesis_urls, settings.synthesis_timeout, max_in_flight=settings.synthesis_max_in_flight
        )
    return None


class HttpSynthesisBackend(AdmittingBackend):
    """Forwards to synthesis workers over HTTP (``POST {url}/synthesize``, JSON).

    Each worker has a mirror: an :class:`~retrieval_service.admission.Admission` with the worker's
    slots and queue (learnt from the ``X-SIMS-Slots`` header of its answers; one at a time until
    the first answer) that infers when its jobs start and measures them from there to their
    answer. :meth:`admit` gives a request to the worker predicted to finish it soonest, and refuses
    it (503 ``synthesis_busy``) when none would finish it within its deadline, so the service never
    forwards a request a worker would refuse, and never reads the upload of one it refuses.

    Args:
        urls: worker base URLs.
        timeout: seconds a worker may take to answer (504 after; a client's shorter deadline wins);
            connecting gets at most 5 s.
        max_in_flight: requests forwarded at once, over all workers (0 = 4 per worker), a bound on
            top of the workers' own.
        transport: an httpx transport to use instead of the network (tests).
    """

    name = "http"
    #: The slots and queue of a worker that answers without ``X-SIMS-Slots`` (a worker's defaults).
    ASSUMED_SLOTS = (2, 1)

    def __init__(
        self,
        urls: list[str],
        timeout: float,
        max_in_flight: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("HttpSynthesisBackend needs at least one worker URL")
        self.urls = list(dict.fromkeys(urls))  # one mirror per worker, however often it is listed
        self.timeout = timeout
        self.max_in_flight = max_in_flight or 4 * len(self.urls)
        # Until a worker has answered once, one request at a time is sent to it.
        self.mirrors = {
            url: Admission(1, 0, kind="synthesis_busy", what=f"synthesis on {url}", infer_starts=True)
            for url in self.urls
        }
        self._url_of = {id(m): url for url, m in self.mirrors.items()}
        self._learnt: set[str] = set()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._turn = itertools.count()

    @property
    def in_flight(self) -> int:
        """Requests with the workers now (admitted by a mirror and not answered yet)."""
        return sum(m.admitted for m in self.mirrors.values())

    async def start(self) -> None:
        timeout = httpx.Timeout(self.timeout, connect=min(5.0, self.timeout))
        self._client = httpx.AsyncClient(timeout=timeout, transport=self._transport)

    async def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            await self.start()
        return self._client  # type: ignore[return-value]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def admit(self, timeout: float, exclude: frozenset[str] = frozenset()) -> Ticket:
        """A ticket on the worker predicted to finish a synthesis soonest, or the 503
        ``synthesis_busy`` (with the soonest ``Retry-After``) if none would within ``timeout`` s."""
        if self.in_flight >= self.max_in_flight:
            raise UnavailableError(
                f"{self.in_flight} syntheses are already with the workers (the service forwards at most "
                f"{self.max_in_flight} at once)",
                kind="synthesis_busy",
                retry_after=min(m.retry_after() for m in self.mirrors.values()),
            )
        first = next(self._turn) % len(self.urls)
        turn = [self.urls[(first + i) % len(self.urls)] for i in range(len(self.urls))]
        candidates = [u for u in turn if u not in exclude]

        def soonest(url: str) -> float:
            p = self.mirrors[url].predict()
            return 0.0 if p is None else p.finish  # unknown: only admitted with a free slot anyway

        refusals: list[UnavailableError] = []
        for url in sorted(candidates, key=soonest):  # stable: ties keep the round robin's order
            try:
                return self.mirrors[url].admit(timeout)
            except UnavailableError as e:
                refusals.append(e)
        if not refusals:
            raise UnavailableError("no synthesis worker is left to try", kind="synthesis_unavailable", retry_after=1)
        raise UnavailableError(
            f"every synthesis worker is busy ({'; '.join(str(e) for e in refusals)})",
            kind="synthesis_busy",
            retry_after=min(e.retry_after or 1 for e in refusals),
        )

    async def run_claimed(
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None, ticket: Ticket
    ) -> SynthesisReply:
        """Forward to a worker that admits it, the next one when that one cannot take it."""
        client = await self._ensure_client()
        instances = None if instances_png is None else base64.b64encode(instances_png).decode("ascii")
        body = SynthesizeRequest(
            **options.model_dump(), layout_png=base64.b64encode(layout_png).decode("ascii"), instances_png=instances
        ).model_dump_json()
        tried: set[str] = set()
        down: list[str] = []
        busy: list[int] = []  # the Retry-After of each busy worker
        while True:
            url = self._url_of[id(ticket.admission)]
            tried.add(url)
            outcome = await self._forward(client, url, body, ticket)
            if isinstance(outcome, SynthesisReply):
                return outcome
            down.append(outcome[0])
            if outcome[1] is not None:
                busy.append(outcome[1])
            # That worker could not take it: the next one that can finish it in the time left.
            try:
                ticket = self.admit(ticket.remaining(), exclude=frozenset(tried))
            except UnavailableError:
                break
            ticket.claim()
        if busy and len(busy) == len(tried):
            raise UnavailableError(
                f"every synthesis worker is busy ({'; '.join(down)})", kind="synthesis_busy", retry_after=min(busy)
            )
        if len(tried) < len(self.urls):
            raise UnavailableError(
                f"no synthesis worker could take it in time ({'; '.join(down)})", kind="synthesis_busy", retry_after=1
            )
        log.warning("no synthesis worker is up: %s", "; ".join(down))
        raise UnavailableError(
            f"no synthesis worker is up ({'; '.join(down)})", kind="synthesis_unavailable", retry_after=1
        )

    async def _forward(
        self, client: httpx.AsyncClient, url: str, body: str, ticket: Ticket
    ) -> SynthesisReply | tuple[str, int | None]:
        """The worker's reply, or why it could not take the request (and its Retry-After if busy);
        raises what is the caller's to see.

        The ticket is settled by the worker's answer, not by the caller's deadline: a worker answers
        a timed-out synthesis only once it has stopped, so the mirror frees the slot when the worker
        does, even though the caller got its 504 at the deadline.
        """
        remaining = ticket.remaining()
        if remaining <= 0:
            ticket.release()
            raise TimedOutError(f"no synthesis worker answered within {ticket.timeout:g} s", kind="synthesis_timeout")
        headers = {"content-type": "application/json", TIMEOUT_HEADER: f"{remaining:.3f}", ADMITTED_HEADER: "1"}
        wait = httpx.Timeout(remaining + WORKER_STOP_GRACE, connect=min(5.0, remaining))
        task = asyncio.ensure_future(client.post(f"{url}/synthesize", content=body, headers=headers, timeout=wait))
        task.add_done_callback(functools.partial(self._settle, url, ticket))
        try:
            r = await asyncio.wait_for(asyncio.shield(task), remaining)
        except TimeoutError:
            raise TimedOutError(
                f"the synthesis worker at {url} did not answer within {ticket.timeout:g} s", kind="synthesis_timeout"
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            return f"{url}: {type(e).__name__}", None
        except httpx.TimeoutException:
            raise TimedOutError(
                f"the synthesis worker at {url} did not answer within {ticket.timeout:g} s", kind="synthesis_timeout"
            ) from None
        except httpx.TransportError as e:
            return f"{url}: {type(e).__name__}: {e}", None
        if r.is_success:
            headers = {k: v for k in RELAYED_HEADERS if (v := r.headers.get(k)) is not None}
            return SynthesisReply(r.content, r.headers.get("content-type", "application/octet-stream"), headers)
        if r.status_code == 503:
            kind = _kind(r)
            retry = max(1, math.ceil(retry_after_seconds(r) or 1))
            if kind not in _WORKER_DOWN:  # e.g. the bank's storage failing under the service: passed on
                raise UnavailableError(_message(r), kind=kind, retry_after=retry)
            return f"{url}: not ready ({_message(r)})", retry if kind == "synthesis_busy" else None
        if r.status_code < 500 or r.status_code == 504:  # the caller's error, or a timeout: passed on
            raise UpstreamError(_message(r), kind=_kind(r), status=r.status_code)
        raise UpstreamError(f"the synthesis worker at {url} failed: {_message(r)}", kind="synthesis_failed")

    def _settle(self, url: str, ticket: Ticket, task: asyncio.Future[httpx.Response]) -> None:
        """Free a forwarded request's place in the worker's mirror once the worker has answered:
        measured when it synthesized (a 504 as a lower bound), released otherwise."""
        if task.cancelled():
            ticket.release()
            return
        error = task.exception()
        if error is not None:
            connect = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            if isinstance(error, httpx.TimeoutException) and not connect:
                ticket.finish_partial()  # it ran past even the grace: slow work
            else:
                ticket.release()
            return
        r = task.result()
        self._learn(url, r)
        if r.is_success:
            ticket.finish()
        elif r.status_code == 504:
            ticket.finish_partial()
        else:
            ticket.release()

    def _learn(self, url: str, r: httpx.Response) -> None:
        """Set a worker's mirror to the slots and queue it says it has."""
        slots = parse_slots_header(r.headers.get(SLOTS_HEADER))
        if slots is None and url in self._learnt:
            return
        concurrency, queue = slots or self.ASSUMED_SLOTS
        mirror = self.mirrors[url]
        if (mirror.concurrency, mirror.queue) != (concurrency, queue):
            mirror.set_capacity(concurrency, queue)
        self._learnt.add(url)


def _kind(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", "synthesis_error"))
    except ValueError:
        return "synthesis_error"


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", r.text[:200]))
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"
