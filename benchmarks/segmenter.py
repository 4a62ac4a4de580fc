"""The segmentation probe's reference score: the shipped segmenter on the real val photos.

    .venv/bin/python benchmarks/segmenter.py --bank .sims/banks/camvid-val --weights weights/segmenter

Segments every photo of the bank with the shipped (float16, loaded as float32) weights,
resizes the logits to the bank's resolution and scores them against the label maps: mIoU
over the classes present, pixel accuracy, per-class IoU, and the same for the photos first
shrunk to each size in ``--sizes`` (how much the score drops for images at the synthesis
resolutions). Writes benchmarks/results/segmenter.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import write_json  # benchmarks/common.py

from memory_bank import open_bank
from memory_bank.config import parse_size
from memory_bank.images import resize_photo
from synthesis.training.segmenter import evaluate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, required=True, help="bank of real val photos (e.g. CamVid val)")
    parser.add_argument("--weights", type=Path, default=Path("weights/segmenter"))
    parser.add_argument("--sizes", default="192x256,96x128", help="also score photos shrunk to these sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "segmenter.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from synthesis.networks.segmenter import SegmentationNet

    model = SegmentationNet.from_pretrained(args.weights)
    bank = open_bank(args.bank)
    photos, labels = np.asarray(bank.photos[:]), np.asarray(bank.labels[:])
    names = list(model.config.class_names) or bank.classes.names

    rows = {}
    sizes = [tuple(photos.shape[1:3])] + [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        shrunk = photos if size == photos.shape[1:3] else np.stack([resize_photo(p, size) for p in photos])
        start = time.perf_counter()
        scores = evaluate(model, shrunk, labels, progress=True)
        seconds = time.perf_counter() - start
        rows[f"{size[0]}x{size[1]}"] = {**scores.to_dict(names), "seconds": seconds}

    result = {
        "benchmark": "segmenter",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version()},
        "weights": str(args.weights),
        "config": model.config.to_dict(),
        "bank": str(args.bank),
        "bank_version": bank.version,
        "images": len(photos),
        "label_resolution": list(photos.shape[1:3]),
        "scored_at": "logits resized (bilinear) to the label resolution; 255 ignored; mIoU over classes present",
        "photo_sizes": rows,
    }
    write_json(args.out, result)

    print("| photos at | mIoU | pixel acc. | " + " | ".join(names) + " |")
    print("|---|---:|---:|" + "---:|" * len(names))
    for size, r in rows.items():
        ious = " | ".join("—" if v is None else f"{v:.2f}" for v in r["class_iou"].values())
        print(f"| {size} | {r['miou']:.4f} | {r['pixel_accuracy']:.4f} | {ious} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
