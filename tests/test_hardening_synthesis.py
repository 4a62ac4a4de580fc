"""Issue 15, items 1 and 2: bounded synthesis under overload, work that stops at its deadline, Retry-After.

A tiny random network and the 8-image sample bank; a slowed ``synthesize`` (steps of a fixed time,
checking the deadline between them like the pipeline does) stands in for a heavy synthesis, so
the timeouts are a fraction of a second.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from memory_bank import Bank
from memory_bank.errors import TimedOutError, UnavailableError
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.api.synthesis import HttpSynthesisBackend
from retrieval_service.client import RetrievalClient, ServiceError
from retrieval_service.types import SynthesizeOptions
from synthesis.pipeline import Deadline, ImageGenerator, Networks, SynthesisPipeline, SynthesisStoppedError
from synthesis.worker import runtime
from synthesis.worker.app import create_worker_app
from synthesis.worker.runtime import SynthesisSlots
from synthesis.worker.settings import WorkerSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OFF = {"SIMS_WORKER_REFINE_WEIGHTS": "none", "SIMS_WORKER_TRANSFORM_WEIGHTS": "none"}
OFF |= {"SIMS_WORKER_ORDERING_WEIGHTS": "none"}
# And the seam blend: the follow-up syntheses here must fit the 0.3 s timeout on a loaded machine.
OFF |= {"SIMS_WORKER_SEAM_BLEND": "false"}


class Steps:
    """A stand-in for slow work: ``steps`` sleeps of ``step`` seconds, checking the deadline between
    them as the pipeline does, counting the calls running at once (and their peak)."""

    def __init__(self, steps: int, step: float) -> None:
        self.steps, self.step = steps, step
        self.lock = threading.Lock()
        self.running = self.peak = 0

    def run(self, stop: Deadline | None, then: Callable[[], Any]) -> Any:
        """The steps, then ``then()``'s result."""
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            for _ in range(self.steps):
                if stop is not None:
                    stop.check("network")
                time.sleep(self.step)
            return then()
        finally:
            with self.lock:
                self.running -= 1


class SlowSynthesis(Steps):
    """``runtime.synthesize`` made of ``steps`` steps of ``step`` seconds, checking the deadline between them."""

    def __init__(self, steps: int = 8, step: float = 0.1) -> None:
        super().__init__(steps, step)
        self.real = runtime.synthesize

    def __call__(
        self, pipeline: Any, layout: np.ndarray, options: Any, stop: Deadline | None = None, *rest: Any, **more: Any
    ) -> Any:
        # ``more``: what the real one takes by keyword (``checked``), passed on as given.
        return self.run(stop, lambda: self.real(pipeline, layout, options, stop, *rest, **more))


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> SlowSynthesis:
    fake = SlowSynthesis()
    monkeypatch.setattr(runtime, "synthesize", fake)
    return fake


@pytest.fixture(scope="module")
def layout(val_bank: Bank) -> np.ndarray:
    return np.asarray(val_bank.labels[3])


def post(client: TestClient, png: bytes, **kwargs: Any) -> httpx.Response:
    return client.post("/synthesize", files={"layout": ("layout.png", png, "image/png")}, **kwargs)


