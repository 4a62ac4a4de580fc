"""Canvas-building benchmark: time per layout at the working resolution, retrieval included.

    .venv/bin/python benchmarks/canvas.py --root $SIMS_CAMVID_ROOT --bank .sims/banks/camvid-train

Queries: every CamVid val layout (raw label 11 = unlabelled becomes 255, as the camvid reader
maps it), at the bank's resolution (360x480 for CamVid). Canvases are built against the CamVid
train bank with the in-process engine in fast mode, k = 5, the transformation network T
(``--transform``, default weights/transform; ``none`` for identity), the ordering network
(``--ordering``, default weights/ordering; ``none`` for the layout rule) and elision, through
one `CanvasBuilder` with its per-image cache, in val order, as a long-running service would:
the first layouts find the cache cold. Reported per layout: wall time (p50, p95) split into
retrieval / read + align / order / compose / elide, the aligner's own wall and CPU time within
read + align (so reading is the rest) and the orderer's, and the process CPU time, which is less
sensitive to other work on a shared host. Also: the share of missing, white and black pixels
and the cache hit rate. Writes benchmarks/results/canvas.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from common import write_json  # benchmarks/common.py
from tqdm import tqdm

from indexers.readers import create_reader
from memory_bank import open_bank
from memory_bank.images import resize_label
from synthesis.canvas.builder import CanvasBuilder, CanvasOptions
from synthesis.canvas.elision import BLACK, WHITE
from synthesis.networks.ordering import LearnedOrderer
from synthesis.networks.transform import TransformAligner

RESULTS = Path(__file__).parent / "results"
STEPS = ("retrieve", "read_align", "order", "compose", "elide", "total")


class Stopwatch:
    """Adds up the wall and CPU seconds spent in the calls it wraps (per layout: read, then reset)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.process_time() - cpu

        return timed

    def take(self) -> tuple[float, float]:
        """``(wall, cpu)`` seconds since the last take."""
        got = (self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return got


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def val_layouts(root: Path, resolution: tuple[int, int], limit: int | None) -> list[np.ndarray]:
    """CamVid val label maps in bank ids (255 = unlabelled), at the bank's resolution."""
    reader = create_reader("camvid", root, ["val"])
    refs = reader.refs[:limit] if limit else reader.refs
    out = []
    for ref in refs:
        label = reader.load(ref).label
        out.append(label if label.shape == tuple(resolution) else resize_label(label, resolution))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=os.environ.get("SIMS_CAMVID_ROOT"), help="CamVid root")
    parser.add_argument("--bank", type=Path, default=Path(".sims/banks/camvid-train"), help="CamVid train bank")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--mode", default="fast", choices=("fast", "exact"))
    parser.add_argument("--cache-images", type=int, default=64, help="per-image LRU cache size of the segment reader")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the val layouts (cache stays warm)")
    parser.add_argument("--max-layouts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transform", default="weights/transform", help="T weights directory, or 'none'")
    parser.add_argument("--ordering", default="weights/ordering", help="ordering weights directory, or 'none'")
    parser.add_argument(
        "--exact-transform",
        action="store_true",
        help="run T one segment at a time without channels-last: the per-segment results bit for bit, slower",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "canvas.json")
    args = parser.parse_args()
    if args.root is None:
        parser.error("--root (or SIMS_CAMVID_ROOT) is required")
    # One thread each, as the service runs: on a shared 2-core host, FAISS's OpenMP threads and
    # torch's intra-op threads otherwise spin against each other.
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)

    bank = open_bank(args.bank)
    layouts = val_layouts(args.root, bank.resolution, args.max_layouts)
    exact = {"batch_size": 1, "channels_last": False} if args.exact_transform else {}
    aligner = None if args.transform == "none" else TransformAligner.from_pretrained(args.transform, **exact)
    orderer = None if args.ordering == "none" else LearnedOrderer.from_pretrained(args.ordering)
    builder = CanvasBuilder.from_bank(
        bank,
        max_images=args.cache_images,
        aligner=aligner,
        orderer=orderer,
        options=CanvasOptions(k=args.k, mode=args.mode),
    )
    warm = builder.retriever.warm_up()  # FAISS indexes, loaded once per process  # type: ignore[attr-defined]
    # Time the aligner (all segments of a layout in one align_many call when it has one) and the orderer.
    align_watch, order_watch = Stopwatch(), Stopwatch()
    if hasattr(builder.aligner, "align_many"):
        builder.aligner.align_many = align_watch.wrap(builder.aligner.align_many)  # type: ignore[attr-defined]
    else:
        builder.aligner = align_watch.wrap(builder.aligner)
    builder.orderer = order_watch.wrap(builder.orderer)
    own: dict[str, list[float]] = {"align_wall": [], "align_cpu": [], "order_cpu": []}
    load_before = os.getloadavg()
    steps: dict[str, list[float]] = {s: [] for s in STEPS}
    cpu: list[float] = []
    missing, white, black, segments = [], [], [], []
    for rep in range(args.repeats):
        for i, layout in enumerate(tqdm(layouts, desc=f"canvases (pass {rep + 1})", unit="layout")):
            c0 = time.process_time()
            canvas = builder(layout, seed=args.seed + i)
            cpu.append(time.process_time() - c0)
            align_wall, align_cpu = align_watch.take()
            own["align_wall"].append(align_wall)
            own["align_cpu"].append(align_cpu)
            own["order_cpu"].append(order_watch.take()[1])
            for s in STEPS:
                steps[s].append(canvas.timings[s])
            if rep == 0:
                missing.append(float(canvas.missing.mean()))
                white.append(float((canvas.elision == WHITE).mean()))
                black.append(float((canvas.elision == BLACK).mean()))
                segments.append(len(canvas.segments))
    load_after = os.getloadavg()
    source = builder.segments
    ms = {
        s: {"p50": 1e3 * percentile(v, 50), "p95": 1e3 * percentile(v, 95), "mean": 1e3 * statistics.fmean(v)}
        for s, v in steps.items()
    }
    result = {
        "benchmark": "canvas",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1m": {"before": load_before[0], "after": load_after[0]},
        "bank": {
            "path": str(args.bank),
            "version": bank.version,
            "segments": bank.num_segments,
            "images": bank.num_images,
        },
        "resolution": list(bank.resolution),
        "layouts": len(layouts),
        "repeats": args.repeats,
        "options": {"k": args.k, "mode": args.mode, "cache_images": args.cache_images, "seed": args.seed},
        "transform": args.transform,
        "exact_transform": args.exact_transform,
        "ordering": args.ordering,
        "transform_fallbacks": None if aligner is None else {"calls": aligner.calls, "fallbacks": aligner.fallbacks},
        "faiss_warm_up_s": warm,
        "wall_ms": ms,
        "cpu_ms": {"p50": 1e3 * percentile(cpu, 50), "p95": 1e3 * percentile(cpu, 95)},
        "within_steps_ms": {  # the aligner's share of read_align (the rest is reading) and the orderer's CPU
            name: {"p50": 1e3 * percentile(v, 50), "p95": 1e3 * percentile(v, 95)} for name, v in own.items()
        },
        "cache": {"hits": source.hits, "misses": source.misses},  # type: ignore[attr-defined]
        "canvas": {
            "segments_per_layout": statistics.fmean(segments),
            "missing_fraction": statistics.fmean(missing),
            "white_fraction": statistics.fmean(white),
            "black_fraction": statistics.fmean(black),
        },
        "target": {"total_p50_ms": 300, "met": ms["total"]["p50"] <= 300},
    }
    write_json(args.out, result)
    print("| step | p50 ms | p95 ms |\n|---|---:|---:|")
    for s in STEPS:
        print(f"| {s} | {ms[s]['p50']:.1f} | {ms[s]['p95']:.1f} |")
    within = result["within_steps_ms"]
    print(
        f"aligner p50 {within['align_wall']['p50']:.1f} ms wall, {within['align_cpu']['p50']:.1f} ms CPU; "
        f"orderer p50 {within['order_cpu']['p50']:.1f} ms CPU"
    )
    print(f"CPU p50 {result['cpu_ms']['p50']:.1f} ms; cache {source.hits} hits / {source.misses} misses")  # type: ignore[attr-defined]
    print(f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
