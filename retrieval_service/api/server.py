"""Run the service under uvicorn (what ``sims serve`` calls)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from memory_bank import current_version
from memory_bank.errors import BankNotFoundError, OptionError
from retrieval_service.api.settings import Settings

log = logging.getLogger(__name__)

APP_FACTORY = "retrieval_service.api.app:create_app_from_env"


def serve(settings: Settings) -> None:
    """Serve ``settings.bank`` until interrupted.

    The settings are exported as ``SIMS_*`` variables and every uvicorn worker builds its app
    from them (``create_app_from_env``), so ``--workers N`` runs N identical processes.
    """
    if settings.bank is None:
        raise BankNotFoundError("no bank to serve: pass --bank or set SIMS_BANK")
    if settings.shards and settings.workers > 1:
        raise OptionError("--shards starts a Dask cluster in each worker process: use --workers 1 (or --cluster)")
    version = current_version(settings.bank)  # fail fast, with a one-line error, on a missing bank
    log.info(
        "serving bank %s (version %s) on http://%s:%d with %d worker(s)%s",
        settings.bank,
        version,
        settings.host,
        settings.port,
        settings.workers,
        f", watching for new versions every {settings.watch_interval:g} s" if settings.watch_interval else "",
    )
    os.environ.update(settings.to_env())
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        http=HeadTimeoutH11Protocol,
        # Above it uvicorn answers 503 at once instead of queueing (body size and read time: the app).
        limit_concurrency=settings.limit_concurrency or None,
        timeout_keep_alive=settings.timeout_keep_alive,
        # The largest request head h11 buffers (its default; named here because it is a limit too).
        h11_max_incomplete_event_size=16 * 1024,
    )


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head (uvicorn has none of its own).

    A connection that has not sent a complete request line and headers within ``SIMS_HEADER_TIMEOUT``
    seconds of opening, or of its last response, is closed: a slow-headers client (slowloris) holds a
    file descriptor for seconds, not for ever. Read from the environment because each worker process
    builds its protocol objects itself (``serve`` exports the settings first).
    """

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(header_timeout(), self._head_timed_out)

    def _head_timed_out(self) -> None:
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


@functools.cache
def header_timeout() -> float:
    """Seconds a connection may take to send a request head (``SIMS_HEADER_TIMEOUT``, else the default)."""
    return Settings().header_timeout
