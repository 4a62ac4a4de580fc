"""Object-storage benchmark: the same bank on a local disk and on S3 (a moto server), compared.

    .venv/bin/python benchmarks/object_storage.py                  # the bundled CamVid sample
    .venv/bin/python benchmarks/object_storage.py --root ../shared/data/camvid

Builds a bank of the dataset's train and val splits twice, into a temporary directory and
straight to ``s3://`` on a moto S3 server this script starts on a loopback port, serves each
through the service app (fastapi's TestClient, in this process), sends every val layout to
``POST /retrieve`` on both and checks that the answers are identical. Writes
benchmarks/results/object_storage.json: whether they are, how many layouts and components were
compared, and the build, open (service start, bank load and warm-up included) and first-query
times on each side (after one untimed start on the local bank, so that neither side pays for
the process's first calls into torch, numba and FAISS). moto keeps objects in memory on this
machine, so the S3 times measure the protocol's round trips, not a real network.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_json  # benchmarks/common.py

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import open_bank
from memory_bank.png import encode_layout_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def start_moto() -> object:
    """A moto S3 server on a free loopback port; the AWS variables point fsspec at it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server


def serve_and_query(bank: str | Path, layouts: list[np.ndarray]) -> tuple[list[dict], dict[str, float]]:
    """Start the service on ``bank``, send every layout to /retrieve; the answers and the times."""
    from fastapi.testclient import TestClient

    from retrieval_service.api.app import create_app
    from retrieval_service.api.settings import Settings

    t0 = time.perf_counter()
    with TestClient(create_app(Settings(bank=bank, wait_for_bank=True))) as client:
        opened = time.perf_counter() - t0
        answers, first = [], None
        t1 = time.perf_counter()
        for layout in layouts:
            png = encode_layout_png(layout)
            r = client.post("/retrieve", files={"layout": ("l.png", png, "image/png")}, data={"k": "3"})
            r.raise_for_status()
            if first is None:
                first = time.perf_counter() - t1
            body = r.json()
            body.pop("timings_ms", None)
            body.pop("bank_version", None)
            answers.append(body)
        total = time.perf_counter() - t1
    return answers, {
        "open_seconds": round(opened, 3),
        "first_query_seconds": round(first or 0.0, 4),
        "all_queries_seconds": round(total, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "examples" / "camvid-sample", help="CamVid dataset root.")
    parser.add_argument("--out", type=Path, default=RESULTS / "object_storage.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import s3fs

    server = start_moto()
    try:
        bucket = "sims-bench"
        s3fs.S3FileSystem().mkdir(bucket)
        with tempfile.TemporaryDirectory(prefix="sims-bench-") as tmp:
            sides = {"local": str(Path(tmp) / "bank"), "s3": f"s3://{bucket}/banks/camvid"}
            report: dict = {}
            for side, where in sides.items():
                t = time.perf_counter()
                build_bank(create_reader("camvid", args.root, ["train", "val"]), where, progress=False)
                report[side] = {"bank": where, "build_seconds": round(time.perf_counter() - t, 3)}
            local = open_bank(sides["local"])
            val_ids = [i for i, s in enumerate(local.images["split"].to_pylist()) if s == "val"]
            layouts = [np.asarray(local.labels[i]) for i in val_ids]
            serve_and_query(sides["local"], layouts[:1])  # first calls into torch, numba and FAISS: not timed
            answers = {}
            for side, where in sides.items():
                answers[side], times = serve_and_query(where, layouts)
                report[side] |= times
            identical = answers["local"] == answers["s3"]
            components = sum(len(a["components"]) for a in answers["local"])
            print(f"{len(layouts)} layouts, {components} components: identical={identical}")
            for side in sides:
                print(side, {k: v for k, v in report[side].items() if k != "bank"})
            result = {
                "benchmark": "object_storage",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "dataset": str(args.root.resolve().relative_to(REPO))
                if args.root.resolve().is_relative_to(REPO)
                else str(args.root),
                "bank": {
                    "images": local.num_images,
                    "segments": local.num_segments,
                    "version_files": len(local.manifest.checksums) + 1,
                },
                "identical": identical,
                "layouts_compared": len(layouts),
                "components_compared": components,
                "k": 3,
                "local": {k: v for k, v in report["local"].items() if k != "bank"},
                "s3": {k: v for k, v in report["s3"].items() if k != "bank"}
                | {"server": "moto (in-process, loopback)"},
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            }
    finally:
        server.stop()
    write_json(args.out, result, announce=True)


if __name__ == "__main__":
    main()
