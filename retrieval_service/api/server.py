"""Run the service under uvicorn (what ``sims serve`` calls)."""

from __future__ import annotations

import logging
import os

import uvicorn

from memory_bank import current_version
from memory_bank.errors import BankNotFoundError
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
        # The size limit is enforced by the app; uvicorn's own limits stay at their defaults.
    )
