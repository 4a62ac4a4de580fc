"""Benchmark of the layout refiner on CamVid val: coarse input vs fine, and refined output vs fine.

Every val label map is coarsened with the run's coarsening config (image ``i`` with seed ``seed + i``)
and refined. Scores over the 11 classes against the fine map, pixels unlabelled in the fine map left
out; an unlabelled (255) pixel of a coarse layout counts as wrong for pixel accuracy and as a miss of
the fine class in its IoU (see ``synthesis.training.layout_refiner.layout_confusion``). Refined layouts are
scored at three settings of ``keep_threshold``: the default, 0 (fill the gaps only) and 2 (the
network everywhere).

``--tune`` picks ``keep_threshold`` on coarsened *train* layouts (other seeds than training used),
so that the val numbers stay clean.

    .venv/bin/python benchmarks/layout_refiner.py --val-bank .sims/banks/camvid-val --figure docs/images/refine-val.png
    .venv/bin/python benchmarks/layout_refiner.py --tune --train-bank .sims/banks/camvid-train   # threshold study only
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from common import write_json  # benchmarks/common.py
from PIL import Image

from memory_bank import ClassTable, open_bank
from synthesis.coarsen import CoarsenConfig, coarsen_layout
from synthesis.networks.layout_refiner import DEFAULT_KEEP_THRESHOLD, LayoutRefiner, refine_layout
from synthesis.training.layout_refiner import evaluate_layout_refiner

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
log = logging.getLogger("refine")

TUNE_THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 2.0)
#: Seeds for tuning on train layouts, far from anything ``make_batch`` would draw for a given step.
TUNE_SEED = 10_000_000


def named(scores: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Scores with the per-class IoU keyed by class name."""
    return {**scores, "class_iou": dict(zip(names, scores["class_iou"], strict=True))}


def tune(model: LayoutRefiner, bank_path: Path, coarsen: CoarsenConfig, limit: int) -> dict[str, Any]:
    """mIoU and pixel accuracy of each keep threshold on coarsened train layouts."""
    bank = open_bank(bank_path)
    n = min(limit, bank.num_images)
    idx = np.linspace(0, bank.num_images - 1, n).round().astype(int)
    fines = [np.asarray(bank.labels[int(i)]) for i in idx]
    s = evaluate_layout_refiner(model, fines, coarsen, seed=TUNE_SEED, keep_thresholds=TUNE_THRESHOLDS, progress=True)
    table = {str(t): {"miou": v["miou"], "pixel_accuracy": v["pixel_accuracy"]} for t, v in s["refined"].items()}
    best = max(s["refined"], key=lambda t: s["refined"][t]["miou"])
    return {
        "layouts": n,
        "bank": str(bank_path),
        "coarse": {"miou": s["coarse"]["miou"], "pixel_accuracy": s["coarse"]["pixel_accuracy"]},
        "by_threshold": table,
        "best_miou_threshold": best,
    }


