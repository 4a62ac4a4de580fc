"""Overload of the service (issue 15, items 1, 2, 5 and 6): does the work stay bounded?

    .venv/bin/python benchmarks/overload.py                       # this tree
    git archive HEAD~1 | tar -x -C /tmp/before && \\
    .venv/bin/python benchmarks/overload.py --tree /tmp/before --label before

Starts ``sims serve --with-worker`` from ``--tree`` (default: this repository) as a subprocess on
loopback, on ``--bank`` with the shipped synthesis network, two synthesis slots and one torch
thread, and runs three scenarios, each bounded in requests and time:

- ``lone``: ``--lone`` requests one after another (the reference latency);
- ``burst`` (item 2): ``--burst`` requests at once, ``--rounds`` times a second apart (these two
  under the default 60 s timeout);
- ``sustained`` (item 1): ``--clients`` clients posting back to back for ``--seconds``, on a
  server restarted with a ``--timeout`` shorter than a queued synthesis takes, and again
  (``sustained_short``) with a ``--short-timeout`` shorter than one synthesis, so that every
  admitted request times out mid-work and its synthesis must stop;
- ``metric_labels`` (item 5): ``--made-up-methods`` requests with made-up HTTP methods, and the
  size of ``/metrics`` before and after;
- ``slow_connections`` (item 6): ``--slow`` connections that send half a request head and stall,
  held for ``--hold`` seconds (longer than the service's 10 s head timeout): the server's open
  file descriptors while they are held and at the end, and how ``/livez`` answers meanwhile.

Each reports the statuses (with ``Retry-After`` seen), the p50 of the admitted (200) requests, the
server's idle (after one warm-up synthesis) and peak RSS (``/proc/PID/status``), the most server
threads busy on the CPU at once (sampled from ``/proc/PID/task/*/stat`` every 0.1 s: an upper
bound of the syntheses running, since the event loop and the layout decoding count too; and, since
that is capped by the cores, the most threads that ran at all within one second; and the server's
own ``sims_synthesis_peak_running`` where it has one), and how
long the CPU stayed busy after the last reply. Writes ``benchmarks/results/overload.json`` (one
entry per ``--label``, so a before and an after sit side by side) and prints a summary. Linux
only (``/proc``). ``SIMS_WORKER_QUEUE`` and the other ``SIMS_*`` variables reach the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthesize import free_port, wait_ready  # the sibling benchmark's server helpers

from memory_bank import open_bank
from memory_bank.png import encode_layout_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "overload.json"
TICK = os.sysconf("SC_CLK_TCK")
#: Seconds between samples of the server's RSS and threads.
SAMPLE = 0.1


class Server:
    """``sims serve --with-worker`` from ``tree`` in a subprocess; stopped on exit."""

    def __init__(self, tree: Path, bank: Path, timeout: float, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "SIMS_SYNTHESIS_TIMEOUT": str(timeout),
            "SIMS_WORKER_CONCURRENCY": "2",
            "SIMS_WORKER_THREADS": "1",
            "SIMS_WORKER_WEIGHTS_DIR": str(REPO / "weights"),
            "SIMS_LOG_LEVEL": "warning",
        }
        port = self.url.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "sims.cli", "serve", "--with-worker", "--bank", str(bank), "--port", port]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_ready(self.url, [self.proc], timeout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Sampler:
    """Samples a process's RSS, busy threads and CPU every :data:`SAMPLE` seconds, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int, float]] = []  # (time, rss bytes, busy threads, cpu cores)
        self.working: list[int] = []  # threads that used the CPU in the second before each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _thread_ticks(self) -> dict[str, int]:
        ticks = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            ticks[task.name] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    def _run(self) -> None:
        before, t0 = self._thread_ticks(), time.monotonic()
        window = deque([before], maxlen=int(1 / SAMPLE))
        while not self._stop.wait(SAMPLE):
            now, t = self._thread_ticks(), time.monotonic()
            used = {k: v - before.get(k, 0) for k, v in now.items()}
            interval = (t - t0) * TICK
            busy = sum(1 for v in used.values() if v >= 0.5 * interval)
            # Threads that ran at all in the last second: with more work than cores, each runs a little.
            working = sum(1 for k, v in now.items() if v > window[0].get(k, 0))
            self.samples.append((t, self.rss(), busy, sum(used.values()) / interval))
            self.working.append(working)
            window.append(now)
            before, t0 = now, t

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def post(http: httpx.AsyncClient, png: bytes) -> tuple[int, float, str | None, str]:
    start = time.perf_counter()
    files = {"layout": ("layout.png", png, "image/png")}
    try:
        r = await http.post("/synthesize", files=files, data={"seed": "0"})
    except httpx.HTTPError as e:
        return 0, time.perf_counter() - start, None, type(e).__name__
    error = "" if r.is_success else str(r.json().get("error", ""))
    return r.status_code, time.perf_counter() - start, r.headers.get("retry-after"), error


async def metric_labels(url: str, n: int) -> dict:
    """``n`` requests with made-up methods; the size and series of ``/metrics`` before and after."""

    def measure(text: str) -> dict:
        return {"bytes": len(text.encode()), "series": sum(1 for line in text.splitlines() if not line.startswith("#"))}

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        before = measure((await http.get("/metrics")).text)
        statuses: Counter[int] = Counter()
        for i in range(n):
            statuses[(await http.request(f"M{i:05d}", "/livez")).status_code] += 1
        after = measure((await http.get("/metrics")).text)
    return {"requests": n, "statuses": dict(statuses), "metrics_before": before, "metrics_after": after}


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


