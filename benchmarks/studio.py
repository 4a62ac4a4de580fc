"""What SIMS Studio's clicks cost: candidates for a clicked region, and a pinned re-synthesis.

    .venv/bin/python benchmarks/studio.py --bank .sims/banks/camvid-train --layouts-bank .sims/banks/camvid-val

Everything runs in this one process: the service with the in-process worker (``sims serve
--with-worker``) through a test client, and the separate-worker deployment as three apps on
loopback (a retrieval service and a ``sims worker`` under uvicorn in threads, and the front
service whose ``/synthesize`` goes to the worker). Networks: the worker's defaults (``weights/``).
For each of ``--layouts`` CamVid val layouts (360x480, the bank's resolution):

- ``candidates``: what the page asks when a region is clicked: ``POST /retrieve`` with the layout
  and ``k`` = ``--candidates`` (every component's top matches, the clicked one read off), then
  ``GET /segments/{id}/thumbnail?size=96`` for that region's candidates; reported without and with
  the thumbnails.
- ``pinned_resynthesis``: after a first synthesis (seed s, ``candidates`` listed), the largest
  component is pinned to its second candidate and the layout synthesized again with seed s + 1,
  as the page does (JSON, extras ``provenance`` and ``components``), on both deployments.

Writes benchmarks/results/studio.json. The machine may be shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from common import write_json  # benchmarks/common.py
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memory_bank import open_bank  # noqa: E402
from memory_bank.png import encode_layout_png  # noqa: E402
from retrieval_service.api.app import create_app  # noqa: E402
from retrieval_service.api.settings import Settings  # noqa: E402
from retrieval_service.client import RetrievalClient  # noqa: E402
from synthesis.worker.app import create_worker_app  # noqa: E402
from synthesis.worker.runtime import load_networks  # noqa: E402
from synthesis.worker.settings import WorkerSettings  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
THUMBNAIL = 96


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def check(r: Any) -> Any:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r


def clicked(components: list[dict]) -> dict:
    """The region a user clicks: the largest component with at least two candidates."""
    ok = [c for c in components if len(c["candidates"]) >= 2]
    return max(ok, key=lambda c: c["area"])


def measure_candidates(client: TestClient, pngs: list[str], k: int) -> dict[str, Any]:
    alone, with_thumbs = [], []
    for i, png in enumerate(pngs):
        r, ms = timed(lambda png=png, i=i: check(client.post("/retrieve", json={"layout_png": png, "k": k, "seed": i})))
        comp = clicked(r.json()["components"])
        start = time.perf_counter()
        for m in comp["candidates"]:
            check(client.get(f"/segments/{m['segment_id']}/thumbnail", params={"size": THUMBNAIL}))
        alone.append(ms)
        with_thumbs.append(ms + (time.perf_counter() - start) * 1000)
    return {"retrieve_ms": summary(alone), "retrieve_and_thumbnails_ms": summary(with_thumbs)}


def measure_pinned(client: TestClient, pngs: list[str], k: int) -> dict[str, Any]:
    first_ms, pinned_ms, steps = [], [], {"retrieve": [], "canvas": [], "network": [], "seam_blend": []}
    for i, png in enumerate(pngs):
        body = {"layout_png": png, "seed": i, "candidates": k, "format": "json", "extras": ["provenance", "components"]}
        r, ms = timed(lambda body=body: check(client.post("/synthesize", json=body)))
        first_ms.append(ms)
        comp = clicked(r.json()["components"])
        pick = comp["candidates"][1]["segment_id"]
        again = {**body, "seed": i + 1, "pins": {str(comp["index"]): pick}}
        r, ms = timed(lambda again=again: check(client.post("/synthesize", json=again)))
        got = r.json()["components"][comp["index"]]
        if got["segment_id"] != pick or not got["pinned"]:
            raise RuntimeError(f"layout {i}: the pin was not honoured: {got}")
        pinned_ms.append(ms)
        for step in steps:
            steps[step].append(r.json()["timings_ms"].get(step, 0.0))
    return {
        "first_synthesis_ms": summary(first_ms),
        "pinned_resynthesis_ms": summary(pinned_ms),
        "pinned_steps_ms": {step: summary(v) for step, v in steps.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=Path, default=REPO / ".sims/banks/camvid-train")
    parser.add_argument("--layouts-bank", type=Path, default=REPO / ".sims/banks/camvid-val")
    parser.add_argument("--layouts", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "studio.json")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the worker's default weights are relative to the repository
    sys.path.insert(0, str(REPO / "tests"))
    from servers import serving as running  # uvicorn in a thread on a free loopback port

    val = open_bank(args.layouts_bank)
    layouts = [np.asarray(val.labels[i]) for i in range(min(args.layouts, val.num_images))]
    pngs = [base64.b64encode(encode_layout_png(x)).decode("ascii") for x in layouts]
    load_before = os.getloadavg()[0]
    worker_settings = WorkerSettings(threads=1)
    networks = load_networks(worker_settings)
    results: dict[str, Any] = {}

    in_process = create_app(Settings(bank=args.bank, wait_for_bank=True, synthesis_backend="in_process"))
    with TestClient(in_process) as client:
        bank_version = check(client.get("/bank")).json()["version"]
        measure_pinned(client, pngs[:3], args.candidates)  # warm-up: first calls into torch are slow
        results["candidates"] = measure_candidates(client, pngs, args.candidates)
        results["with_worker"] = measure_pinned(client, pngs, args.candidates)

    with running(create_app(Settings(bank=args.bank, wait_for_bank=True))) as retrieval_url:
        worker = create_worker_app(worker_settings.model_copy(update={"service_url": retrieval_url}), networks=networks)
        with running(worker) as worker_url:
            probe = RetrievalClient(worker_url)
            deadline = time.monotonic() + 120
            while not probe.ready().ready:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready: {probe.ready().message}")
                time.sleep(0.1)
            front = create_app(Settings(bank=args.bank, wait_for_bank=True, synthesis_url=worker_url))
            with TestClient(front) as client:
                measure_pinned(client, pngs[:3], args.candidates)
                results["separate_worker"] = measure_pinned(client, pngs, args.candidates)

    report = {
        "benchmark": "studio",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "bank": {"path": str(args.bank), "version": bank_version},
        "layouts": {"bank": str(args.layouts_bank), "count": len(pngs), "resolution": list(layouts[0].shape)},
        "options": {"candidates": args.candidates, "k": 5, "mode": "fast", "thumbnail": THUMBNAIL},
        "targets": {"candidates_p50_ms": 100, "pinned_resynthesis_p50_ms": 1000},
        "notes": "One process: test clients for the services, uvicorn threads on loopback for the separate "
        "worker and the retrieval service it calls. Networks: the worker's defaults under weights/ (synthesis, "
        "layout refiner, T, ordering). The machine may be shared with other jobs (see load_average_1m).",
        **results,
    }
    write_json(args.out, report, indent=1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
