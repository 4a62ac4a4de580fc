"""Overload of the service (issue 29): under a flood, admitted requests finish and rejected ones cost nothing.

    .venv/bin/python benchmarks/overload.py --bank .sims/banks/camvid-train     # the three deployments
    .venv/bin/python benchmarks/overload.py --bank ... --deployments in_process --seconds 5   # one, shorter

For each deployment of ``--deployments`` (default all three), started from ``--tree`` (default this
repository) on loopback, on ``--bank`` with the shipped networks, two synthesis slots and one torch
thread per synthesis, and ``--synthesis-timeout`` ``--timeout`` (1.5 s, the issue's):

- ``in_process``: ``sims serve --with-worker``;
- ``worker``: ``sims serve --synthesis-url`` and one ``sims worker`` (two slots);
- ``dask``: ``sims cluster up --workers 0 --synthesis-workers 2`` and ``sims serve --synthesis-cluster``.

it runs, each phase bounded in time:

1. ``lone``: ``--lone`` requests one after another (the lone latency);
2. ``one_client``: one client posting back to back for ``--one-client-seconds``: the one-client
   throughput (200s per second) the flood's goodput is compared with, in the same run;
3. ``burst``: ``--burst`` requests at once, ``--rounds`` times a second apart: the admitted p50
   against the lone one (target: at most 2x);
4. ``flood``: ``--clients`` client threads posting back to back for ``--seconds`` (the issue: 24
   for 30 s), each sending its next request as soon as an answer came (``Retry-After`` ignored):
   goodput (200s per second) and its share of the one-client throughput (target 70%), the
   statuses, the admitted latency p50 and p99, the 504s per admitted request (target 1%), the CPU
   per rejection (target 2 ms), and the RSS of the deployment's process tree: idle (warmed up, just
   before the flood), peak (sampled every 0.1 s) and after ``--settle`` seconds (targets 1.3x and
   1.1x idle). The CPU per rejection is the service's event-loop thread's CPU during the flood
   divided by the refusals: an upper bound, since that thread also reads and answers the admitted
   requests. With a separate worker, its own answers are counted from its access log: it should
   refuse nothing, since the service forwards only what the worker would admit.

On the first deployment it also runs the earlier hardening's service-level phases:
``metric_labels`` (``--made-up-methods`` requests with made-up HTTP methods; the size of
``/metrics`` before and after) and ``slow_connections`` (``--slow`` connections that send half a
request head and stall for ``--hold`` seconds, longer than the 10 s head timeout: the open file
descriptors while held and at the end, ``/livez`` meanwhile).

Writes ``benchmarks/results/overload.json`` (one entry per ``--label``, each deployment under it)
and prints a summary. Linux only (``/proc``). The load generator shares the machine: run it on an
otherwise quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json  # benchmarks/common.py
from synthesize import free_port, stop_process, wait_ready  # the sibling benchmark's server helpers

from memory_bank import open_bank
from memory_bank.png import encode_layout_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "overload.json"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Seconds between samples of the process tree's RSS.
SAMPLE = 0.1
DEPLOYMENTS = ("in_process", "worker", "dask")
#: What each target of the issue checks, on a flood's summary.
TARGETS: dict[str, Callable[[dict], bool | None]] = {
    "goodput_at_least_70pct_of_one_client": lambda f: f["goodput_ratio"] is not None and f["goodput_ratio"] >= 0.7,
    "timeouts_at_most_1pct_of_admitted": lambda f: f["timeouts_per_admitted"] <= 0.01,
    "cpu_per_rejection_at_most_2ms": lambda f: (
        None if f["cpu_per_rejection_ms"] is None else f["cpu_per_rejection_ms"] <= 2.0
    ),
    "rss_peak_at_most_1_3x_idle": lambda f: f["rss_peak_ratio"] <= 1.3,
    "rss_after_at_most_1_1x_idle": lambda f: f["rss_after_ratio"] <= 1.1,
}


# The deployment


class Deployment:
    """One deployment's processes (service last), started from ``tree``; stopped on exit."""

    def __init__(self, kind: str, tree: Path, bank: Path, timeout: float, logs: Path) -> None:
        self.kind, self.tree, self.logs = kind, tree, logs
        self.env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "SIMS_WORKER_CONCURRENCY": "2",
            "SIMS_WORKER_THREADS": "1",
            "SIMS_WORKER_WEIGHTS_DIR": str(tree / "weights"),
            "SIMS_LOG_LEVEL": "warning",
        }
        self.procs: list[subprocess.Popen] = []
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        serve = [*self._sims("serve"), "--bank", str(bank), "--port", str(port), "--synthesis-timeout", str(timeout)]
        self.worker_log: Path | None = None
        if kind == "in_process":
            self._start("serve", [*serve, "--with-worker"])
        elif kind == "worker":
            worker_port = free_port()
            self.worker_log = logs / "worker.log"
            worker = [*self._sims("worker"), "--service", self.url, "--port", str(worker_port), "--log-level", "info"]
            self._start("worker", worker)
            self._start("serve", [*serve, "--synthesis-url", f"http://127.0.0.1:{worker_port}"])
        elif kind == "dask":
            self._start_cluster()
            self._start("serve", [*serve, "--synthesis-cluster", self.scheduler])
        else:
            raise ValueError(f"unknown deployment {kind!r}")

    def _sims(self, command: str) -> list[str]:
        return [sys.executable, "-m", "sims.cli", command]

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=self.tree, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _start_cluster(self) -> None:
        cmd = [*self._sims("cluster"), "up", "--workers", "0", "--synthesis-workers", "2", "--port", "0"]
        err = (self.logs / "cluster.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=self.tree, env=self.env, stdout=subprocess.PIPE, stderr=err, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := re.match(r"scheduler (tcp://\S+):", line):
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                self.scheduler = match[1]
                return
        raise RuntimeError(f"sims cluster up exited with {proc.wait()} (see {self.logs / 'cluster.log'})")

    @property
    def service(self) -> subprocess.Popen:
        return self.procs[-1]

    def wait_ready(self, timeout: float = 300.0) -> None:
        wait_ready(self.url, self.procs, timeout)

    def pids(self) -> list[int]:
        """Every process of the deployment: those started and all their descendants."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        out, todo = [], [p.pid for p in self.procs]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def rss(self) -> int:
        """Resident bytes of the whole process tree."""
        total = 0
        for pid in self.pids():
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            except (OSError, IndexError):
                continue
        return total

    def loop_ticks(self) -> int:
        """CPU ticks of the service's event-loop thread (uvicorn runs it on the main thread)."""
        pid = self.service.pid
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def tree_ticks(self) -> int:
        """CPU ticks of every process of the deployment (children that ended not included)."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total

    def worker_statuses(self) -> Counter[str]:
        """The separate worker's answers to ``POST /synthesize`` so far, from its access log."""
        if self.worker_log is None:
            return Counter()
        return Counter(re.findall(r'"POST /synthesize HTTP/1\.1" (\d+)', self.worker_log.read_text(errors="replace")))

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)


class RssSampler:
    """The process tree's RSS every :data:`SAMPLE` seconds, in a thread."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE):
            self.samples.append((time.monotonic(), self.deployment.rss()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# The load


Reply = tuple[int, float, str]  # (status, seconds, error kind); status 0 = no answer


def post(http: httpx.Client, png: bytes) -> Reply:
    start = time.perf_counter()
    try:
        r = http.post("/synthesize", files={"layout": ("layout.png", png, "image/png")}, data={"seed": "0"})
    except httpx.HTTPError as e:
        return 0, time.perf_counter() - start, type(e).__name__
    error = ""
    if not r.is_success:
        try:
            error = str(r.json().get("error", ""))
        except ValueError:
            error = "not_json"
    return r.status_code, time.perf_counter() - start, error


def in_threads(n: int, target: Callable[[int], None]) -> None:
    """Run ``target(0)`` .. ``target(n - 1)``, one thread each, and wait for them all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def clients(url: str, pngs: list[bytes], n: int, seconds: float) -> list[Reply]:
    """``n`` client threads posting back to back for ``seconds``."""
    end = time.monotonic() + seconds
    out: list[Reply] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            j = i
            while time.monotonic() < end:
                reply = post(http, pngs[j % len(pngs)])
                j += 1
                with lock:
                    out.append(reply)

    in_threads(n, client)
    return out


def burst(url: str, pngs: list[bytes], n: int) -> list[Reply]:
    """``n`` requests at once (one thread each)."""
    out: list[Reply] = [(0, 0.0, "")] * n
    go = threading.Barrier(n)

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            go.wait()
            out[i] = post(http, pngs[i % len(pngs)])

    in_threads(n, one)
    return out


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.quantile(values, q)), 3)


