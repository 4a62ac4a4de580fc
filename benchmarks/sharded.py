"""Sharded retrieval against one process on the 10^6-segment jittered bank (docs/scaling.md).

    .venv/bin/python benchmarks/sharded.py --root ../shared/data/camvid \\
        --cache-dir benchmarks/.cache --runs 2,4,2:80000

For one process and for local Dask clusters (worker processes of one thread, each holding one
shard; the plan cuts only classes above an even share): per-layout latency (p50/p95, all CamVid
val layouts, cutting and coding included) in ``fast`` and ``exact`` mode, throughput with
``--clients`` threads, whether every answer is identical to one process's, memory per shard, and
where a sharded request's time goes (shard calls, the slowest shard's own work, pickling, and the
rest: Dask's transport). A run ``W:MAX_PART`` cuts classes smaller (at 80,000, every large class
is split, so fast mode takes its three-step path). Writes
benchmarks/results/sharded.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json  # benchmarks/common.py
from jitter import CACHE_DIR, CodeBank, jittered_bank

from indexers.readers import create_reader
from memory_bank.candidate_index import CandidateConfig
from memory_bank.context_codes import BoxedContexts
from retrieval_service.engine import LayoutEngine, RetrievalEngine
from retrieval_service.shard_cluster import DaskShards, ShardCluster
from retrieval_service.shard_plan import plan_shards
from retrieval_service.shard_server import ShardSource, SourceFrame
from retrieval_service.sharded import ShardedEngine
from retrieval_service.types import RetrievalOptions, RetrievalResult

RESULTS = Path(__file__).parent / "results"


class CodeBankSource(ShardSource):
    """A jittered code bank (benchmarks/jitter.py), opened from its cache on each worker (memory-mapped)."""

    def __init__(self, bank: Path, segments: int, cache_dir: Path) -> None:
        self.args = (str(bank), segments, str(cache_dir))
        self._codes: CodeBank | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.args, self._codes = state["args"], None

    @property
    def codes_bank(self) -> CodeBank:
        if self._codes is None:
            bank, n, cache = self.args
            self._codes = jittered_bank(bank, n, cache_dir=Path(cache), progress=False)
        return self._codes

    def frame(self) -> SourceFrame:
        c = self.codes_bank
        return SourceFrame(f"jitter-{len(c)}", c.num_classes, c.config, c.resolution)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self.codes_bank, name))

    def codes(self, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, BoxedContexts]:
        c = self.codes_bank
        contexts = BoxedContexts.from_rows(c.context[segment_ids], c.config.fine_grid)
        return np.asarray(c.mask[segment_ids]), np.asarray(c.coarse[segment_ids]), contexts

    def coarse(self, segment_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.codes_bank.coarse[segment_ids])


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 2)


def latency(engine: LayoutEngine, layouts: list[np.ndarray], options: RetrievalOptions, repeats: int) -> tuple:
    """Per-layout seconds over ``repeats`` passes, and the last pass's results."""
    times, results = [], []
    for _ in range(repeats):
        results = []
        for label in layouts:
            t = time.perf_counter()
            results.append(engine.retrieve(label, options))
            times.append(time.perf_counter() - t)
    return times, results


