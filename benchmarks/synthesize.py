"""End-to-end ``POST /synthesize`` latency and throughput over HTTP on loopback.

    .venv/bin/python benchmarks/synthesize.py --bank .sims/banks/camvid-train --layouts-bank .sims/banks/camvid-val

Starts the service as a subprocess on a free loopback port, waits for ``/readyz``, then posts
CamVid val layouts (PNG label maps at 360x480; one seed per layout) and reads the PNG replies:

- ``sequential``: one client, ``--layouts`` requests: p50/p95 of the client's wall time, split by
  the reply's ``Server-Timing`` into retrieval, canvas (read + align + order + paste + elide) and
  network (the synthesis network at its resolution, and the upsampling to 360x480), seam_blend
  (synthesis/canvas/seams.py); the rest
  (``other``) is layout decoding, PNG encoding and the HTTP hops.
- ``concurrent``: ``--clients`` clients (4) share the same layouts: throughput in images/s.

Deployments (``--deployments``): ``with-worker`` (``sims serve --with-worker``: one process, no
HTTP hop) and ``worker`` (``sims serve`` + a separate ``sims worker`` that retrieves and reads
segments over HTTP). Pipelines (``--pipelines``): ``full`` (the shipped transformation network T and
ordering network) and ``fast`` (segments left where they were, the layout rule for order).

The network is ``--weights`` (default ``weights/synthesis``); when that holds no network, the
192x256 config (configs/synthesis/camvid-192x256.json) is run untrained, which costs the same time,
and the result says so. Writes benchmarks/results/synthesize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from common import write_json  # benchmarks/common.py

from memory_bank import open_bank
from memory_bank.png import encode_layout_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "benchmarks" / ".cache"
UNTRAINED_CONFIG = REPO / "configs" / "synthesis" / "camvid-192x256.json"
PIPELINES = {
    "full": {"SIMS_WORKER_TRANSFORM_WEIGHTS": "weights/transform", "SIMS_WORKER_ORDERING_WEIGHTS": "weights/ordering"},
    "fast": {"SIMS_WORKER_TRANSFORM_WEIGHTS": "none", "SIMS_WORKER_ORDERING_WEIGHTS": "none"},
}
STEPS = ("retrieve", "canvas", "network", "seam_blend")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def network_weights(path: Path) -> tuple[Path, str]:
    """The network to run, and what it is (trained export, or the 192x256 config untrained)."""
    if (path / "config.json").is_file():
        meta = json.loads((path / "sims.json").read_text()) if (path / "sims.json").is_file() else {}
        return path, f"{path} ({'parametric' if meta.get('parametric') else 'trained'}, step {meta.get('step', '?')})"
    from synthesis.model_directory import save_pretrained
    from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig

    out = CACHE / "synthesis-untrained-192x256"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        config = RefinementConfig.from_dict(json.loads(UNTRAINED_CONFIG.read_text())["model"])
        save_pretrained(CascadedRefinementNetwork.from_config(config), out, {"untrained": True}, dtype=torch.float16)
    return out, f"untrained {UNTRAINED_CONFIG.name} (no network in {path})"


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args} exited with {p.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate ``proc`` and wait for it; kill it if it is still running after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(deployment: str, bank: Path, weights: Path, env: dict[str, str]) -> tuple[str, list[subprocess.Popen]]:
    """Start the deployment; returns the service URL and the processes (worker, if any, first)."""
    sims = str(Path(sys.executable).with_name("sims"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    serve = [sims, "serve", "--bank", str(bank), "--port", str(port), "--log-level", "warning"]
    if deployment == "with-worker":
        procs.append(subprocess.Popen([*serve, "--with-worker", "--weights", str(weights)], env=env, cwd=REPO, **quiet))
    else:
        worker_port = free_port()
        worker = [sims, "worker", "--service", url, "--weights", str(weights), "--port", str(worker_port)]
        procs.append(subprocess.Popen([*worker, "--log-level", "warning"], env=env, cwd=REPO, **quiet))
        synthesis_url = f"http://127.0.0.1:{worker_port}"
        procs.append(subprocess.Popen([*serve, "--synthesis-url", synthesis_url], env=env, cwd=REPO, **quiet))
        wait_ready(url, procs)
        wait_ready(synthesis_url, procs)
    wait_ready(url, procs)
    return url, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def server_timing(header: str) -> dict[str, float]:
    """``name;dur=ms, ...`` as seconds."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest) / 1000
    return out


