"""Issue 29: under overload admitted requests finish, and refused ones cost nothing.

The in-process backend on the 8-image sample bank and a tiny random network; a slowed ``synthesize``
(steps of a fixed time, from the hardening tests) stands in for a heavy synthesis, so floods are a
few seconds long. The separate worker's path is tested through the service's mirror of it against
a fake worker that admits with the same :class:`~retrieval_service.admission.Admission`; the Dask
path's flood is in tests/test_synthesis_cluster.py.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from memory_bank import Bank
from memory_bank.errors import UnavailableError
from memory_bank.png import encode_layout_png
from retrieval_service.admission import Admission, ServiceTime, Ticket, slots_header
from retrieval_service.api.app import create_app
from retrieval_service.api.routes import synthesize as synthesize_route
from retrieval_service.api.settings import Settings
from retrieval_service.api.synthesis import HttpSynthesisBackend
from retrieval_service.client import RetrievalClient
from retrieval_service.types import SynthesisReply, SynthesizeOptions
from synthesis.pipeline import Deadline, ImageGenerator, Networks
from synthesis.worker import app as worker_module
from synthesis.worker import backend as backend_module
from synthesis.worker import runtime
from synthesis.worker.app import create_worker_app
from synthesis.worker.settings import WorkerSettings
from tests.test_hardening_synthesis import OFF, SlowSynthesis, Steps, post, wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def png(val_bank: Bank) -> bytes:
    return encode_layout_png(np.asarray(val_bank.labels[3]))


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> SlowSynthesis:
    fake = SlowSynthesis(steps=3, step=0.1)
    monkeypatch.setattr(runtime, "synthesize", fake)
    return fake


def service(val_bank_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> TestClient:
    """The service with the in-process backend: two slots, a queue of one."""
    for k, v in {**OFF, "SIMS_WORKER_CONCURRENCY": "2", "SIMS_WORKER_QUEUE": "1"}.items():
        monkeypatch.setenv(k, v)
    options = {"synthesis_timeout": 60.0, **settings}
    return TestClient(
        create_app(
            Settings(
                bank=val_bank_path,
                wait_for_bank=True,
                synthesis_backend="in_process",
                synthesis_weights=tiny_weights,
                **options,
            )
        )
    )


@pytest.fixture
def in_process(val_bank_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with service(val_bank_path, tiny_weights, monkeypatch) as c:
        yield c


def admission_of(client: TestClient) -> Admission:
    return client.app.state.synthesis.admission  # type: ignore[attr-defined]


class Calls:
    """Counts the calls of a function it wraps."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.n = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.n += 1
        return self.fn(*args, **kwargs)


def fill(admission: Admission) -> list[Ticket]:
    """Take every slot and the queue, as running and waiting syntheses would (of 1 s, if none was measured yet)."""
    if admission.service.mean is None:
        admission.service = ServiceTime(prior=1.0)
    tickets = [admission.admit(1e9, upstream=True) for _ in range(admission.limit)]
    for t in tickets[: admission.concurrency]:
        t.start()
    return tickets


def flood(call: Callable[[], httpx.Response], clients: int, seconds: float) -> list[httpx.Response]:
    """``clients`` threads calling back to back for ``seconds``."""
    end = time.monotonic() + seconds
    out: list[httpx.Response] = []
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < end:
            r = call()
            with lock:
                out.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def check_flood(replies: list[httpx.Response]) -> Counter[int]:
    """At least one request succeeded, none admitted timed out, every refusal says when to retry."""
    statuses = Counter(r.status_code for r in replies)
    print("flood:", dict(statuses))
    assert statuses[200] >= 1, statuses
    assert statuses[504] == 0, statuses
    assert set(statuses) <= {200, 503}, statuses
    for r in replies:
        if r.status_code == 503:
            assert r.json()["error"] == "synthesis_busy", r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60
    return statuses


# A refused request costs nothing: no body read, no PNG decoded, no engine touched


