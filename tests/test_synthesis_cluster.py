"""``POST /synthesize`` on the synthesis workers of a Dask cluster (issue 17, item 4).

A LocalCluster of threads in this process (two workers, each one ``synthesis`` resource unit)
that the tests start and stop themselves; a tiny random network and the 8-image sample val bank.
A slowed ``synthesize`` (from the hardening tests) stands in for a heavy synthesis where
back-pressure and timeouts are under test.
"""

from __future__ import annotations

import pickle
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient

from memory_bank import Bank
from memory_bank.errors import LayoutError, UnavailableError
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.local_cluster import SYNTHESIS_RESOURCE
from synthesis.worker import runtime
from synthesis.worker.cluster import DaskSynthesisBackend, warm_task
from tests.test_hardening_synthesis import OFF, SlowSynthesis, at_once, post, wait_until
from tests.test_overload import SleepySynthesis, check_flood, flood

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPLICAS = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two synthesis workers (threads of this process, so a monkeypatched ``synthesize`` reaches them)."""
    with LocalCluster(
        n_workers=REPLICAS,
        processes=False,
        threads_per_worker=1,
        resources={SYNTHESIS_RESOURCE: 1},
        dashboard_address=":0",
    ) as c:
        yield c


@pytest.fixture(scope="module")
def layout(val_bank: Bank) -> np.ndarray:
    return np.asarray(val_bank.labels[3])


@pytest.fixture(scope="module")
def png(layout: np.ndarray) -> bytes:
    return encode_layout_png(layout)


@pytest.fixture(scope="module")
def networks_off() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**OFF, "SIMS_WORKER_QUEUE": "1"}.items():
            mp.setenv(k, v)
        yield


def backend_of(client: TestClient) -> DaskSynthesisBackend:
    backend = client.app.state.synthesis  # type: ignore[attr-defined]
    assert isinstance(backend, DaskSynthesisBackend)
    return backend


def on_cluster(bank: Path, address: str, weights: Path, **more: Any) -> Settings:
    """The service's settings with /synthesize on the Dask cluster at ``address``."""
    return Settings(bank=bank, wait_for_bank=True, synthesis_cluster=address, synthesis_weights=weights, **more)


def unavailable(r: httpx.Response) -> str:
    """The message of a 503 synthesis_unavailable (any other answer fails)."""
    assert r.status_code == 503 and r.json()["error"] == "synthesis_unavailable", r.text
    return r.json()["message"]


def open_service(settings: Settings, replicas: int = REPLICAS) -> Callable[[], Iterator[TestClient]]:
    def serve() -> Iterator[TestClient]:
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: backend_of(client).replicas == replicas, timeout=30)
            yield client

    return serve


@pytest.fixture(scope="module")
def service(cluster: LocalCluster, val_bank_path: Path, tiny_weights: Path, networks_off: None) -> Iterator[TestClient]:
    settings = on_cluster(val_bank_path, cluster.scheduler_address, tiny_weights)
    yield from open_service(settings)()