def post(client: httpx.Client, png: bytes, seed: int) -> tuple[float, dict[str, float], int]:
    start = time.perf_counter()
    r = client.post("/synthesize", files={"layout": ("l.png", png, "image/png")}, data={"seed": str(seed)})
    wall = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"/synthesize answered {r.status_code}: {r.text[:200]}")
    return wall, server_timing(r.headers.get("server-timing", "")), len(r.content)


def percentiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "p50": round(statistics.median(ms), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
        "mean": round(statistics.fmean(ms), 1),
    }


def sequential(url: str, pngs: list[bytes]) -> dict[str, Any]:
    walls, steps = [], {k: [] for k in (*STEPS, "other")}
    with httpx.Client(base_url=url, timeout=120) as client:
        for i, png in enumerate(pngs):
            wall, timing, _ = post(client, png, i)
            walls.append(wall)
            for k in STEPS:
                steps[k].append(timing.get(k, 0.0))
            steps["other"].append(wall - sum(timing.get(k, 0.0) for k in STEPS))
    return {
        "requests": len(pngs),
        "wall_ms": percentiles(walls),
        **{f"{k}_ms": percentiles(v) for k, v in steps.items()},
    }


def concurrent(url: str, pngs: list[bytes], clients: int) -> dict[str, Any]:
    queue = list(enumerate(pngs))
    lock = threading.Lock()
    walls: list[float] = []
    errors: list[str] = []

    def run() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    i, png = queue.pop()
                try:
                    wall, _, _ = post(client, png, i)
                except Exception as e:
                    errors.append(str(e))
                    continue
                with lock:
                    walls.append(wall)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(walls),
        "errors": len(errors),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(walls) / seconds, 3),
        "wall_ms": percentiles(walls) if walls else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=Path, default=REPO / ".sims/banks/camvid-train")
    parser.add_argument("--layouts-bank", type=Path, default=REPO / ".sims/banks/camvid-val")
    parser.add_argument("--weights", type=Path, default=REPO / "weights/synthesis")
    parser.add_argument("--layouts", type=int, default=50, help="Val layouts, spread evenly (of 101).")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--deployments", default="with-worker,worker")
    parser.add_argument("--pipelines", default="full,fast")
    parser.add_argument("--warm-up", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "synthesize.json")
    args = parser.parse_args()

    weights, weights_note = network_weights(args.weights)
    val = open_bank(args.layouts_bank)
    ids = np.linspace(0, val.num_images - 1, min(args.layouts, val.num_images)).round().astype(int)
    pngs = [encode_layout_png(np.asarray(val.labels[int(i)])) for i in ids]
    load_before = os.getloadavg()[0]
    runs = []
    for pipeline in args.pipelines.split(","):
        for deployment in args.deployments.split(","):
            env = {**os.environ, **PIPELINES[pipeline]}
            url, procs = start(deployment, args.bank, weights, env)
            try:
                with httpx.Client(base_url=url, timeout=300) as client:
                    for i in range(args.warm_up):
                        post(client, pngs[i % len(pngs)], 10_000 + i)
                seq = sequential(url, pngs)
                conc = concurrent(url, pngs, args.clients)
            finally:
                stop(procs)
            run = {"deployment": deployment, "pipeline": pipeline, "sequential": seq, "concurrent": conc}
            runs.append(run)
            w = seq["wall_ms"]
            print(
                f"{pipeline:>4} {deployment:>11}: p50 {w['p50']:.0f} ms, p95 {w['p95']:.0f} ms "
                f"(retrieve {seq['retrieve_ms']['p50']:.0f}, canvas {seq['canvas_ms']['p50']:.0f}, "
                f"network {seq['network_ms']['p50']:.0f}, seam blend {seq['seam_blend_ms']['p50']:.0f}, "
                f"other {seq['other_ms']['p50']:.0f}); "
                f"{args.clients} clients: {conc['images_per_s']:.2f} images/s",
                flush=True,
            )
    result = {
        "benchmark": "synthesize",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "bank": {"path": str(args.bank), "version": open_bank(args.bank).version},
        "layouts": {"bank": str(args.layouts_bank), "count": len(pngs), "resolution": list(val.resolution)},
        "network": weights_note,
        "options": {"k": 5, "mode": "fast", "seeds": "layout index", "reply": "image/png"},
        "notes": "Wall time is the client's; the split comes from Server-Timing. `other` = decode, PNG encode, "
        "HTTP hops. The worker runs torch on 1 thread per request (2 at once); the machine is shared with "
        "other jobs (see load_average_1m).",
        "runs": runs,
    }
    write_json(args.out, result, announce=True)


if __name__ == "__main__":
    main()
