"""Indexing benchmark: build a bank from a whole dataset and report speed and size.

    .venv/bin/python benchmarks/indexing.py --root ../shared/data/camvid --repeats 3

Writes benchmarks/results/indexing.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common import write_json  # benchmarks/common.py

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import SegmentConfig

RESULTS = Path(__file__).parent / "results"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--splits", default="train,val")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "indexing.json")
    args = parser.parse_args()

    reader = create_reader(args.dataset, args.root, args.splits.split(","))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            out = Path(tmp) / f"bank{i}"
            report = build_bank(reader, out, workers=args.workers, progress=False)
            runs.append(report)
            print(f"run {i + 1}: {report.seconds:.2f} s, {report.images_per_second:.1f} img/s")
            if i < args.repeats - 1:
                shutil.rmtree(out)
        best = runs[-1]  # every run builds the same bank; the last one is still on disk
        vdir = best.version_dir
        parts = {
            "photos": du(vdir / "arrays.zarr" / "photos"),
            "labels": du(vdir / "arrays.zarr" / "labels"),
            "components": du(vdir / "arrays.zarr" / "components"),
            "codes": du(vdir / "arrays.zarr" / "codes"),
            "tables": (vdir / "segments.parquet").stat().st_size + (vdir / "images.parquet").stat().st_size,
            "faiss": du(vdir / "faiss"),
        }
    c = best.manifest.counts
    seconds = [r.seconds for r in runs]
    median = statistics.median(seconds)
    result = {
        "benchmark": "indexing",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "dataset": args.dataset,
        "splits": args.splits,
        "images": c.images,
        "resolution": list(best.manifest.resolution),
        "segment_config": SegmentConfig.to_dict(best.manifest.segment_config),
        "workers": args.workers or os.cpu_count(),
        "repeats": args.repeats,
        "wall_seconds": seconds,
        "wall_seconds_median": median,
        "images_per_second_median": c.images / median,
        "segments_kept": c.segments,
        "segments_dropped": c.dropped_segments,
        "dropped_pixels": c.dropped_area,
        "dropped_pixel_share": c.dropped_area / (c.images * best.manifest.resolution[0] * best.manifest.resolution[1]),
        "bytes_on_disk": best.bytes_on_disk,
        "bytes_per_image": best.bytes_on_disk / c.images,
        "bytes_per_segment": best.bytes_on_disk / c.segments,
        "bytes_by_part": parts,
        "target_images_per_second": 50,
    }
    write_json(args.out, result)
    print()
    print("| images | wall time (median) | images/s | segments kept | dropped (< min area) | per image | per segment |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {c.images} | {median:.2f} s | {c.images / median:.1f} | {c.segments} | {c.dropped_segments} "
        f"({100 * result['dropped_pixel_share']:.2f}% of pixels) | {result['bytes_per_image'] / 1e3:.0f} kB "
        f"| {result['bytes_per_segment'] / 1e3:.1f} kB |"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
