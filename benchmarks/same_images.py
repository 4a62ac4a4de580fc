"""Behaviour unchanged (issue 30): the same layouts give bit-identical images in two source trees.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/same_images.py --before /tmp/before --bank .sims/banks/camvid-train \\
        --layouts /path/to/camvid/valannot

For each tree (``--before`` and ``--after``, default this repository) it starts ``sims serve
--with-worker`` on ``--bank`` with that tree's code and shipped networks (one torch thread), posts
``--count`` layouts of ``--layouts`` (every ``--stride``-th file, CamVid ids mapped with
``dataset_ids``, seed 3) to ``POST /synthesize``, and records the SHA-256 of each PNG. Writes
``benchmarks/results/same_images.json`` with both lists and whether they are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import write_json  # benchmarks/common.py

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthesize_all(tree: Path, bank: Path, layouts: list[Path], seed: int) -> dict[str, str]:
    """SHA-256 of the image ``tree``'s service gives for each layout."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "SIMS_WORKER_THREADS": "1",
        "SIMS_WORKER_WEIGHTS_DIR": str(tree / "weights"),
        "SIMS_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "sims.cli", "serve", "--bank", str(bank), "--port", str(port), "--with-worker"]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the service of {tree} did not get ready")
            time.sleep(0.5)
        hashes = {}
        for path in layouts:
            files = {"layout": (path.name, path.read_bytes(), "image/png")}
            data = {"seed": str(seed), "dataset_ids": "true"}
            r = httpx.post(f"{url}/synthesize", files=files, data=data, timeout=120)
            r.raise_for_status()
            hashes[path.name] = hashlib.sha256(r.content).hexdigest()
        return hashes
    finally:
        proc.terminate()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="Source tree of the code before the change.")
    p.add_argument("--after", type=Path, default=REPO, help="Source tree after (default: this one).")
    p.add_argument("--bank", type=Path, required=True)
    p.add_argument("--layouts", type=Path, required=True, help="Folder of layout PNGs (e.g. CamVid valannot).")
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/same_images.json")
    args = p.parse_args(argv)
    layouts = sorted(args.layouts.glob("*.png"))[:: args.stride][: args.count]
    before = synthesize_all(args.before.resolve(), args.bank.resolve(), layouts, args.seed)
    after = synthesize_all(args.after.resolve(), args.bank.resolve(), layouts, args.seed)
    same = [name for name in before if before[name] == after.get(name)]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "bank": str(args.bank),
        "layouts": [p.name for p in layouts],
        "before": before,
        "after": after,
        "identical": len(same) == len(layouts),
        "identical_count": len(same),
    }
    write_json(args.out, result)
    print(f"{len(same)} of {len(layouts)} images bit-identical; wrote {args.out}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
