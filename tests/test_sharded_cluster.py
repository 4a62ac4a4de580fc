"""Shards on a real Dask cluster (two worker processes the module starts and stops): the same answers
as one process, a slow shard, the service over them, a reload during requests, and a worker killed
under load."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_api_reload import ADMIN, KEY, publish

from memory_bank import Bank, open_bank
from memory_bank.errors import UnavailableError
from memory_bank.png import encode_layout_png
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from retrieval_service.engine import RetrievalEngine
from retrieval_service.shard_cluster import DaskShards, ShardCluster, shard_workers
from retrieval_service.shard_plan import plan_shards
from retrieval_service.shard_server import BankShardSource
from retrieval_service.sharded import ShardedEngine
from retrieval_service.types import RetrievalOptions


@pytest.fixture(scope="module")
def cluster() -> Iterator[ShardCluster]:
    c = ShardCluster(2)
    yield c
    c.close()


def test_dask_shards_answer_like_one_process(cluster: ShardCluster, val_bank: Bank) -> None:
    single = RetrievalEngine.from_bank(val_bank, exact_below=8)
    source = BankShardSource.of(val_bank)
    plan = plan_shards(source.class_sizes(), 2, max_part=20)
    shards = DaskShards(cluster.client, source, plan, exact_below=8, timeout=20)
    sharded = ShardedEngine(source, shards, exact_below=8)
    described = sharded.describe()
    assert len({d["worker"] for d in described}) == 2 and sum(d["segments"] for d in described) == val_bank.num_segments
    assert all(0 < d["rss_anon_bytes"] <= d["rss_bytes"] <= d["peak_rss_bytes"] for d in described)
    for i in range(val_bank.num_images):
        layout = np.asarray(val_bank.labels[i])
        for mode in ("fast", "exact", "full"):
            options = RetrievalOptions(k=4, mode=mode, seed=i, candidates=8)
            assert sharded.retrieve(layout, options).components == single.retrieve(layout, options).components
    # A call for another version is refused by the shard itself, never answered from the wrong one.
    with pytest.raises(UnavailableError, match="holds bank version"):
        shards.call("rank", {0: ("v-other", "token", [])})
    shards.close()


def _slow_rank(seconds: float) -> None:
    """Make every shard actor in this (worker) process sleep ``seconds`` before ranking (0: undo)."""
    from retrieval_service import shard_server

    cls = shard_server.ShardServer
    if not hasattr(cls, "_fast_rank"):
        cls._fast_rank = cls.rank  # type: ignore[attr-defined]

    def rank(self, *args: object) -> object:  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return cls._fast_rank(self, *args)  # type: ignore[attr-defined]

    cls.rank = rank if seconds else cls._fast_rank  # type: ignore[attr-defined, method-assign]


def test_a_slow_shard_gives_a_503_at_its_deadline_then_answers_again(cluster: ShardCluster, val_bank: Bank) -> None:
    single = RetrievalEngine.from_bank(val_bank, exact_below=8)
    source = BankShardSource.of(val_bank)
    shards = DaskShards(cluster.client, source, plan_shards(source.class_sizes(), 2, max_part=20), timeout=1.0)
    sharded = ShardedEngine(source, shards, exact_below=8)
    layout = np.asarray(val_bank.labels[0])
    options = RetrievalOptions(k=3, mode="exact")
    slow = shards.handles[0].address
    cluster.client.run(_slow_rank, 2.5, workers=[slow])
    try:
        start = time.perf_counter()
        late = r"shard 0 of 2 \(classes [^)]*\) is unavailable: it did not answer within 1 s"
        with pytest.raises(UnavailableError, match=late):
            sharded.retrieve(layout, options)
        assert time.perf_counter() - start < 1.0 + 0.5  # the deadline, not the slow shard, bounds the wait
    finally:
        cluster.client.run(_slow_rank, 0.0, workers=[slow])
    # A slow shard is not a lost one: it stays where it is, and once its late answer is out of the
    # way, calls succeed with the right answer (never the abandoned one).
    time.sleep(2.5)
    assert shards.handles[0].address == slow
    assert sharded.retrieve(layout, options).components == single.retrieve(layout, options).components
    shards.close()


@pytest.fixture
def served(cluster: ShardCluster, val_bank_path: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """The service over 2 shards on the module's cluster (``--cluster ADDRESS``), on a private bank copy."""
    bank = tmp_path / "bank"
    shutil.copytree(val_bank_path, bank)
    settings = Settings(
        bank=bank,
        api_key=KEY,
        wait_for_bank=True,
        cluster=cluster.cluster.scheduler_address,  # type: ignore[union-attr]
        shard_timeout=3.0,
        shard_max_part=40,
    )
    with TestClient(create_app(settings)) as client:
        yield client, bank


