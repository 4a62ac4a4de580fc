"""The synthesis worker as the service tests run it: its other networks, and a separate worker over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.client import RetrievalClient
from synthesis.pipeline import Networks
from synthesis.worker.app import create_worker_app
from synthesis.worker.settings import WorkerSettings
from tests.servers import serving

REPO = Path(__file__).resolve().parents[1]
#: The worker's networks besides the synthesis one: the shipped refiner, no T and the layout rule (fast).
WORKER_ENV = {
    "SIMS_WORKER_REFINE_WEIGHTS": str(REPO / "weights/layout-refiner"),
    "SIMS_WORKER_TRANSFORM_WEIGHTS": "none",
    "SIMS_WORKER_ORDERING_WEIGHTS": "none",
}


def worker_settings(weights: Path) -> WorkerSettings:
    """What `sims worker` reads with ``WORKER_ENV`` set, for the synthesis network ``weights``."""
    return WorkerSettings(weights=weights, **{k.removeprefix("SIMS_WORKER_").lower(): v for k, v in WORKER_ENV.items()})


@contextmanager
def worker_env() -> Iterator[None]:
    """``WORKER_ENV`` set for the block: the in-process backend reads its networks from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in WORKER_ENV.items():
            mp.setenv(k, v)
        yield


@contextmanager
def http_worker(bank: Path, settings: WorkerSettings, networks: Networks) -> Iterator[str]:
    """A separate `sims worker` (uvicorn in a thread) retrieving from a service of its own on ``bank``;
    yields its URL once it is ready."""
    with serving(create_app(Settings(bank=bank, wait_for_bank=True))) as retrieval_url:
        worker = create_worker_app(settings.model_copy(update={"service_url": retrieval_url}), networks=networks)
        with serving(worker) as worker_url:
            probe = RetrievalClient(worker_url)
            deadline = time.monotonic() + 30
            while not probe.ready().ready:
                assert time.monotonic() < deadline, probe.ready().message
                time.sleep(0.05)
            yield worker_url
