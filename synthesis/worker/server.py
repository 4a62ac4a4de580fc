"""Run a synthesis worker under uvicorn (what ``sims worker`` calls)."""

from __future__ import annotations

import logging

import uvicorn

from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def serve_worker(settings: WorkerSettings) -> None:
    """Serve the worker until interrupted (one process; ``concurrency`` syntheses at once)."""
    from synthesis.worker.app import create_worker_app

    weights = settings.weights
    if not (weights / "config.json").is_file():
        # Fail before binding the port, with one line, rather than serve a worker that never gets ready.
        from memory_bank.errors import SimsError

        raise SimsError(f"no synthesis network in {weights} (config.json + model.safetensors); pass --weights DIR")
    log.info(
        "synthesis worker on http://%s:%d, retrieving from %s, network %s",
        settings.host,
        settings.port,
        settings.service_url,
        weights,
    )
    uvicorn.run(
        create_worker_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )
