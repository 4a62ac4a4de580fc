"""Where ``POST /synthesize`` sends its work: synthesis backends.

Dependencies point one way: ``synthesis`` uses the retrieval service's types, client and codecs,
never the reverse. So the service knows synthesis only through the small
:class:`~retrieval_service.types.SynthesisBackend` protocol, and two kinds exist:

- :class:`HttpSynthesisBackend` forwards to synthesis workers (``sims worker``) at the
  comma-separated ``SIMS_SYNTHESIS_URL``, trying them in turn (round robin): a worker that refuses
  the connection or answers 503 passes the request on to the next; when none is up the answer is
  503 ``synthesis_unavailable``; a worker that does not answer within ``SIMS_SYNTHESIS_TIMEOUT``
  gives 504 ``synthesis_timeout``. The timeout goes to the worker as ``X-SIMS-Timeout``, so its
  work stops by then too. A worker whose slots and queue are full answers 503 ``synthesis_busy``
  with ``Retry-After``: the next worker is tried, and when all are busy the caller gets 503
  ``synthesis_busy`` with the soonest ``Retry-After``. At most ``SIMS_SYNTHESIS_MAX_IN_FLIGHT``
  requests are with the workers at once; more are refused before their upload is read.
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

import base64
import itertools
import logging
import math
from importlib.metadata import entry_points

import httpx

from memory_bank.errors import TimedOutError, UnavailableError, UpstreamError
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder
from retrieval_service.client import retry_after_seconds
from retrieval_service.http_models import TIMEOUT_HEADER, SynthesizeRequest
from retrieval_service.types import BackendFactory, SynthesisBackend, SynthesisReply, SynthesizeOptions

log = logging.getLogger(__name__)

BACKEND_GROUP = "sims.synthesis_backends"
#: Response headers a worker sets that the service passes on.
RELAYED_HEADERS = ("x-sims-bank-version", "x-sims-seed", "server-timing")


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


class HttpSynthesisBackend:
    """Forwards to synthesis workers over HTTP (``POST {url}/synthesize``, JSON), in turn.

    Args:
        urls: worker base URLs.
        timeout: seconds a worker may take to answer (504 after); connecting gets at most 5 s.
        max_in_flight: requests forwarded at once, over all workers (0 = 4 per worker: a worker's
            default two slots and queue of one, plus one). More are refused by :meth:`check_capacity`
            before their upload is read, so a burst costs the service little memory or CPU.
        transport: an httpx transport to use instead of the network (tests).
    """

    name = "http"

    def __init__(
        self,
        urls: list[str],
        timeout: float,
        max_in_flight: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("HttpSynthesisBackend needs at least one worker URL")
        self.urls = list(urls)
        self.timeout = timeout
        self.max_in_flight = max_in_flight or 4 * len(self.urls)
        self.in_flight = 0  # one event loop: no lock needed
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._turn = itertools.count()

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

    def check_capacity(self) -> None:
        """Raise the 503 ``synthesis_busy`` now if ``max_in_flight`` requests are already with the workers."""
        if self.in_flight >= self.max_in_flight:
            raise UnavailableError(
                f"{self.in_flight} syntheses are already with the workers (the service forwards at most "
                f"{self.max_in_flight} at once)",
                kind="synthesis_busy",
                retry_after=1,
            )

    async def synthesize(
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None = None
    ) -> SynthesisReply:
        self.check_capacity()
        self.in_flight += 1
        try:
            return await self._forward(layout_png, options, instances_png)
        finally:
            self.in_flight -= 1

    async def _forward(
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None = None
    ) -> SynthesisReply:
        client = await self._ensure_client()
        instances = None if instances_png is None else base64.b64encode(instances_png).decode("ascii")
        body = SynthesizeRequest(
            **options.model_dump(), layout_png=base64.b64encode(layout_png).decode("ascii"), instances_png=instances
        ).model_dump_json()
        first = next(self._turn) % len(self.urls)
        headers = {"content-type": "application/json", TIMEOUT_HEADER: f"{self.timeout:g}"}
        down: list[str] = []
        busy: list[int] = []  # the Retry-After of each busy worker
        for i in range(len(self.urls)):
            url = self.urls[(first + i) % len(self.urls)]
            try:
                r = await client.post(f"{url}/synthesize", content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                down.append(f"{url}: {type(e).__name__}")
                continue
            except httpx.TimeoutException:
                raise TimedOutError(
                    f"the synthesis worker at {url} did not answer within {self.timeout:g} s", kind="synthesis_timeout"
                ) from None
            except httpx.TransportError as e:
                down.append(f"{url}: {type(e).__name__}: {e}")
                continue
            if r.status_code == 503:
                if _kind(r) == "synthesis_busy":
                    busy.append(max(1, math.ceil(retry_after_seconds(r) or 1)))
                down.append(f"{url}: not ready ({_message(r)})")
                continue
            if r.is_success:
                headers = {k: v for k in RELAYED_HEADERS if (v := r.headers.get(k)) is not None}
                return SynthesisReply(r.content, r.headers.get("content-type", "application/octet-stream"), headers)
            if r.status_code < 500 or r.status_code == 504:  # the caller's error, or a timeout: passed on
                raise UpstreamError(_message(r), kind=_kind(r), status=r.status_code)
            raise UpstreamError(f"the synthesis worker at {url} failed: {_message(r)}", kind="synthesis_failed")
        if len(busy) == len(self.urls):
            raise UnavailableError(
                f"every synthesis worker is busy ({'; '.join(down)})", kind="synthesis_busy", retry_after=min(busy)
            )
        log.warning("no synthesis worker is up: %s", "; ".join(down))
        raise UnavailableError(
            f"no synthesis worker is up ({'; '.join(down)})", kind="synthesis_unavailable", retry_after=1
        )


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