@pytest.fixture(scope="module")
def in_process(val_bank_path: Path, tiny_weights: Path, networks_off: None) -> Iterator[TestClient]:
    settings = Settings(
        bank=val_bank_path, wait_for_bank=True, synthesis_backend="in_process", synthesis_weights=tiny_weights
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> SlowSynthesis:
    fake = SlowSynthesis()
    monkeypatch.setattr(runtime, "synthesize", fake)
    return fake


def scheduler_tasks(cluster: LocalCluster) -> int:
    with Client(cluster, set_as_default=False) as client:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def test_same_bytes_as_in_process(service: TestClient, in_process: TestClient, png: bytes) -> None:
    for seed in (0, 1, 2):
        got = post(service, png, data={"seed": str(seed)})
        want = post(in_process, png, data={"seed": str(seed)})
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/png"
        assert got.content == want.content, f"seed {seed}"
        assert got.headers["x-sims-bank-version"] == want.headers["x-sims-bank-version"]
        assert "network;dur=" in got.headers["server-timing"] and "service;dur=" in got.headers["server-timing"]


def test_worker_errors_keep_their_status(service: TestClient, png: bytes) -> None:
    """A layout error raised on the worker (no refiner for coarse=true) comes back as the same 422."""
    r = post(service, png, data={"coarse": "true"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_layout", r.text
    assert "refiner" in r.json()["message"]


def test_errors_survive_the_trip() -> None:
    """Dask pickles a worker's exception: the kind and Retry-After must come back with it."""
    for error in (
        LayoutError("bad", kind="wrong_layout_size"),
        UnavailableError("busy", kind="synthesis_busy", retry_after=7),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and back.args == error.args and back.kind == error.kind
    assert pickle.loads(pickle.dumps(UnavailableError("x", retry_after=7))).retry_after == 7


def test_back_pressure(service: TestClient, cluster: LocalCluster, slow: SlowSynthesis, png: bytes) -> None:
    """Beyond one running and one queued per replica, 503 synthesis_busy with Retry-After; nothing piles up."""
    backend = backend_of(service)
    assert backend.limit == REPLICAS * 2
    backend.peak_in_flight = 0
    for _ in range(2):  # twice: the second burst finds the same room as the first
        responses = at_once(12, lambda: post(service, png))
        ok = [r for r in responses if r.status_code == 200]
        busy = [r for r in responses if r.status_code == 503]
        assert len(ok) + len(busy) == 12, [r.status_code for r in responses]
        assert len(ok) == backend.limit, [r.status_code for r in responses]
        for r in busy:
            assert r.json()["error"] == "synthesis_busy", r.text
            assert int(r.headers["retry-after"]) >= 1
        assert backend.peak_in_flight == backend.limit
        assert slow.peak <= REPLICAS  # one synthesis at a time per worker
        wait_until(lambda: backend.in_flight == 0 and scheduler_tasks(cluster) == 0, timeout=10)
    metrics = service.get("/metrics").text
    assert f"sims_synthesis_replicas {float(REPLICAS)}" in metrics
    assert "sims_synthesis_forwarded 0.0" in metrics


def test_timeout_is_504_and_the_work_stops(
    cluster: LocalCluster, val_bank_path: Path, tiny_weights: Path, networks_off: None, slow: SlowSynthesis, png: bytes
) -> None:
    settings = on_cluster(val_bank_path, cluster.scheduler_address, tiny_weights, synthesis_timeout=0.3)
    for client in open_service(settings)():
        start = time.monotonic()
        r = post(client, png)
        assert r.status_code == 504 and r.json()["error"] == "synthesis_timeout", r.text
        assert time.monotonic() - start < 2
        # The worker's deadline stops the work at its next step, long before its 8 steps of 0.1 s.
        wait_until(lambda: slow.running == 0 and scheduler_tasks(cluster) == 0, timeout=2)


def test_no_cluster_is_503(val_bank_path: Path, tiny_weights: Path, networks_off: None, png: bytes) -> None:
    settings = on_cluster(val_bank_path, "tcp://127.0.0.1:9", tiny_weights)  # nothing listens there
    with TestClient(create_app(settings)) as client:
        r = post(client, png)
        message = unavailable(r)
        assert r.headers["retry-after"] == "1"
        assert "tcp://127.0.0.1:9" in message and "\n" not in message
        assert client.get("/readyz").status_code == 200  # retrieval is not held up by synthesis


def test_cluster_without_synthesis_workers_is_503(
    val_bank_path: Path, tiny_weights: Path, networks_off: None, png: bytes
) -> None:
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0") as plain:
        settings = on_cluster(val_bank_path, plain.scheduler_address, tiny_weights)
        with TestClient(create_app(settings)) as client:
            backend = backend_of(client)
            wait_until(lambda: backend.error is not None and "no synthesis workers" in backend.error, timeout=30)
            assert "--synthesis-workers" in unavailable(post(client, png))


def test_networks_that_do_not_load_are_503_naming_the_worker(
    cluster: LocalCluster, val_bank_path: Path, tmp_path: Path, networks_off: None, png: bytes
) -> None:
    settings = on_cluster(val_bank_path, cluster.scheduler_address, tmp_path / "no-network")
    with TestClient(create_app(settings)) as client:
        backend = backend_of(client)
        wait_until(lambda: "no-network" in (backend.error or ""), timeout=30)
        assert backend.replicas == 0  # a worker whose warm-up fails is never admitted work
        message = unavailable(post(client, png))
        assert "synthesis worker" in message and "no-network" in message and "\n" not in message


WARM_GATE = threading.Event()


def held_warm(plugin: str, version: str) -> str:
    """A warm task that waits for ``WARM_GATE``: a worker still loading its networks (a module-level
    function, so that Dask pickles it by reference)."""
    WARM_GATE.wait(30)
    return warm_task(plugin, version)


def test_workers_count_as_replicas_only_once_warm(
    cluster: LocalCluster,
    val_bank_path: Path,
    tiny_weights: Path,
    networks_off: None,
    png: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from synthesis.worker import cluster as module

    WARM_GATE.clear()
    monkeypatch.setattr(module, "warm_task", held_warm)
    settings = on_cluster(val_bank_path, cluster.scheduler_address, tiny_weights)
    with TestClient(create_app(settings)) as client:
        backend = backend_of(client)
        wait_until(lambda: "still loading" in (backend.error or ""), timeout=30)
        assert backend.replicas == 0
        assert "2 synthesis workers are still loading" in unavailable(post(client, png))
        WARM_GATE.set()
        wait_until(lambda: backend.replicas == REPLICAS, timeout=30)
        assert post(client, png).status_code == 200


def test_sims_serve_synthesis_cluster_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from retrieval_service.api import server
    from retrieval_service.api.synthesis import load_backend
    from sims.cli import main

    seen: list[Settings] = []
    monkeypatch.setattr(server, "serve", seen.append)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--bank", "bank", "--synthesis-cluster", "tcp://sched:8786"]) == 0
    (settings,) = seen
    assert settings.synthesis_cluster == "tcp://sched:8786"
    for name, value in settings.to_env().items():  # what uvicorn's worker processes read back
        monkeypatch.setenv(name, value)
    assert Settings() == settings
    backend = load_backend(settings, None)
    assert isinstance(backend, DaskSynthesisBackend) and backend.address == "tcp://sched:8786"
    assert backend.plugin is not None and backend.plugin.bank == str(tmp_path / "bank")  # absolute for the workers
    assert backend.queue == 1 and backend.limit == 0  # no replica seen yet
    with pytest.raises(UnavailableError, match="no synthesis worker is up"):
        backend.check_capacity()
    # --with-worker wins; an empty variable (docker-compose's `${VAR-}`) is no cluster.
    both = Settings(bank=tmp_path, synthesis_backend="in_process", synthesis_cluster="tcp://x:1")
    assert load_backend(both, None).name == "in_process"  # type: ignore[union-attr]
    monkeypatch.setenv("SIMS_SYNTHESIS_CLUSTER", "")
    assert Settings().synthesis_cluster is None


def test_malloc_thresholds_are_restored_only_under_a_nanny(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthesis.worker.cluster import restore_malloc_thresholds

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert restore_malloc_thresholds() is False  # a plain process keeps glibc's dynamic thresholds
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what the Dask nanny sets
    assert restore_malloc_thresholds() is (platform.libc_ver()[0] == "glibc")


def test_under_a_flood_admitted_syntheses_finish(
    cluster: LocalCluster, val_bank_path: Path, tiny_weights: Path, networks_off: None, png: bytes
) -> None:
    """Issue 29: the replicas are the slots of one deadline-aware admission; under a flood with a short
    timeout at least one request succeeds and none admitted times out."""
    fake = SleepySynthesis(steps=4, step=0.4)  # 1.6 s; as in tests/test_overload.py
    settings = on_cluster(val_bank_path, cluster.scheduler_address, tiny_weights, synthesis_timeout=2.8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "synthesize_reply", fake)
        client = next(serve := open_service(settings)())
        backend = backend_of(client)
        statuses = check_flood(flood(lambda: post(client, png), clients=8, seconds=6.0))
        assert statuses[503] > statuses[200]
        assert fake.peak <= REPLICAS
        wait_until(lambda: backend.in_flight == 0 and scheduler_tasks(cluster) == 0, timeout=10)
        serve.close()