def post(client: TestClient, layout: np.ndarray) -> tuple[int, dict]:
    r = client.post("/retrieve", files={"layout": ("l.png", encode_layout_png(layout), "image/png")}, data={"k": "3"})
    return r.status_code, r.json()


def hammer(client: TestClient, layouts: list[np.ndarray], stop: threading.Event, out: list) -> None:
    i = 0
    while not stop.is_set():
        start = time.perf_counter()
        status, body = post(client, layouts[i % len(layouts)])
        out.append((start, time.perf_counter(), i % len(layouts), status, body))
        i += 1


def test_reload_during_requests_switches_every_shard_together(
    served: tuple[TestClient, Path],
    extra_data: Path,
) -> None:
    client, bank_path = served
    bank = open_bank(bank_path)
    layouts = [np.asarray(bank.labels[i]) for i in range(4)]
    v1 = bank.version
    stop, out = threading.Event(), []
    threads = [threading.Thread(target=hammer, args=(client, layouts, stop, out)) for _ in range(2)]
    for t in threads:
        t.start()
    v2 = publish(bank_path, extra_data)
    r = client.post("/admin/reload", headers=ADMIN)
    reloaded = time.perf_counter()
    assert r.status_code == 200 and r.json()["version"] == v2
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert out and all(status == 200 for *_, status, _ in out)
    assert {body["bank_version"] for *_, body in out} == {v1, v2}
    for start, _, _, _, body in out:
        if start > reloaded:
            assert body["bank_version"] == v2
        # The appended images (ids 8, 9) exist only in v2: a v1 answer never holds one.
        images = {c["image_id"] for comp in body["components"] for c in comp["candidates"]}
        assert body["bank_version"] == v2 or not images & {8, 9}
    engine = client.app.state.holder.current.engine  # type: ignore[attr-defined]
    assert {d["version"] for d in engine.describe()} == {v2}


def test_a_killed_shard_worker_gives_503s_then_recovers(served: tuple[TestClient, Path]) -> None:
    client, bank_path = served
    bank = open_bank(bank_path)
    layouts = [np.asarray(bank.labels[i]) for i in range(4)]
    want = [post(client, layout)[1]["components"] for layout in layouts]
    engine = client.app.state.holder.current.engine  # type: ignore[attr-defined]
    victim = engine.shards.handles[0].address
    pids = engine.shards.client.run(os.getpid)
    stop, out = threading.Event(), []
    threads = [threading.Thread(target=hammer, args=(client, layouts, stop, out)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    killed = time.perf_counter()
    os.kill(pids[victim], signal.SIGKILL)
    deadline = killed + 30
    while time.perf_counter() < deadline:  # until 200s come back
        time.sleep(0.5)
        if sum(1 for s, *_, status, _ in out if s > killed and status == 200) >= 4:
            break
    stop.set()
    for t in threads:
        t.join(timeout=60)
    after = [(s, e, i, status, body) for s, e, i, status, body in out if s > killed]
    failed = [x for x in after if x[3] != 200]
    assert failed, "the kill went unnoticed"
    for start, end, i, status, body in out:
        if status == 200:
            assert body["components"] == want[i]  # whole answers only, never a partial 200
        else:
            assert status == 503 and body["error"] == "shard_unavailable", body
            assert "shard 0 of 2" in body["message"] and "\n" not in body["message"]
            assert end - start < 3.0 + 2.0  # the shard timeout bounds it
    recovered = next(s for s, _, _, status, _ in after if status == 200 and s > failed[0][0])
    assert recovered - killed < 30
    assert engine.shards.handles[0].address != victim


class _SchedulerInfo:
    """A client whose scheduler reports the given workers' resources."""

    def __init__(self, resources: dict[str, dict[str, float]]) -> None:
        self.resources = resources

    def scheduler_info(self, n_workers: int = 5) -> dict:
        return {"workers": {a: {"resources": r} for a, r in self.resources.items()}}


def test_shards_skip_synthesis_workers_unless_there_are_no_others() -> None:
    mixed = _SchedulerInfo({"tcp://a:1": {}, "tcp://b:1": {"synthesis": 1.0}, "tcp://c:1": {"other": 2.0}})
    assert sorted(shard_workers(mixed)) == ["tcp://a:1", "tcp://c:1"]  # type: ignore[arg-type]
    only_synthesis = _SchedulerInfo({"tcp://b:1": {"synthesis": 1.0}})
    assert shard_workers(only_synthesis) == ["tcp://b:1"]  # type: ignore[arg-type]
    assert shard_workers(_SchedulerInfo({})) == []  # type: ignore[arg-type]
