"""Load test of the retrieval service over HTTP on loopback, with and without a hot reload.

    .venv/bin/python benchmarks/load.py --root ../shared/data/camvid --bank .sims/banks/camvid-train

Starts ``sims serve`` as a subprocess on 127.0.0.1 (a free port), waits for /readyz, then
``--clients`` concurrent httpx clients post CamVid val layouts (PNG label maps, raw id 11 =
unlabelled mapped to 255) to /retrieve. Every run is bounded by a request count and a time
limit, and stops by itself.

- ``steady``: ``--requests`` requests against the bank as it is.
- ``reload``: the bank is copied (hard links) to a temporary directory and served from there;
  after ``--reload-after`` requests a new version is published into the copy (``sims index
  add`` of the val split, a separate process, while the load goes on), then ``/admin/reload``
  is called, and ``--after-reload`` more requests follow. Checks: no failed request, and
  every request sent after the reload returned carries the new version.

Writes benchmarks/results/load.json (both runs) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from common import write_json  # benchmarks/common.py

from indexers.readers import create_reader
from memory_bank import current_version, open_bank
from memory_bank.images import read_label
from memory_bank.png import encode_layout_png
from memory_bank.store import CURRENT_FILE, VERSIONS_DIR

RESULTS = Path(__file__).parent / "results"


@dataclass
class Record:
    """One request: when it was sent and answered (perf_counter seconds), and what came back."""

    start: float
    end: float
    status: int
    version: str | None
    error: str | None = None


@dataclass
class LoadState:
    """Shared by the client coroutines: how many requests may still be sent, and what came back."""

    budget: int
    deadline: float
    records: list[Record] = field(default_factory=list)
    sent: int = 0

    def take(self) -> bool:
        if self.sent >= self.budget or time.perf_counter() > self.deadline:
            return False
        self.sent += 1
        return True


def val_layouts(root: Path) -> list[bytes]:
    """Every CamVid val label map as a PNG in bank class ids (raw 11 -> 255, via the reader)."""
    reader = create_reader("camvid", root, ["val"])
    return [encode_layout_png(reader.map_label(read_label(ref.label_path), ref.label_path)) for ref in reader.refs]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``sims serve`` in a subprocess on loopback; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, bank: Path, api_key: str, workers: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SIMS_API_KEY": api_key, "SIMS_LOG_LEVEL": "warning"}
        cmd = [sys.executable, "-m", "sims.cli", "serve", "--bank", str(bank), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(workers)]
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sims serve exited with {self.proc.returncode}; see its log")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not ready after {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def client_loop(http: httpx.AsyncClient, state: LoadState, layouts: list[bytes], data: dict[str, str]) -> None:
    """One client: post layouts one after another while the budget lasts."""
    while state.take():
        png = layouts[state.sent % len(layouts)]
        start = time.perf_counter()
        try:
            r = await http.post("/retrieve", files={"layout": ("layout.png", png, "image/png")}, data=data)
            body = r.json()
            ok = r.status_code == 200
            rec = Record(
                start,
                time.perf_counter(),
                r.status_code,
                body.get("bank_version") if ok else None,
                None if ok else f"{r.status_code} {body.get('error')}: {body.get('message')}",
            )
        except Exception as e:  # a dropped connection or timeout is a failure too
            rec = Record(start, time.perf_counter(), 0, None, f"{type(e).__name__}: {e}")
        state.records.append(rec)


def summarize(records: list[Record], wall: float) -> dict:
    ok = [r for r in records if r.error is None]
    lat = np.array([r.end - r.start for r in ok]) * 1000
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error[:160]] = errors.get(r.error[:160], 0) + 1
    return {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "errors": errors,
        "wall_seconds": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2) if wall else 0.0,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "p90": round(float(np.percentile(lat, 90)), 1) if lat.size else None,
            "p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            "max": round(float(lat.max()), 1) if lat.size else None,
            "mean": round(float(lat.mean()), 1) if lat.size else None,
        },
    }


def engine_seconds(url: str) -> dict:
    """Mean engine time per layout, from the service's own metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("sims_retrieve_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("sims_retrieve_seconds_count"):
            count += float(line.split()[-1])
    return {"engine_mean_ms": round(1000 * total / count, 1) if count else None, "engine_layouts": int(count)}


async def run_load(url: str, layouts: list[bytes], args: argparse.Namespace, budget: int) -> tuple[list[Record], float]:
    state = LoadState(budget=budget, deadline=time.perf_counter() + args.max_seconds)
    data = {"k": str(args.k), "mode": args.mode}
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(http, state, layouts, data) for _ in range(args.clients)))
    return state.records, time.perf_counter() - start


def steady_run(args: argparse.Namespace, layouts: list[bytes], tmp: Path) -> dict:
    server = Server(args.bank, secrets.token_hex(8), args.workers, tmp / "steady.log")
    try:
        ready = server.wait_ready()
        records, wall = asyncio.run(run_load(server.url, layouts, args, args.requests))
        out = summarize(records, wall)
        out.update(engine_seconds(server.url))
        out["startup_to_ready_seconds"] = round(ready, 2)
        out["versions_seen"] = sorted({r.version for r in records if r.version})
        return out
    finally:
        server.stop()


def link_copy(bank: Path, dst: Path) -> Path:
    """A copy of a bank's current version; files are hard links (published versions never change)."""
    version = current_version(bank)
    shutil.copytree(bank / VERSIONS_DIR / version, dst / VERSIONS_DIR / version, copy_function=os.link)
    (dst / CURRENT_FILE).write_text(version + "\n")
    return dst


async def load_with_reload(
    server: Server, key: str, layouts: list[bytes], args: argparse.Namespace, bank: Path
) -> tuple[list[Record], float, dict]:
    """Load, publish a new version mid-run, reload, keep loading."""
    total = args.reload_after + args.after_reload + 10_000  # the real stop is below
    state = LoadState(budget=total, deadline=time.perf_counter() + args.max_seconds)
    data = {"k": str(args.k), "mode": args.mode}
    info: dict = {}
    limits = httpx.Limits(max_connections=args.clients + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=args.timeout, limits=limits) as http:

        async def publisher() -> None:
            while len(state.records) < args.reload_after and time.perf_counter() < state.deadline:
                await asyncio.sleep(0.05)
            info["old_version"] = current_version(bank)
            info["publish_started_at"] = time.perf_counter()
            cmd = [sys.executable, "-m", "sims.cli", "index", "add", "--dataset", "camvid"]
            cmd += ["--root", str(args.root), "--bank", str(bank), "--splits", "val", "--workers", "1", "--no-progress"]
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"sims index add failed: {err.decode()[-500:]}")
            info["publish_seconds"] = round(time.perf_counter() - t0, 2)
            info["new_version"] = current_version(bank)
            info["requests_before_reload_call"] = len(state.records)
            t1 = info["reload_called_at"] = time.perf_counter()
            r = await http.post("/admin/reload", headers={"X-API-Key": key})
            info["reload_returned_at"] = time.perf_counter()
            info["reload_http_seconds"] = round(info["reload_returned_at"] - t1, 2)
            info["reload_status"] = r.status_code
            info["reload_response"] = r.json()
            # Stop after --after-reload more requests (or at the deadline).
            state.budget = state.sent + args.after_reload

        start = time.perf_counter()
        await asyncio.gather(publisher(), *(client_loop(http, state, layouts, data) for _ in range(args.clients)))
    return state.records, time.perf_counter() - start, info


