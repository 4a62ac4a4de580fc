"""Hot swap of bank versions: /admin/reload, requests in flight, failures and the version watcher."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexers.build import add_to_bank
from indexers.readers import create_reader
from memory_bank import current_version, open_bank
from memory_bank.png import encode_layout_png
from memory_bank.store import CURRENT_FILE
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder
from retrieval_service.types import RetrievalOptions

KEY = "reload-key"
ADMIN = {"X-API-Key": KEY}


@pytest.fixture
def bank_copy(val_bank_path: Path, tmp_path: Path) -> Path:
    """A private copy of the sample val bank, free to get new versions."""
    dst = tmp_path / "bank"
    shutil.copytree(val_bank_path, dst)
    return dst


def publish(bank: str | Path, data: Path) -> str:
    """Append ``data`` to ``bank`` as a new published version; returns its id."""
    add_to_bank(create_reader("camvid", data, ["train"]), bank, workers=1, progress=False)
    return current_version(bank)


@pytest.fixture
def served(bank_copy: Path) -> Iterator[TestClient]:
    settings = Settings(bank=bank_copy, api_key=KEY, wait_for_bank=True)
    with TestClient(create_app(settings)) as c:
        yield c


def retrieve(client: TestClient, layout: np.ndarray) -> dict:
    r = client.post("/retrieve", files={"layout": ("l.png", encode_layout_png(layout), "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    return r.json()


def test_reload_switches_to_the_new_version(served: TestClient, bank_copy: Path, extra_data: Path) -> None:
    layout = np.asarray(open_bank(bank_copy).labels[0])
    v1 = served.get("/bank").json()["version"]
    assert retrieve(served, layout)["bank_version"] == v1
    nothing = served.post("/admin/reload", headers=ADMIN).json()
    assert nothing["reloaded"] is False and nothing["version"] == v1

    v2 = publish(bank_copy, extra_data)
    assert v2 != v1
    assert served.get("/bank").json()["version"] == v1  # no watcher: nothing changes until asked
    r = served.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200
    body = r.json()
    assert (body["reloaded"], body["previous_version"], body["version"]) == (True, v1, v2)
    assert v2 in body["message"] and body["seconds"] > 0
    info = served.get("/bank").json()
    assert info["version"] == v2 and info["parent_version"] == v1 and info["available_versions"] == [v1, v2]
    assert info["counts"]["images"] == 10
    after = retrieve(served, layout)
    assert after["bank_version"] == v2
    # New segments can be retrieved: the appended images have ids 8 and 9.
    new_layout = np.asarray(open_bank(bank_copy).labels[8])
    hits = {c["image_id"] for comp in retrieve(served, new_layout)["components"] for c in comp["candidates"]}
    assert 8 in hits
    # The old version stays readable by name; appended ids are stable.
    old_meta = served.get("/segments/0/meta", params={"version": v1}).json()
    assert old_meta["bank_version"] == v1
    assert {**old_meta, "bank_version": v2} == served.get("/segments/0/meta").json()
    assert served.post("/admin/reload", headers=ADMIN).json()["reloaded"] is False
    assert 'sims_bank_reloads_total{outcome="switched"} 2.0' in served.get("/metrics").text


def test_requests_during_a_reload_all_succeed(served: TestClient, bank_copy: Path, extra_data: Path) -> None:
    bank = open_bank(bank_copy)
    layouts = [np.asarray(bank.labels[i]) for i in range(4)]
    v1 = bank.version
    results: list[list[tuple[float, float, str]]] = [[] for _ in range(3)]
    failures: list[str] = []
    reloaded_at: list[float] = []
    stop = threading.Event()

    def hammer(slot: int) -> None:
        i = 0
        while not stop.is_set() and i < 60:
            start = time.perf_counter()
            try:
                version = retrieve(served, layouts[i % 4])["bank_version"]
            except AssertionError as e:
                failures.append(str(e))
                return
            results[slot].append((start, time.perf_counter(), version))
            i += 1

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    v2 = publish(bank_copy, extra_data)
    r = served.post("/admin/reload", headers=ADMIN)
    reloaded_at.append(time.perf_counter())
    assert r.status_code == 200 and r.json()["version"] == v2
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    for slot in results:
        versions = [v for _, _, v in slot]
        assert set(versions) <= {v1, v2}
        # Each client sees the old version, then only the new one: never back.
        assert versions == sorted(versions, key=lambda v: v == v2)
        assert all(v == v2 for start, _, v in slot if start > reloaded_at[0])
    # The publish takes about a second, so both versions answered some of them.
    served_versions = {v for slot in results for _, _, v in slot}
    assert served_versions == {v1, v2}


def test_a_request_keeps_the_state_it_took(bank_copy: Path, extra_data: Path) -> None:
    """The swap replaces one reference; a state taken before it keeps answering with the old bank."""
    layout = np.asarray(open_bank(bank_copy).labels[1])

    async def scenario() -> tuple[str, str, str]:
        holder = BankHolder(bank_copy)
        await holder.reload()
        taken = holder.require()
        publish(bank_copy, extra_data)
        await holder.reload()
        old = taken.engine.retrieve(layout, RetrievalOptions(k=1))
        return taken.version, old.bank_version, holder.require().version

    taken, answered, now = anyio.run(scenario)
    assert answered == taken != now


def test_failed_reload_keeps_serving(served: TestClient, bank_copy: Path) -> None:
    v1 = served.get("/bank").json()["version"]
    current = bank_copy / CURRENT_FILE
    current.write_text("v-missing\n")
    r = served.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "reload_failed" and f"still serving {v1}" in body["message"]
    assert "v-missing" in body["message"]
    assert served.get("/readyz").json()["ready"] is True
    layout = np.asarray(open_bank(bank_copy, v1).labels[0])
    assert retrieve(served, layout)["bank_version"] == v1
    current.write_text(v1 + "\n")
    assert served.post("/admin/reload", headers=ADMIN).json()["reloaded"] is False
    assert 'sims_bank_reloads_total{outcome="failed"} 1.0' in served.get("/metrics").text


def test_watcher_picks_up_a_new_version(bank_copy: Path, extra_data: Path) -> None:
    settings = Settings(bank=bank_copy, wait_for_bank=True, watch_interval=0.05)
    with TestClient(create_app(settings)) as c:
        v1 = c.get("/bank").json()["version"]
        v2 = publish(bank_copy, extra_data)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.get("/bank").json()["version"] != v2:
            time.sleep(0.05)
        assert c.get("/bank").json()["version"] == v2 != v1
        assert c.get("/readyz").json()["version"] == v2


def test_holder_reports_the_load_error(tmp_path: Path) -> None:
    holder = BankHolder(tmp_path / "nothing")

    async def scenario() -> None:
        with pytest.raises(Exception, match="does not exist"):
            await holder.reload()

    anyio.run(scenario)
    assert holder.current is None and "does not exist" in (holder.error or "")
