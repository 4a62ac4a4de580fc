"""Synthesis on Dask workers under load (issue 17, item 4): latency, back-pressure, memory.

    .venv/bin/python benchmarks/synthesis_cluster.py --bank .sims/banks/camvid-val

Starts ``sims cluster up --workers 0 --synthesis-workers R`` and ``sims serve --synthesis-cluster``
on ``--bank`` with the shipped networks and one torch thread (subprocesses on loopback), waits until
the service sees the R replicas, and runs the scenarios of ``benchmarks/overload.py``:

- ``lone``: ``--lone`` requests one after another, and the same against ``sims serve
  --with-worker`` (``lone_with_worker``): the cost of the hop through the scheduler;
- ``burst``: ``--burst`` requests at once, ``--rounds`` times a second apart;
- ``sustained``: ``--clients`` clients posting back to back for ``--seconds``.

Each reports the statuses (with ``Retry-After`` seen) and the p50 of the admitted requests, plus
the idle and peak RSS of the service and of every synthesis worker process, and the scheduler's
task count afterwards (0: nothing piled up). Writes ``benchmarks/results/synthesis_cluster.json``.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import Sampler, scenario, summarise  # the sibling benchmark's load and sampling
from synthesize import free_port, stop_process, wait_ready

from memory_bank import open_bank
from memory_bank.png import encode_layout_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "synthesis_cluster.json"
ENV = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    "SIMS_WORKER_WEIGHTS_DIR": str(REPO / "weights"),
    "SIMS_WORKER_THREADS": "1",
    "SIMS_LOG_LEVEL": "warning",
}


def start_cluster(replicas: int, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "sims", "cluster", "up", "--workers", "0", "--synthesis-workers", str(replicas)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0"],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.match(r"scheduler (tcp://\S+):", line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, match[1]
    raise RuntimeError(f"sims cluster up exited with {proc.wait()} (see {log})")


def start_service(bank: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "sims", "serve", "--bank", str(bank), "--port", url.rsplit(":", 1)[1], *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(url, [proc], 180)
    return proc, url


def metric(url: str, name: str) -> float | None:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def scheduler_tasks(address: str) -> int:
    from distributed import Client

    with Client(address, set_as_default=False, timeout=10) as client:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def measure(url: str, pids: dict[str, int], pngs: list[bytes], name: str, **load: int | float) -> dict:
    """One scenario with RSS sampled in the service and the worker processes."""
    samplers = {k: Sampler(pid) for k, pid in pids.items()}
    idle = {k: s.rss() for k, s in samplers.items()}
    for s in samplers.values():
        s.__enter__()
    try:
        start = time.perf_counter()
        if name == "lone":
            replies = [asyncio.run(scenario(url, pngs))[0] for _ in range(int(load["lone"]))]
        elif name == "burst":
            replies = []
            for i in range(int(load["rounds"])):
                time.sleep(1.0 if i else 0.0)
                replies += asyncio.run(scenario(url, pngs, burst=int(load["burst"])))
        else:
            replies = asyncio.run(scenario(url, pngs, clients=int(load["clients"]), seconds=float(load["seconds"])))
        wall, last = time.perf_counter() - start, time.monotonic()
        time.sleep(1.0)
    finally:
        for s in samplers.values():
            s.__exit__()
    out = summarise(replies, samplers["service"], idle["service"], last, wall)
    for key in ("max_busy_threads", "max_threads_working_per_second", "cpu_busy_after_last_reply_seconds"):
        out.pop(key)
    out["rss_mb"] = {
        k: {"idle": round(idle[k] / 2**20, 1), "peak": round(max(r for _, r, _, _ in s.samples) / 2**20, 1)}
        for k, s in samplers.items()
    }
    print(f"{name:>17}: {json.dumps(out)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=Path, default=REPO / ".sims/banks/camvid-val")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--lone", type=int, default=20)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    load_average = os.getloadavg()[0]
    bank = open_bank(args.bank)
    pngs = [encode_layout_png(np.asarray(bank.labels[i])) for i in range(min(8, bank.labels.shape[0]))]
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster, address = start_cluster(args.replicas, Path(tmp) / "cluster.log")
        try:
            service, url = start_service(args.bank.resolve(), Path(tmp) / "serve.log", "--synthesis-cluster", address)
            try:
                deadline = time.monotonic() + 120
                while metric(url, "sims_synthesis_replicas") != args.replicas:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the service did not see its synthesis replicas")
                    time.sleep(0.5)
                asyncio.run(scenario(url, pngs, burst=args.replicas))  # warm up every replica
                children = psutil.Process(cluster.pid).children()
                workers = [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]
                pids = {"service": service.pid, **{f"worker_{i}": pid for i, pid in enumerate(workers)}}
                for name, load in (
                    ("lone", {"lone": args.lone}),
                    ("burst", {"burst": args.burst, "rounds": args.rounds}),
                    ("sustained", {"clients": args.clients, "seconds": args.seconds}),
                ):
                    result[name] = measure(url, pids, pngs, name, **load)
                result["scheduler_tasks_after"] = scheduler_tasks(address)
                print(f"scheduler tasks after: {result['scheduler_tasks_after']}")
            finally:
                stop_process(service)
        finally:
            stop_process(cluster)
        # The reference: the same lone requests in one process.
        service, url = start_service(args.bank.resolve(), Path(tmp) / "with-worker.log", "--with-worker")
        try:
            asyncio.run(scenario(url, pngs))
            replies = [asyncio.run(scenario(url, pngs))[0] for _ in range(args.lone)]
            admitted = [t for status, t, _, _ in replies if status == 200]
            result["lone_with_worker"] = {
                "requests": len(replies),
                "ok": len(admitted),
                "p50_admitted_seconds": round(statistics.median(admitted), 3) if admitted else None,
            }
            print(f" lone_with_worker: {json.dumps(result['lone_with_worker'])}")
        finally:
            stop_process(service)
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_at_start": load_average,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