def figure(
    model: LayoutRefiner,
    fines: list[np.ndarray],
    coarsen: CoarsenConfig,
    ids: list[int],
    seed: int,
    classes: ClassTable,
) -> np.ndarray:
    """Rows of fine | coarse | refined for the val images ``ids`` (half size, unlabelled black)."""
    palette = classes.palette()
    rows = []
    for i in ids:
        fine = fines[i]
        coarse = coarsen_layout(fine, coarsen, seed + i)
        refined = refine_layout(model, coarse)
        tiles = [palette[m][::2, ::2] for m in (fine, coarse, refined)]
        gap = np.full((tiles[0].shape[0], 3, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    width = rows[0].shape[1]
    header = np.full((20, width, 3), 255, np.uint8)
    tile_w = (width - 6) // 3
    for k, name in enumerate(("fine (CamVid val)", "coarse input", "refined")):
        cv2.putText(header, name, (k * (tile_w + 3) + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    sep = np.full((3, width, 3), 255, np.uint8)
    parts = [header]
    for r in rows:
        parts += [r, sep]
    return np.concatenate(parts[:-1], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "layout-refiner")
    parser.add_argument("--val-bank", type=Path, default=REPO / ".sims" / "banks" / "camvid-val")
    parser.add_argument("--train-bank", type=Path, default=REPO / ".sims" / "banks" / "camvid-train")
    parser.add_argument("--run-config", type=Path, default=REPO / "configs" / "layout-refiner" / "camvid.json")
    parser.add_argument("--seed", type=int, default=0, help="Val image i is coarsened with seed + i.")
    parser.add_argument("--tune", action="store_true", help="Only the keep-threshold study on train layouts.")
    parser.add_argument("--tune-layouts", type=int, default=60)
    parser.add_argument("--figure", type=Path, default=None, help="Write a fine | coarse | refined PNG here.")
    parser.add_argument("--figure-images", default="5,40,75", help="Val image ids of the figure's rows.")
    parser.add_argument("--out", type=Path, default=RESULTS / "refine.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)

    from synthesis.training.layout_refiner import LayoutRefinerRunConfig

    coarsen = LayoutRefinerRunConfig.load(args.run_config).coarsen
    model = LayoutRefiner.from_pretrained(args.weights)
    meta_path = args.weights / "sims.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    if args.tune:
        result = tune(model, args.train_bank, coarsen, args.tune_layouts)
        print(json.dumps(result, indent=2))
        if args.out.is_file():
            data = json.loads(args.out.read_text())
            data["keep_threshold_tuning"] = result
            write_json(args.out, data)
        return

    val = open_bank(args.val_bank)
    names = val.classes.names
    fines = [np.asarray(val.labels[i]) for i in range(val.num_images)]
    thresholds = (DEFAULT_KEEP_THRESHOLD, 0.0, 2.0)
    start = time.perf_counter()
    s = evaluate_layout_refiner(model, fines, coarsen, seed=args.seed, keep_thresholds=thresholds, progress=True)
    seconds = time.perf_counter() - start
    # Time refine_layout alone at the working resolution.
    coarse = coarsen_layout(fines[0], coarsen, args.seed)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        refine_layout(model, coarse)
        times.append(time.perf_counter() - t)

    refined = s["refined"]
    result: dict[str, Any] = {
        "what": "CamVid val label maps coarsened (seed + i), scored against the fine maps over 11 classes",
        "counting": (
            "pixels unlabelled (255) in the fine map are left out; a 255 pixel of a coarse layout counts as wrong "
            "for pixel accuracy and as a miss of the fine class in its IoU (never a false positive)"
        ),
        "images": len(fines),
        "resolution": list(fines[0].shape),
        "weights": str(args.weights.relative_to(REPO) if args.weights.is_relative_to(REPO) else args.weights),
        "weights_metadata": meta,
        "network_resolution": list(model.config.resolution),
        "parameters": sum(p.numel() for p in model.parameters()),
        "coarsen": coarsen.to_dict(),
        "coverage": s["coverage"],
        "coarse_labelled_accuracy": s["coarse_labelled_accuracy"],
        "coarse": named(s["coarse"], names),
        "refined": {
            "default": {"keep_threshold": DEFAULT_KEEP_THRESHOLD, **named(refined[DEFAULT_KEEP_THRESHOLD], names)},
            "fill_only": {"keep_threshold": 0.0, **named(refined[0.0], names)},
            "network_only": {"keep_threshold": 2.0, **named(refined[2.0], names)},
        },
        "refine_layout_ms_median": 1000 * float(np.median(times)),
        "seconds": seconds,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    if args.out.is_file():
        old = json.loads(args.out.read_text())
        if "keep_threshold_tuning" in old:
            result["keep_threshold_tuning"] = old["keep_threshold_tuning"]
    write_json(args.out, result)
    c, r = result["coarse"], result["refined"]["default"]
    log.info("coarse : pixel accuracy %.4f, mIoU %.4f", c["pixel_accuracy"], c["miou"])
    for key, v in result["refined"].items():
        log.info("refined %-12s: pixel accuracy %.4f, mIoU %.4f", key, v["pixel_accuracy"], v["miou"])
    log.info("wrote %s (refined mIoU %+.4f over coarse)", args.out, r["miou"] - c["miou"])
    if args.figure:
        ids = [int(v) for v in args.figure_images.split(",") if v.strip()]
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(figure(model, fines, coarsen, ids, args.seed, val.classes)).save(args.figure, optimize=True)
        log.info("wrote %s", args.figure)


if __name__ == "__main__":
    main()