def test_a_refused_request_never_reaches_the_decoder(
    in_process: TestClient, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Calls(synthesize_route.read_layout_request)
    decodes = Calls(synthesize_route.decode_layout)
    syntheses = Calls(backend_module.synthesize_reply)
    monkeypatch.setattr(synthesize_route, "read_layout_request", reads)
    monkeypatch.setattr(synthesize_route, "decode_layout", decodes)
    monkeypatch.setattr(backend_module, "synthesize_reply", syntheses)
    engine = in_process.app.state.holder.require().engine
    retrievals = Calls(engine.retrieve_query)
    monkeypatch.setattr(engine, "retrieve_query", retrievals)
    tickets = fill(admission_of(in_process))
    # Even a body the service would refuse as too large is not looked at: the queue state comes first.
    for r in (post(in_process, png), post(in_process, png + b"x" * (9 << 20))):
        assert r.status_code == 503 and r.json()["error"] == "synthesis_busy", r.text
        assert int(r.headers["retry-after"]) >= 1
    assert (reads.n, decodes.n, syntheses.n, retrievals.n) == (0, 0, 0, 0)
    for t in tickets:
        t.release()
    # With room again, the same request goes all the way.
    r = post(in_process, png)
    assert r.status_code == 200, r.text
    assert (reads.n, decodes.n, syntheses.n) == (1, 1, 1)


def test_a_refusal_comes_before_the_key_is_needed_only_after_it(
    val_bank_path: Path, tiny_weights: Path, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service(val_bank_path, tiny_weights, monkeypatch, api_keys="synthesize:k1") as c:
        fill(admission_of(c))
        assert post(c, png).status_code == 401  # no key: told so, not told the load
        r = post(c, png, headers={"X-API-Key": "k1"})
        assert r.status_code == 503 and r.json()["error"] == "synthesis_busy"


def test_the_separate_worker_refuses_before_reading_its_body(
    val_bank_path: Path, tiny_weights: Path, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = Calls(worker_module.png_from_base64)
    monkeypatch.setattr(worker_module, "png_from_base64", decodes)
    body = {"layout_png": base64.b64encode(png).decode()}
    with TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as svc:
        networks = Networks(ImageGenerator.from_pretrained(tiny_weights))
        settings = WorkerSettings(threads=1, concurrency=1, queue=0)
        app = create_worker_app(settings, client=RetrievalClient(http=svc), networks=networks)
        with TestClient(app) as worker:
            wait_until(lambda: worker.get("/readyz").status_code == 200, timeout=20)
            fill(worker.app.state.slots)  # type: ignore[attr-defined]
            r = worker.post("/synthesize", json=body)
            assert r.status_code == 503 and r.json()["error"] == "synthesis_busy"
            assert r.headers["x-sims-slots"] == slots_header(1, 0)
            assert decodes.n == 0


# The client's deadline


def test_a_client_deadline_refuses_what_would_finish_too_late(
    in_process: TestClient, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    admission = admission_of(in_process)
    admission.service = ServiceTime(prior=2.0, spread=0.0)  # a synthesis takes 2 s here
    running = admission.admit(1e9, upstream=True)
    running.start()
    reads = Calls(synthesize_route.read_layout_request)
    monkeypatch.setattr(synthesize_route, "read_layout_request", reads)
    # Behind the running one it would take up to 4 s: a client that gives it 1 s is refused at once.
    r = post(in_process, png, headers={"X-SIMS-Timeout": "1"})
    assert r.status_code == 503 and r.json()["error"] == "synthesis_busy", r.text
    assert "past its deadline of 1 s" in r.json()["message"] and int(r.headers["retry-after"]) >= 1
    assert reads.n == 0
    # The same deadline in the body: refused after the body is read, but before the layout is decoded.
    decodes = Calls(synthesize_route.decode_layout)
    monkeypatch.setattr(synthesize_route, "decode_layout", decodes)
    r = post(in_process, png, data={"timeout_s": "1"})
    assert r.status_code == 503 and r.json()["error"] == "synthesis_busy", r.text
    assert decodes.n == 0
    # A deadline longer than the server's is capped by it, and bad ones are one-line 422s.
    assert admission.admitted == 1
    for headers, data in (({"X-SIMS-Timeout": "soon"}, {}), ({"X-SIMS-Timeout": "-3"}, {}), ({}, {"timeout_s": "0"})):
        r = post(in_process, png, headers=headers, data=data)
        assert r.status_code == 422, r.text
        assert "\n" not in r.json()["message"]
    running.release()


# Floods: at least one request succeeds, no admitted request times out


class SleepySynthesis(Steps):
    """``synthesize_reply`` as ``steps`` sleeps of ``step`` seconds, checking the deadline between them:
    a synthesis that takes time but little CPU, so the flood's own clients (threads of this
    process) do not slow it down."""

    def __init__(self, steps: int = 3, step: float = 0.1) -> None:
        super().__init__(steps, step)

    def __call__(self, *args: Any, stop: Deadline | None = None, **kwargs: Any) -> SynthesisReply:
        return self.run(stop, lambda: SynthesisReply(b"PNG", "image/png"))


def test_under_a_flood_with_a_short_timeout_admitted_requests_finish(
    val_bank_path: Path, tiny_weights: Path, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A synthesis takes 1.6 s and the deadline is 2.8 s: two may run side by side, but one that waits
    # for a slot would finish late. With a queue bound alone (deadline-blind) the waiting one times out.
    # (Seconds, not tenths: this process's own flooding clients, and a busy machine, wake sleeps late.)
    fake = SleepySynthesis(steps=4, step=0.4)
    monkeypatch.setattr(backend_module, "synthesize_reply", fake)
    with service(val_bank_path, tiny_weights, monkeypatch, synthesis_timeout=2.8) as c:
        statuses = check_flood(flood(lambda: post(c, png), clients=8, seconds=6.0))
        assert statuses[503] > statuses[200]  # it was a flood
        assert fake.peak <= 2
        wait_until(lambda: admission_of(c).admitted == 0, timeout=5)


def test_the_service_forwards_only_what_a_worker_admits() -> None:
    """The service's mirror of a worker admits exactly what the worker would: under a flood the
    worker (a fake one, with the same admission, two slots and a queue of one) never refuses."""
    worker = Admission(2, 1)
    seen: Counter[int] = Counter()

    async def fake_worker(request: httpx.Request) -> httpx.Response:
        headers = {"x-sims-slots": slots_header(2, 1)}
        timeout = float(request.headers["x-sims-timeout"])
        try:
            ticket = worker.admit(timeout, upstream="x-sims-admitted" in request.headers)
        except UnavailableError as e:
            seen[503] += 1
            body = {"error": e.kind, "message": str(e)}
            return httpx.Response(503, json=body, headers={**headers, "retry-after": str(e.retry_after)})
        ticket.start()
        await asyncio.sleep(0.15)
        ticket.finish()
        seen[200] += 1
        return httpx.Response(200, content=b"PNG", headers={**headers, "content-type": "image/png"})

    async def scenario() -> Counter[str]:
        backend = HttpSynthesisBackend(["http://w:1"], 0.5, transport=httpx.MockTransport(fake_worker))
        out: Counter[str] = Counter()
        end = time.monotonic() + 2.0

        async def client() -> None:
            while time.monotonic() < end:
                try:
                    ticket = backend.admit(0.5)  # what the route's gate does, before the body
                    await backend.synthesize(b"png", SynthesizeOptions(), ticket=ticket)
                    out["200"] += 1
                except UnavailableError as e:
                    out[e.kind or "?"] += 1
                    # Back again at once, as a flood does (2 ms: the clients share this event loop
                    # with the fake worker, which a pure spin would starve).
                    await asyncio.sleep(0.002)
                except Exception as e:
                    out[type(e).__name__] += 1

        await asyncio.gather(*(client() for _ in range(10)))
        await backend.close()
        return out

    out = asyncio.run(scenario())
    assert out["200"] >= 3 and out["synthesis_busy"] > out["200"], out
    assert set(out) == {"200", "synthesis_busy"}, out  # no timeouts, nothing else
    assert seen[503] == 0 and seen[200] == out["200"], (seen, out)


def test_the_specs_list_the_refusals(in_process: TestClient) -> None:
    paths = in_process.get("/openapi.json").json()["paths"]
    synthesize = paths["/synthesize"]["post"]["responses"]
    assert {"408", "413", "429", "503", "504"} <= set(synthesize)
    assert "deadline" in synthesize["503"]["description"]
    worker = create_worker_app(WorkerSettings()).openapi()["paths"]["/synthesize"]["post"]["responses"]
    assert {"422", "502", "503", "504"} <= set(worker)
    assert "synthesis_busy" in worker["503"]["description"]


@pytest.mark.parametrize("hold", [0.0, 0.3])
def test_a_refusal_is_held_without_reading_its_body(
    val_bank_path: Path, tiny_weights: Path, png: bytes, monkeypatch: pytest.MonkeyPatch, hold: float
) -> None:
    # A flood that retries at once is slowed by the hold; the hold reads nothing and decides nothing.
    with service(val_bank_path, tiny_weights, monkeypatch, refusal_hold=hold) as c:
        reads = Calls(synthesize_route.read_layout_request)
        monkeypatch.setattr(synthesize_route, "read_layout_request", reads)
        fill(admission_of(c))
        start = time.perf_counter()
        r = post(c, png)
        took = time.perf_counter() - start
        assert r.status_code == 503 and r.json()["error"] == "synthesis_busy", r.text
        assert int(r.headers["retry-after"]) >= 1
        assert took >= hold
        assert reads.n == 0
    # Other refusals are not held: a missing key is told at once.
    with service(val_bank_path, tiny_weights, monkeypatch, refusal_hold=5.0, api_keys="synthesize:k1") as c:
        start = time.perf_counter()
        assert post(c, png).status_code == 401
        assert time.perf_counter() - start < 2.0
