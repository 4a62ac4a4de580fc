"""Prometheus metrics of one service process, and the ASGI middleware that records requests.

Each app has its own registry (so several apps in one process, as in tests, do not clash).
With ``--workers N`` every worker process exposes its own numbers; a scrape of ``/metrics``
sees the worker that answered it.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval_service.asgi import HttpMiddleware
from retrieval_service.bank_state import BankState

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Methods counted by name; any other (a client can send any token) is counted as ``other``, and any
#: path no route matches as ``unmatched``, so the number of series stays bounded.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sims_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "sims_http_request_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("sims_http_requests_in_flight", "Requests being answered now.", registry=r)
        self.retrieve_seconds = Histogram(
            "sims_retrieve_seconds", "Engine time per layout.", ["mode"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.components = Counter("sims_retrieve_components", "Query components retrieved.", ["status"], registry=r)
        self.reloads = Counter("sims_bank_reloads", "Reload attempts.", ["outcome"], registry=r)
        self.bank_info = Gauge("sims_bank_info", "The bank version served (value 1).", ["version"], registry=r)
        self.bank_segments = Gauge("sims_bank_segments", "Segments in the bank served.", registry=r)
        self.bank_load_seconds = Gauge("sims_bank_load_seconds", "Time the served version took to load.", registry=r)
        self.ready = Gauge("sims_ready", "1 once a bank is loaded.", registry=r)
        # Read from the synthesis backend (watch_synthesis); 0 without one.
        self.synthesis_running = Gauge("sims_synthesis_running", "Syntheses running now.", registry=r)
        self.synthesis_admitted = Gauge(
            "sims_synthesis_admitted", "Syntheses running or queued (timed-out ones until they stop).", registry=r
        )
        self.synthesis_peak_running = Gauge(
            "sims_synthesis_peak_running", "The most syntheses that ever ran at once.", registry=r
        )
        self.synthesis_forwarded = Gauge(
            "sims_synthesis_forwarded", "Syntheses forwarded to HTTP or Dask workers, not yet answered.", registry=r
        )
        self.synthesis_replicas = Gauge(
            "sims_synthesis_replicas", "Synthesis workers of the Dask cluster, at the last look.", registry=r
        )

    def bank_loaded(self, state: BankState) -> None:
        """Point the bank gauges at a newly served state."""
        self.bank_info.clear()
        self.bank_info.labels(version=state.version).set(1)
        self.bank_segments.set(state.bank.num_segments)
        self.bank_load_seconds.set(state.load_seconds)
        self.ready.set(1)

    def watch_synthesis(self, backend: object) -> None:
        """Read the synthesis gauges from a backend at each scrape: running, admitted and peak syntheses
        from one with ``slots`` (the in-process one), forwarded requests from one with ``in_flight``
        (HTTP and Dask workers), replicas from one with ``replicas`` (Dask)."""
        if (slots := getattr(backend, "slots", None)) is not None:
            self.synthesis_running.set_function(lambda: slots.running)
            self.synthesis_admitted.set_function(lambda: slots.admitted)
            self.synthesis_peak_running.set_function(lambda: slots.peak_running)
        if hasattr(backend, "in_flight"):
            self.synthesis_forwarded.set_function(lambda: backend.in_flight)  # type: ignore[attr-defined]
        if hasattr(backend, "replicas"):
            self.synthesis_replicas.set_function(lambda: backend.replicas)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class MetricsMiddleware(HttpMiddleware):
    """Counts and times every HTTP request by route template and known method (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method, name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