def statuses(replies: list[Reply]) -> dict[str, int]:
    return dict(Counter(f"{s} {e}".strip() for s, _, e in replies).most_common())


# Phases


def lone(d: Deployment, pngs: list[bytes], n: int) -> dict:
    with httpx.Client(base_url=d.url, timeout=60) as http:
        replies = [post(http, pngs[i % len(pngs)]) for i in range(n)]
    ok = [t for s, t, _ in replies if s == 200]
    return {"requests": n, "statuses": statuses(replies), "p50_seconds": quantile(ok, 0.5)}


def one_client(d: Deployment, pngs: list[bytes], seconds: float) -> dict:
    start = time.perf_counter()
    replies = clients(d.url, pngs, 1, seconds)
    wall = time.perf_counter() - start
    ok = [t for s, t, _ in replies if s == 200]
    return {
        "seconds": round(wall, 2),
        "statuses": statuses(replies),
        "throughput_per_second": round(len(ok) / wall, 3),
        "p50_seconds": quantile(ok, 0.5),
    }


def bursts(d: Deployment, pngs: list[bytes], n: int, rounds: int, lone_p50: float | None) -> dict:
    replies: list[Reply] = []
    for i in range(rounds):
        time.sleep(1.0 if i else 0.0)  # let the queue drain
        replies += burst(d.url, pngs, n)
    ok = [t for s, t, _ in replies if s == 200]
    p50 = quantile(ok, 0.5)
    ratio = round(p50 / lone_p50, 2) if p50 and lone_p50 else None
    return {
        "requests": len(replies),
        "statuses": statuses(replies),
        "p50_admitted_seconds": p50,
        "p50_over_lone": ratio,
        "p50_at_most_2x_lone": None if ratio is None else ratio <= 2.0,
    }