def reload_run(args: argparse.Namespace, layouts: list[bytes], tmp: Path) -> dict:
    bank = link_copy(args.bank, tmp / "bank")
    key = secrets.token_hex(16)
    server = Server(bank, key, args.workers, tmp / "reload.log")
    try:
        server.wait_ready()
        records, wall, info = asyncio.run(load_with_reload(server, key, layouts, args, bank))
        out = summarize(records, wall)
        out.update(engine_seconds(server.url))
    finally:
        server.stop()
    if "reload_returned_at" not in info:
        raise RuntimeError("the run ended before the reload happened; raise --max-seconds")
    at = info.pop("reload_returned_at")
    published, called = info.pop("publish_started_at"), info.pop("reload_called_at")
    # Latency by what the service was doing when a request was sent: the publish (a separate
    # indexing process) and the reload (building and warming the new engine) take CPU from it.
    phases = {
        "before_publish": [r for r in records if r.start < published],
        "during_publish": [r for r in records if published <= r.start < called],
        "during_reload_call": [r for r in records if called <= r.start <= at],
        "after_reload": [r for r in records if r.start > at],
    }
    out["phases"] = {
        name: {k: v for k, v in summarize(rs, 0.0).items() if k in ("requests", "failed", "latency_ms")}
        for name, rs in phases.items()
    }
    new, old = info["new_version"], info["old_version"]
    after = [r for r in records if r.start > at]
    out["reload"] = {
        **info,
        "requests_in_flight_at_reload": sum(1 for r in records if r.start <= at <= r.end),
        "sent_after_reload": len(after),
        "after_reload_new_version": sum(1 for r in after if r.version == new),
        "after_reload_old_version": sum(1 for r in after if r.version == old),
        "after_reload_failed": sum(1 for r in after if r.error is not None),
        "answered_by_old_version": sum(1 for r in records if r.version == old),
        "answered_by_new_version": sum(1 for r in records if r.version == new),
        "new_images": open_bank(bank).num_images - open_bank(bank, old).num_images,
    }
    out["pass"] = out["failed"] == 0 and len(after) > 0 and out["reload"]["after_reload_new_version"] == len(after)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=Path, default=Path(".sims/banks/camvid-train"), help="Bank to serve.")
    p.add_argument(
        "--root", type=Path, default=os.environ.get("SIMS_CAMVID_ROOT"), help="CamVid root (env SIMS_CAMVID_ROOT)."
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=600, help="Requests of the steady run.")
    p.add_argument("--reload-after", type=int, default=150, help="Reload run: requests before publishing.")
    p.add_argument("--after-reload", type=int, default=300, help="Reload run: requests after the reload.")
    p.add_argument("--max-seconds", type=float, default=300.0, help="Hard time limit of each run.")
    p.add_argument("--timeout", type=float, default=60.0, help="Per-request timeout (s).")
    p.add_argument("--mode", choices=["fast", "exact"], default="fast")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the service.")
    p.add_argument("--runs", default="steady,reload")
    p.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = p.parse_args()
    if args.root is None:
        p.error("--root (or SIMS_CAMVID_ROOT) is required")
    layouts = val_layouts(args.root)
    bank = open_bank(args.bank)
    result: dict = {
        "benchmark": "load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # The host is shared: other jobs' load skews every number here.
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "bank": {
            "path": str(args.bank),
            "version": bank.version,
            "images": bank.num_images,
            "segments": bank.num_segments,
        },
        "queries": {"dataset": "camvid val", "layouts": len(layouts), "resolution": list(bank.resolution)},
        "settings": {
            "clients": args.clients,
            "mode": args.mode,
            "k": args.k,
            "server_workers": args.workers,
            "transport": "HTTP/1.1 on 127.0.0.1, multipart PNG upload",
            "timeout_s": args.timeout,
        },
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="sims-load-") as tmp:
        for run in args.runs.split(","):
            print(f"run {run} ...", flush=True)
            fn = {"steady": steady_run, "reload": reload_run}[run]
            result["runs"][run] = fn(args, layouts, Path(tmp))
            print(json.dumps(result["runs"][run], indent=2), flush=True)
    result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    write_json(args.out, result, announce=True)


if __name__ == "__main__":
    main()
