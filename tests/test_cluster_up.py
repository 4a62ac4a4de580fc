"""``sims cluster up`` (issue 17, item 5) with the service's synthesis on it (item 4): real processes.

The test starts ``sims cluster up`` itself (a scheduler and two synthesis workers, each a process
under its nanny), points a service at it, kills one worker replica under load, and stops the
cluster with SIGTERM: it must exit 0 and leave no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from distributed import Client
from fastapi.testclient import TestClient

from memory_bank import Bank
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.local_cluster import SYNTHESIS_RESOURCE, ClusterSpec
from synthesis.worker.cluster import DaskSynthesisBackend
from tests.test_hardening_synthesis import OFF, post, wait_until

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def start_cluster(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``sims cluster up ARGS`` in a process of its own; returns it and the scheduler address it printed."""
    env = {**os.environ, **OFF, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sims", "cluster", "up", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if match := re.match(r"scheduler (tcp://\S+):", line):
            # Keep reading stdout so that the cluster never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, match[1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"sims cluster up did not announce its scheduler (exit code {proc.poll()})")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, address = start_cluster("--workers", "0", "--synthesis-workers", "2")
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cluster_up_serves_synthesis_and_survives_a_dead_replica(
    cluster: tuple[subprocess.Popen[str], str],
    val_bank_path: Path,
    val_bank: Bank,
    tiny_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, address = cluster
    for k, v in OFF.items():
        monkeypatch.setenv(k, v)
    with Client(address, set_as_default=False) as dask:
        workers = dask.scheduler_info(n_workers=-1)["workers"]
        assert sorted(w["name"] for w in workers.values()) == ["synthesis-0", "synthesis-1"]
        assert all(w["resources"] == {SYNTHESIS_RESOURCE: 1} for w in workers.values())
        settings = Settings(
            bank=val_bank_path, wait_for_bank=True, synthesis_cluster=address, synthesis_weights=tiny_weights
        )
        png = encode_layout_png(np.asarray(val_bank.labels[3]))
        with TestClient(create_app(settings)) as service:
            backend = service.app.state.synthesis  # type: ignore[attr-defined]
            assert isinstance(backend, DaskSynthesisBackend)
            wait_until(lambda: backend.replicas == 2, timeout=60)
            first = post(service, png, data={"seed": "4"})
            assert first.status_code == 200, first.text

            # Load from three clients while one replica is killed: only 200s and 503s with Retry-After.
            statuses: list[httpx.Response] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    statuses.append(post(service, png, data={"seed": "4"}))

            threads = [threading.Thread(target=load) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            pids = dask.run(os.getpid)
            victim = next(a for a, w in workers.items() if w["name"] == "synthesis-0")
            os.kill(pids[victim], signal.SIGKILL)
            killed_at, before = time.monotonic(), len(statuses)
            time.sleep(3.0)
            stop.set()
            for t in threads:
                t.join(30)
            after = statuses[before:]
            assert {r.status_code for r in statuses} <= {200, 503}, sorted({r.status_code for r in statuses})
            for r in statuses:
                if r.status_code == 503:
                    assert r.json()["error"] in ("synthesis_busy", "synthesis_unavailable") and r.headers["retry-after"]
                else:
                    assert r.content == first.content  # same seed, same bank version: same bytes
            assert any(r.status_code == 200 for r in after), "nothing was answered after the kill"

            # The nanny starts a new worker, the plugin sets it up, and both replicas are back.
            dask.wait_for_workers(2, timeout=30)
            wait_until(lambda: backend.replicas == 2, timeout=30)
            assert time.monotonic() - killed_at < 30
            again = post(service, png, data={"seed": "4"})
            assert again.status_code == 200 and again.content == first.content


def test_cluster_up_stops_cleanly_on_sigterm(cluster: tuple[subprocess.Popen[str], str]) -> None:
    proc, _ = cluster
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the two worker processes (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


def test_cluster_spec_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        ClusterSpec(workers=0, synthesis_workers=0)
    with pytest.raises(ValueError, match="port"):
        ClusterSpec(port=70000)
    specs = ClusterSpec(workers=1, synthesis_workers=2, threads=3).worker_specs()
    assert sorted(specs) == ["synthesis-0", "synthesis-1", "worker-0"]
    assert specs["worker-0"]["options"]["nthreads"] == 3 and "resources" not in specs["worker-0"]["options"]
    assert specs["synthesis-1"]["options"]["resources"] == {SYNTHESIS_RESOURCE: 1}
    assert specs["synthesis-1"]["options"]["nthreads"] == 1