async def scenario(url: str, pngs: list[bytes], *, burst: int = 1, clients: int = 0, seconds: float = 0.0) -> list:
    """``burst`` requests at once, or ``clients`` back-to-back clients for ``seconds``."""
    limits = httpx.Limits(max_connections=max(burst, clients) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        if not clients:
            return await asyncio.gather(*(post(http, pngs[i % len(pngs)]) for i in range(burst)))
        end, out = time.monotonic() + seconds, []

        async def client(i: int) -> None:
            while time.monotonic() < end:
                out.append(await post(http, pngs[i % len(pngs)]))

        await asyncio.gather(*(client(i) for i in range(clients)))
        return out


def summarise(replies: list, sampler: Sampler, idle_rss: int, last_reply: float, wall: float) -> dict:
    admitted = [t for status, t, _, _ in replies if status == 200]
    after = [(t, cpu) for t, _, _, cpu in sampler.samples if t > last_reply]
    busy_until = max((t for t, cpu in after if cpu > 0.2), default=last_reply)
    return {
        "requests": len(replies),
        "wall_seconds": round(wall, 2),
        "statuses": dict(Counter(f"{s} {e}".strip() for s, _, _, e in replies)),
        "with_retry_after": sum(1 for s, _, ra, _ in replies if s in (429, 503) and ra is not None),
        "p50_admitted_seconds": round(statistics.median(admitted), 3) if admitted else None,
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "peak_rss_mb": round(max((r for _, r, _, _ in sampler.samples), default=idle_rss) / 2**20, 1),
        "max_busy_threads": max((b for _, _, b, _ in sampler.samples), default=0),
        "max_threads_working_per_second": max(sampler.working, default=0),
        "cpu_busy_after_last_reply_seconds": round(busy_until - last_reply, 2),
    }


def peak_running(url: str) -> int | None:
    """The server's own count of the most syntheses run at once (``None`` from a server without it)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("sims_synthesis_peak_running "):
            return int(float(line.split()[1]))
    return None


def run(server: Server, pngs: list[bytes], name: str, settle: float, **load: float) -> dict:
    sampler = Sampler(server.proc.pid)
    idle = sampler.rss()
    with sampler:
        start = time.perf_counter()
        if name == "lone":
            replies = [asyncio.run(scenario(server.url, pngs))[0] for _ in range(int(load["lone"]))]
        elif name == "burst":  # several rounds: one burst's p50 rests on two or three requests
            replies = []
            for i in range(int(load["rounds"])):
                time.sleep(1.0 if i else 0.0)  # let the queue drain
                replies += asyncio.run(scenario(server.url, pngs, burst=int(load["burst"])))
        else:
            replies = asyncio.run(scenario(server.url, pngs, **load))  # type: ignore[arg-type]
        wall, last = time.perf_counter() - start, time.monotonic()
        time.sleep(settle)  # watch the CPU after the last reply
    out = summarise(replies, sampler, idle, last, wall)
    out["peak_syntheses_running"] = peak_running(server.url)
    print(f"{name:>9}: {json.dumps(out)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=REPO, help="Source tree of the server (default: this one).")
    p.add_argument("--label", default="after", help="Name of this run in the results (e.g. before, after).")
    p.add_argument("--bank", type=Path, default=REPO / ".sims/banks/camvid-val")
    p.add_argument("--lone", type=int, default=5)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5, help="Bursts, a second apart.")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=1.5, help="The service's synthesis timeout (seconds).")
    p.add_argument("--short-timeout", type=float, default=0.1, help="The timeout of sustained_short (seconds).")
    p.add_argument("--settle", type=float, default=4.0, help="Seconds to watch the CPU after each scenario.")
    p.add_argument("--made-up-methods", type=int, default=3000)
    p.add_argument("--slow", type=int, default=1500, help="Slow connections.")
    p.add_argument("--hold", type=float, default=13.0, help="Seconds the slow connections are held.")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--log", type=Path, help="Keep the server's log here (default: a temporary file).")
    args = p.parse_args(argv)
    bank = open_bank(args.bank)
    pngs = [encode_layout_png(np.asarray(bank.labels[i])) for i in range(min(8, bank.labels.shape[0]))]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Item 2 (and 5, 6) under the default 60 s timeout, then item 1 under the short ones.
        runs = ((60.0, ("lone", "burst")), (args.timeout, ("sustained",)), (args.short_timeout, ("sustained_short",)))
        for timeout, scenarios in runs:
            log = args.log.with_suffix(f".{scenarios[-1]}.log") if args.log else Path(tmp) / "serve.log"
            server = Server(args.tree.resolve(), args.bank.resolve(), timeout, log)
            try:
                server.wait_ready()
                asyncio.run(scenario(server.url, pngs))  # warm up: idle RSS is after a first synthesis
                for name in scenarios:
                    load = {"lone": {"lone": args.lone}, "burst": {"burst": args.burst, "rounds": args.rounds}}.get(
                        name, {"clients": args.clients, "seconds": args.seconds}
                    )
                    result[name] = {"synthesis_timeout": timeout, **run(server, pngs, name, args.settle, **load)}
                if "burst" in scenarios:  # the other two load the same server
                    result["metric_labels"] = asyncio.run(metric_labels(server.url, args.made_up_methods))
                    print(f"metric_labels: {json.dumps(result['metric_labels'])}")
                    slow = slow_connections(server.url, server.proc.pid, args.slow, args.hold)
                    result["slow_connections"] = asyncio.run(slow)
                    print(f"slow_connections: {json.dumps(result['slow_connections'])}")
            finally:
                server.stop()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