def throughput(
    engine: LayoutEngine, layouts: list[np.ndarray], options: RetrievalOptions, clients: int, seconds: float
) -> float:
    """Layouts per second with ``clients`` threads asking at once."""
    stop, done = threading.Event(), [0] * clients

    def run(slot: int) -> None:
        i = slot
        while not stop.is_set():
            engine.retrieve(layouts[i % len(layouts)], options)
            done[slot] += 1
            i += clients

    threads = [threading.Thread(target=run, args=(s,)) for s in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return round(sum(done) / (time.perf_counter() - start), 2)


def same(a: list[RetrievalResult], b: list[RetrievalResult]) -> int:
    """Layouts whose answers differ (components, matches bit for bit, choices)."""
    return sum(x.components != y.components for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CamVid root (SegNet layout): the val layouts")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="jitter cache (holds camvid-train)")
    parser.add_argument("--bank", type=Path, default=None, help="CamVid train bank (default: CACHE_DIR/camvid-train)")
    parser.add_argument("--segments", type=int, default=1_000_000)
    parser.add_argument(
        "--runs",
        default="2,4,2:80000",
        help="Dask clusters to run, comma-separated WORKERS[:MAX_PART] (one shard per worker; MAX_PART, the most "
        "rows of a class per shard, default an even share)",
    )
    parser.add_argument("--modes", default="fast,exact")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the layouts per mode")
    parser.add_argument("--clients", type=int, default=4, help="threads of the throughput runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each throughput run")
    parser.add_argument("--max-layouts", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "sharded.json")
    args = parser.parse_args()
    bank_path = args.bank or args.cache_dir / "camvid-train"
    val = create_reader("camvid", args.root, ["val"])
    layouts = [val.load(ref).label for ref in val.refs[: args.max_layouts]]
    modes = args.modes.split(",")
    source = CodeBankSource(bank_path, args.segments, args.cache_dir)
    codes = source.codes_bank
    config = CandidateConfig()

    # 1. One process: the reference answers and times.
    t0 = time.perf_counter()
    index = codes.segment_index(source.frame().version)
    single = RetrievalEngine(index, config)
    single.warm_up()
    single_load = time.perf_counter() - t0
    report: dict[str, Any] = {
        "single": {"load_seconds": round(single_load, 1), "index_bytes": index.nbytes(), "modes": {}},
        "sharded": [],
    }
    reference = {}
    for mode in modes:
        options = RetrievalOptions(k=5, mode=mode, seed=0)
        times, reference[mode] = latency(single, layouts, options, args.repeats)
        report["single"]["modes"][mode] = {
            "p50_ms": pct(times, 50),
            "p95_ms": pct(times, 95),
            "throughput": throughput(single, layouts, options, args.clients, args.seconds),
        }
        print(f"single {mode}: {report['single']['modes'][mode]}", flush=True)
    del single, index  # free the cores' caches and memory for the shards

    # 2. Each cluster size: load, identity, latency, throughput, overhead.
    for spec in args.runs.split(","):
        workers, _, max_part = spec.partition(":")
        workers = int(workers)
        cluster = ShardCluster(workers)
        try:
            plan = plan_shards(source.class_sizes(), workers, int(max_part) if max_part else None)
            t0 = time.perf_counter()
            shards = DaskShards(cluster.client, source, plan, config, load_timeout=1800)
            load = time.perf_counter() - t0
            engine = ShardedEngine(source, shards, candidate_config=config)
            run: dict[str, Any] = {
                "workers": workers,
                "max_part": int(max_part) if max_part else None,
                "split_classes": sorted(c for c in plan.class_sizes if plan.split(c)),
                "load_seconds": round(load, 1),
                "shards": engine.describe(),
                "modes": {},
            }
            for mode in modes:
                options = RetrievalOptions(k=5, mode=mode, seed=0)
                latency(engine, layouts[:10], options, 1)  # warm the connections
                shards.take_timings()
                times, results = latency(engine, layouts, options, args.repeats)
                spent = shards.take_timings()
                n = len(times)
                calls, compute, pickling = (
                    spent.get(k, 0.0) / n * 1000 for k in ("shard_calls", "shard_compute", "shard_pickle")
                )
                p50 = pct(times, 50)
                single_p50 = report["single"]["modes"][mode]["p50_ms"]
                run["modes"][mode] = {
                    "p50_ms": p50,
                    "p95_ms": pct(times, 95),
                    "overhead_p50_ms": round(p50 - single_p50, 2),
                    "differing_layouts": same(results, reference[mode]),
                    "mean_ms_per_layout": {
                        "total": round(float(np.mean(times)) * 1000, 2),
                        "shard_calls": round(calls, 2),
                        "slowest_shard_compute": round(compute, 2),
                        "pickling_here": round(pickling, 2),
                        "transport_and_wait": round(calls - compute - pickling, 2),
                        "outside_calls": round(float(np.mean(times)) * 1000 - calls, 2),
                    },
                    "throughput": throughput(engine, layouts, options, args.clients, args.seconds),
                }
                print(f"{workers} workers {mode}: {run['modes'][mode]}", flush=True)
            report["sharded"].append(run)
            shards.close()
        finally:
            cluster.close()

    out = {
        "benchmark": "sharded",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()},
        "segments": args.segments,
        "layouts": len(layouts),
        "repeats": args.repeats,
        "clients": args.clients,
        **report,
    }
    write_json(args.out, out, announce=True)


if __name__ == "__main__":
    main()