def at_once(n: int, call: Callable[[], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: call(), range(n)))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``predicate()`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def in_process(val_bank_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The service with the in-process backend: one slot, a queue of one, a 0.3 s timeout."""
    for k, v in {**OFF, "SIMS_WORKER_CONCURRENCY": "1", "SIMS_WORKER_QUEUE": "1"}.items():
        monkeypatch.setenv(k, v)
    settings = Settings(
        bank=val_bank_path,
        wait_for_bank=True,
        synthesis_backend="in_process",
        synthesis_weights=tiny_weights,
        synthesis_timeout=0.3,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_full_queue_is_503_with_retry_after_and_never_more_than_the_limit_run(
    in_process: TestClient, slow: SlowSynthesis, layout: np.ndarray
) -> None:
    png = encode_layout_png(layout)
    slots = in_process.app.state.synthesis.slots
    replies = at_once(6, lambda: post(in_process, png))
    statuses = sorted(r.status_code for r in replies)
    # One runs (and times out); with no synthesis measured yet, none may wait: the other five are refused at once.
    assert statuses == [503] * 5 + [504], statuses
    for r in replies:
        if r.status_code == 503:
            assert r.json()["error"] == "synthesis_busy"
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert r.json()["error"] == "synthesis_timeout"
    assert slow.peak == 1
    # The timed-out work stops within a step, and only then is its slot free.
    wait_until(lambda: slots.admitted == 0, timeout=2 * slow.step + 1)
    assert slow.running == 0 and slots.peak_running == 1
    metrics = in_process.get("/metrics").text
    assert "sims_synthesis_peak_running 1.0" in metrics and "sims_synthesis_admitted 0.0" in metrics
    assert "sims_synthesis_running 0.0" in metrics


def test_timed_out_work_stops_and_holds_its_slot_until_then(
    in_process: TestClient, slow: SlowSynthesis, layout: np.ndarray
) -> None:
    png = encode_layout_png(layout)
    slots = in_process.app.state.synthesis.slots
    start = time.monotonic()
    assert post(in_process, png).status_code == 504
    assert time.monotonic() - start < 0.3 + 1.0  # the 504 does not wait for the work
    # Still stopping: it counts against the limit (the one slot and the queue of one).
    stopped_after = wait_until(lambda: slow.running == 0, timeout=1.0)
    assert slots.admitted == 0 or wait_until(lambda: slots.admitted == 0, timeout=0.5) < 0.5
    assert stopped_after < 2 * slow.step + 0.5  # at the first check past the deadline, not after 8 steps
    # A fast synthesis afterwards is admitted and succeeds.
    slow.steps = 0
    assert post(in_process, png).status_code == 200


def test_pipeline_stops_between_steps(val_bank: Bank, tiny_weights: Path, layout: np.ndarray) -> None:
    pipeline = SynthesisPipeline.from_bank(val_bank, tiny_weights)
    with pytest.raises(SynthesisStoppedError, match="before retrieve"):
        pipeline(layout, stop=Deadline(0.0))

    class StopAtNetwork(Deadline):
        def check(self, step: str) -> None:
            if step == "network":
                self.cancel()
            super().check(step)

    with pytest.raises(SynthesisStoppedError, match="cancelled .*before network"):
        pipeline(layout, stop=StopAtNetwork(60.0))
    assert pipeline(layout, stop=Deadline(60.0)).image.shape == (*layout.shape, 3)


def test_slots_refuse_when_full_and_release_only_when_work_ends() -> None:
    release = threading.Event()

    def work(stop: Deadline) -> str:
        release.wait(5)
        return "done"

    async def scenario() -> None:
        slots = SynthesisSlots(concurrency=1, queue=0)
        # 0.5 s: the job must have started before it times out (one that never started is
        # cancelled and frees its slot at once), even on a loaded machine.
        first = asyncio.create_task(slots.run(work, timeout=0.5))
        with pytest.raises(TimedOutError):
            await first
        # Timed out, but its thread has not returned: the slot is still taken.
        assert slots.admitted == 1
        with pytest.raises(UnavailableError) as busy:
            await slots.run(work, timeout=1.0)
        assert busy.value.kind == "synthesis_busy" and busy.value.retry_after >= 1
        release.set()
        while slots.admitted:
            await asyncio.sleep(0.01)
        assert await slots.run(work, timeout=1.0) == "done"
        assert slots.peak_running == 1
        slots.close()

    asyncio.run(scenario())


def test_worker_refuses_when_full_and_honours_the_callers_timeout(
    val_bank_path: Path, tiny_weights: Path, slow: SlowSynthesis, layout: np.ndarray
) -> None:
    body = {"layout_png": base64.b64encode(encode_layout_png(layout)).decode()}
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as service:
        networks = Networks(ImageGenerator.from_pretrained(tiny_weights))
        settings = WorkerSettings(threads=1, concurrency=1, queue=0, timeout=30.0)
        app = create_worker_app(settings, client=RetrievalClient(http=service), networks=networks)
        with TestClient(app) as worker:
            wait_until(lambda: worker.get("/readyz").status_code == 200, timeout=20)
            start = time.monotonic()
            replies = at_once(3, lambda: worker.post("/synthesize", json=body, headers={"X-SIMS-Timeout": "0.2"}))
            assert time.monotonic() - start < 5  # the caller's 0.2 s, not the worker's 30 s
            statuses = sorted(r.status_code for r in replies)
            assert statuses == [503, 503, 504], statuses
            busy = [r for r in replies if r.status_code == 503]
            assert all(r.json()["error"] == "synthesis_busy" and "retry-after" in r.headers for r in busy)
            wait_until(lambda: slow.running == 0, timeout=2)
            assert slow.peak == 1


def test_http_backend_relays_busy_workers_and_sends_its_timeout() -> None:
    seen: list[str] = []

    def busy(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-sims-timeout"])
        retry = "7" if request.url.port == 1 else "3"
        body = {"error": "synthesis_busy", "message": "all slots taken"}
        return httpx.Response(503, json=body, headers={"retry-after": retry})

    backend = HttpSynthesisBackend(["http://a:1", "http://b:2"], 2.5, transport=httpx.MockTransport(busy))
    with pytest.raises(UnavailableError) as e:
        asyncio.run(backend.synthesize(b"png", SynthesizeOptions()))
    assert e.value.kind == "synthesis_busy" and e.value.retry_after == 3
    # The time left of the 2.5 s deadline goes with each attempt.
    assert len(seen) == 2 and all(2.0 < float(t) <= 2.5 for t in seen), seen


def test_http_backend_bounds_the_requests_in_flight() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(request: httpx.Request) -> httpx.Response:
            await release.wait()
            headers = {"content-type": "image/png", "x-sims-slots": "concurrency=2, queue=1"}
            return httpx.Response(200, content=b"PNG", headers=headers)

        backend = HttpSynthesisBackend(["http://a:1"], 5.0, max_in_flight=2, transport=httpx.MockTransport(slow))
        backend.check_capacity()
        # Until the worker has answered once (and said its slots), one request at a time goes to it.
        first = asyncio.create_task(backend.synthesize(b"png", SynthesizeOptions()))
        await asyncio.sleep(0.05)
        with pytest.raises(UnavailableError):
            backend.check_capacity()
        release.set()
        assert (await first).content == b"PNG"
        assert backend.mirrors["http://a:1"].concurrency == 2
        release.clear()
        jobs = [asyncio.create_task(backend.synthesize(b"png", SynthesizeOptions())) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert backend.in_flight == 2
        # The worker could queue a third, but the service forwards at most max_in_flight.
        with pytest.raises(UnavailableError) as e:
            backend.check_capacity()
        assert e.value.kind == "synthesis_busy" and e.value.retry_after >= 1
        with pytest.raises(UnavailableError):
            await backend.synthesize(b"png", SynthesizeOptions())
        release.set()
        assert [r.content for r in await asyncio.gather(*jobs)] == [b"PNG", b"PNG"]
        assert backend.in_flight == 0
        backend.check_capacity()
        await backend.close()

    asyncio.run(scenario())
    # The default: four per worker (one above a worker's two slots and queue of one).
    assert HttpSynthesisBackend(["http://a:1", "http://b:2"], 1.0).max_in_flight == 8


def client_over(replies: list[httpx.Response], **kwargs: Any) -> tuple[RetrievalClient, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return replies[min(len(calls), len(replies)) - 1]

    http = httpx.Client(base_url="http://sims", transport=httpx.MockTransport(handler))
    return RetrievalClient(http=http, **kwargs), calls


BANK = {"version": "v1", "classes": [], "counts": {}, "grids": {}}


def test_client_honours_retry_after_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    busy = httpx.Response(503, json={"error": "synthesis_busy", "message": "full"}, headers={"retry-after": "2"})
    limited = httpx.Response(429, json={"error": "rate_limited", "message": "slow down"}, headers={"retry-after": "1"})
    ok = httpx.Response(200, content=b"PNG")
    client, calls = client_over([busy, limited, ok])
    assert client.synthesize_png(b"layout") == b"PNG"
    assert waits == [2.0, 1.0] and len(calls) == 3
    # More refusals than retries: the last one is raised.
    waits.clear()
    client, calls = client_over([busy], retries=2)
    with pytest.raises(ServiceError) as e:
        client.synthesize_png(b"layout")
    assert e.value.status == 503 and len(calls) == 3 and waits == [2.0, 2.0]
    # A wait longer than max_retry_wait, or no Retry-After at all, is not waited for.
    waits.clear()
    for reply in (busy, httpx.Response(503, json={"error": "x", "message": "y"})):
        client, calls = client_over([reply], max_retry_wait=1.0)
        with pytest.raises(ServiceError):
            client.synthesize_png(b"layout")
        assert len(calls) == 1
    assert waits == []