def flood(d: Deployment, pngs: list[bytes], n: int, seconds: float, settle: float, one_client_rate: float) -> dict:
    time.sleep(settle)  # idle: warmed up, nothing running
    idle = d.rss()
    worker_before = d.worker_statuses()
    ticks, tree, own = d.loop_ticks(), d.tree_ticks(), os.times()
    with RssSampler(d) as sampler:
        start = time.perf_counter()
        replies = clients(d.url, pngs, n, seconds)
        wall = time.perf_counter() - start
        loop_cpu = (d.loop_ticks() - ticks) / TICK
        tree_cpu = (d.tree_ticks() - tree) / TICK
        mine = os.times()
        end = time.monotonic()
        time.sleep(settle)
    after = d.rss()
    peak = max([r for t, r in sampler.samples if t <= end] or [idle])
    codes = Counter(s for s, _, _ in replies)
    ok = [t for s, t, _ in replies if s == 200]
    refused = sum(1 for s, _, e in replies if s == 503 and e.endswith("_busy"))
    admitted = codes[200] + codes[504]  # answered after admission: done, or timed out
    goodput = codes[200] / wall
    out = {
        "clients": n,
        "seconds": round(wall, 2),
        "requests": len(replies),
        "statuses": statuses(replies),
        "goodput_per_second": round(goodput, 3),
        "one_client_per_second": round(one_client_rate, 3),
        "goodput_ratio": round(goodput / one_client_rate, 3) if one_client_rate else None,
        "p50_admitted_seconds": quantile(ok, 0.5),
        "p99_admitted_seconds": quantile(ok, 0.99),
        "timeouts_per_admitted": round(codes[504] / admitted, 4) if admitted else 0.0,
        "refused": refused,
        "service_loop_cpu_seconds": round(loop_cpu, 2),
        # Where the CPU went: the deployment's processes (event loop included) and this load generator.
        "deployment_cpu_seconds": round(tree_cpu, 2),
        "load_generator_cpu_seconds": round(mine.user - own.user + mine.system - own.system, 2),
        "cpu_per_rejection_ms": round(loop_cpu / refused * 1000, 3) if refused else None,
        "rss_idle_mb": round(idle / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_peak_ratio": round(peak / idle, 3),
        "rss_after_ratio": round(after / idle, 3),
    }
    if d.worker_log is not None:
        out["worker_statuses"] = dict(d.worker_statuses() - worker_before)
    out["targets"] = {name: check(out) for name, check in TARGETS.items()}
    return out


async def metric_labels(url: str, n: int) -> dict:
    """``n`` requests with made-up methods; the size and series of ``/metrics`` before and after."""

    def measure(text: str) -> dict:
        return {"bytes": len(text.encode()), "series": sum(1 for line in text.splitlines() if not line.startswith("#"))}

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        before = measure((await http.get("/metrics")).text)
        seen: Counter[int] = Counter()
        for i in range(n):
            seen[(await http.request(f"M{i:05d}", "/livez")).status_code] += 1
        after = measure((await http.get("/metrics")).text)
    return {"requests": n, "statuses": dict(seen), "metrics_before": before, "metrics_after": after}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def slow_connections(url: str, pid: int, n: int, hold: float) -> dict:
    """``n`` connections that send half a request head and stall for ``hold`` seconds."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    idle = open_fds(pid)
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: sims\r\nX-Slow: ")  # never finished
        conns.append((reader, writer))
    await asyncio.sleep(0.5)
    held = open_fds(pid)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        start = time.perf_counter()
        health = (await http.get("/livez")).status_code
        health_seconds = time.perf_counter() - start
    await asyncio.sleep(max(0.0, hold - 0.5))
    end = open_fds(pid)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        health_after = (await http.get("/livez")).status_code

    async def closed_by_server(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 0.05) == b""
        except (TimeoutError, ConnectionError):
            return False

    closed = sum(await asyncio.gather(*(closed_by_server(r) for r, _ in conns)))
    for _, writer in conns:
        writer.close()
    return {
        "connections": n,
        "hold_seconds": hold,
        "idle_fds": idle,
        "fds_while_held": held,
        "fds_at_end": end,
        "closed_by_server": closed,
        "livez_while_held": health,
        "livez_seconds": round(health_seconds, 3),
        "livez_at_end": health_after,
    }


def run(kind: str, args: argparse.Namespace, pngs: list[bytes], logs: Path, service_phases: bool) -> dict:
    d = Deployment(kind, args.tree.resolve(), args.bank.resolve(), args.timeout, logs)
    result: dict = {"synthesis_timeout": args.timeout}
    try:
        d.wait_ready()
        # Warm up every layout once (the first syntheses pay for lazy loading), once synthesis is up:
        # a separate worker or Dask replicas may still be loading their networks.
        deadline = time.monotonic() + 300
        with httpx.Client(base_url=d.url, timeout=120) as http:
            for png in pngs:
                while (status := post(http, png)[0]) != 200 and time.monotonic() < deadline:
                    time.sleep(1.0)
                if status != 200:
                    raise RuntimeError(f"{kind}: no synthesis answered 200 within 300 s (logs in {logs})")
        result["lone"] = lone(d, pngs, args.lone)
        result["one_client"] = one_client(d, pngs, args.one_client_seconds)
        result["burst"] = bursts(d, pngs, args.burst, args.rounds, result["lone"]["p50_seconds"])
        rate = result["one_client"]["throughput_per_second"]
        result["flood"] = flood(d, pngs, args.clients, args.seconds, args.settle, rate)
        if service_phases:
            result["metric_labels"] = asyncio.run(metric_labels(d.url, args.made_up_methods))
            result["slow_connections"] = asyncio.run(slow_connections(d.url, d.service.pid, args.slow, args.hold))
    finally:
        d.stop()
    for name, value in result.items():
        print(f"{kind:>10} {name}: {json.dumps(value)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=REPO, help="Source tree of the deployment (default: this one).")
    p.add_argument("--label", default="issue-29", help="Name of this run in the results.")
    p.add_argument("--bank", type=Path, default=REPO / ".sims/banks/camvid-train")
    p.add_argument("--deployments", default=",".join(DEPLOYMENTS), help="Comma-separated: in_process,worker,dask.")
    p.add_argument("--timeout", type=float, default=1.5, help="The service's synthesis timeout (seconds).")
    p.add_argument("--lone", type=int, default=5)
    p.add_argument("--one-client-seconds", type=float, default=20.0)
    p.add_argument("--burst", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5, help="Bursts, a second apart.")
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--seconds", type=float, default=30.0, help="Length of the flood.")
    p.add_argument("--settle", type=float, default=5.0, help="Seconds of rest before and after the flood.")
    p.add_argument("--made-up-methods", type=int, default=3000)
    p.add_argument("--slow", type=int, default=1500, help="Slow connections.")
    p.add_argument("--hold", type=float, default=13.0, help="Seconds the slow connections are held.")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--logs", type=Path, help="Keep the deployments' logs here (default: a temporary directory).")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.deployments.split(",") if k.strip()]
    if unknown := set(kinds) - set(DEPLOYMENTS):
        p.error(f"unknown deployments {sorted(unknown)}; choose from {', '.join(DEPLOYMENTS)}")
    bank = open_bank(args.bank)
    pngs = [encode_layout_png(np.asarray(bank.labels[i])) for i in range(min(8, bank.num_images))]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(kinds):
            logs = (args.logs or Path(tmp)) / kind
            logs.mkdir(parents=True, exist_ok=True)
            result[kind] = run(kind, args, pngs, logs, service_phases=i == 0)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        **result,
    }
    write_json(args.out, results)
    for kind, r in result.items():
        f = r["flood"]
        print(
            f"{kind}: goodput {f['goodput_per_second']}/s = {f['goodput_ratio']} of one client, "
            f"p50/p99 {f['p50_admitted_seconds']}/{f['p99_admitted_seconds']} s, 504s/admitted "
            f"{f['timeouts_per_admitted']}, {f['cpu_per_rejection_ms']} ms CPU per rejection, RSS "
            f"{f['rss_idle_mb']}/{f['rss_peak_mb']}/{f['rss_after_mb']} MB; "
            f"burst p50 {r['burst']['p50_over_lone']}x lone"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
