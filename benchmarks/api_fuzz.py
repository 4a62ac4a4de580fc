"""Schemathesis over the whole spec with ``--checks all``, against a real server (issue 15).

    .venv/bin/python benchmarks/api_fuzz.py                   # default budget: 1000 cases per operation
    .venv/bin/python benchmarks/api_fuzz.py --max-examples 20 --out /tmp/fuzz.json

Starts ``sims serve --with-worker`` from this tree on ``--bank`` (the shipped synthesis network,
one torch thread) on loopback, with keys for every route class, and runs the schemathesis CLI
(``st run``) on its ``/openapi.json``: every phase (examples, coverage, fuzzing, stateful), every
check, ``--max-examples`` cases per operation, a fixed ``--seed``, sending the key. Reads the
run's NDJSON event stream and writes ``benchmarks/results/api_fuzz.json``: the requests sent,
their statuses, the 5xx count, and each failed check with its operation and message, plus the
server log's tracebacks (none expected).

The unit-test twin (``tests/test_api_schema.py``) runs in-process with a few checks and a small
budget; this is the long run with all of them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json  # benchmarks/common.py
from synthesize import free_port, wait_ready  # the sibling benchmark's server helpers

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "api_fuzz.json"
KEY = "fuzz-key"


def serve(bank: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``sims serve --with-worker`` on ``bank``, keys for every route class; returns (process, URL)."""
    port = free_port()
    env = {
        **os.environ,
        "SIMS_API_KEYS": f"*:{KEY}",
        "SIMS_WORKER_THREADS": "1",
        "SIMS_WORKER_WEIGHTS_DIR": str(REPO / "weights"),
        "SIMS_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "sims.cli", "serve", "--with-worker", "--bank", str(bank), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def read_events(path: Path) -> tuple[Counter[str], list[dict], int]:
    """From schemathesis's NDJSON events: statuses of every response, failed checks, and the request count."""
    statuses: Counter[str] = Counter()
    failures: dict[tuple[str, str, str], dict] = {}
    requests = 0
    for line in path.read_text().splitlines():
        event = json.loads(line)
        for recorder in _find(event, "recorder"):
            for interaction in recorder.get("interactions", {}).values():
                requests += 1
                response = interaction.get("response") or {}
                statuses[str(response.get("status_code", "no response"))] += 1
            for case_id, checks in recorder.get("checks", {}).items():
                for check in checks:
                    if str(check.get("status")).lower() != "failure":
                        continue
                    failure = check.get("failure_info") or {}
                    details = failure.get("failure") or {}
                    title = f"{details.get('code', '')} {details.get('title', '')}".strip()
                    key = (str(details.get("operation", recorder.get("label", ""))), check.get("name", ""), title)
                    entry = failures.setdefault(
                        key, {"operation": key[0], "check": key[1], "title": title, "count": 0, "example": ""}
                    )
                    entry["count"] += 1
                    if not entry["example"]:
                        entry["example"] = _response_text(recorder.get("interactions", {}).get(case_id, {}))[:300]
    return statuses, sorted(failures.values(), key=lambda f: (f["check"], f["operation"])), requests


def _response_text(interaction: dict) -> str:
    """The status and body of a recorded response."""
    response = interaction.get("response") or {}
    content = response.get("content") or {}
    body = base64.b64decode(content["$base64"]).decode(errors="replace") if "$base64" in content else ""
    return f"{response.get('status_code', '')} {body}".strip()


def _find(node: object, name: str) -> list[dict]:
    """Every dict under key ``name`` anywhere in a JSON tree."""
    found: list[dict] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == name and isinstance(v, dict):
                found.append(v)
            else:
                found += _find(v, name)
    elif isinstance(node, list):
        for v in node:
            found += _find(v, name)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=Path, default=REPO / ".sims/banks/camvid-val")
    p.add_argument("--max-examples", type=int, default=1000, help="Cases per operation and phase.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="schemathesis's concurrent workers.")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", type=Path, help="Keep schemathesis's output and event stream in this directory.")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log, events = Path(tmp) / "serve.log", Path(tmp) / "events.ndjson"
        proc, url = serve(args.bank.resolve(), log)
        try:
            wait_ready(url, [proc], 180.0)
            cmd = [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--workers",
                str(args.workers),
                "--header",
                f"X-API-Key: {KEY}",
                "--report",
                "ndjson",
                "--report-ndjson-path",
                str(events),
                "--no-color",
                "--suppress-health-check",
                "all",
            ]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)  # its caches go there too
            seconds = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(30)
        statuses, failures, requests = read_events(events)
        server_log = log.read_text(errors="replace")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / "events.ndjson").write_bytes(events.read_bytes())
            (args.keep / "schemathesis.txt").write_text(done.stdout + done.stderr)
            (args.keep / "serve.log").write_text(server_log)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "keep")
        },
        "command": " ".join(cmd[1:]).replace(url, "http://127.0.0.1:PORT"),
        "seconds": round(seconds, 1),
        "schemathesis_exit_code": done.returncode,
        "schemathesis_summary": summary,
        "requests": requests,
        "statuses": dict(sorted(statuses.items())),
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "server_tracebacks": server_log.count("Traceback"),
        "failed_checks": failures,
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "failed_checks"}, indent=2))
    for f in failures:
        print(f"FAILED {f['check']} on {f['operation']} ({f['count']}x): {f['title']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
