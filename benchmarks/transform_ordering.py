"""Benchmark of the transformation network T and the ordering network on CamVid val.

T: every component of every val layout retrieves its top-1 segment from the train bank (fast mode);
the segment's in-frame mask is compared with the component's mask (IoU) as retrieved (identity), after
T, and after T with the identity fallback. Ordering: accuracy on the val pairs (adjacent components
of the val layouts, labelled by the layout rule), next to the class-prior baseline.

    .venv/bin/python benchmarks/transform_ordering.py --part transform   # -> benchmarks/results/transform.json
    .venv/bin/python benchmarks/transform_ordering.py --part ordering    # -> benchmarks/results/ordering.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from memory_bank import Bank, open_bank
from retrieval_service.engine import RetrievalEngine
from retrieval_service.query import prepare_query
from retrieval_service.types import RetrievalOptions, Status
from synthesis.networks.transform import TransformAligner

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
log = logging.getLogger("transform_ordering")


def benchmark_transform(train: Bank, val: Bank, weights: Path, limit: int | None) -> dict[str, Any]:
    """Mask IoU with the target before T, after T, and after T with the fallback, over val retrievals."""
    engine = RetrievalEngine.from_bank(train)
    aligner = TransformAligner.from_pretrained(weights, fallback=True)
    photos = np.asarray(train.photos[:])
    components = np.asarray(train.components[:])
    image_id, local = train.column("image_id"), train.column("local_index")
    names = train.classes.names
    rows: list[tuple[int, int, float, float, bool]] = []  # class, area, identity, T, fell back
    t_align = 0.0
    n_images = val.num_images if limit is None else min(limit, val.num_images)
    for i in tqdm(range(n_images), desc="val layouts"):
        layout = np.asarray(val.labels[i])
        query = prepare_query(layout, len(names), train.config, train.resolution)
        result = engine.retrieve_query(query, RetrievalOptions(k=1, mode="fast"))
        for comp in result.components:
            if comp.status != Status.OK:
                continue
            sid = comp.chosen.segment_id
            mask = components[image_id[sid]] == local[sid] + 1
            pixels = np.where(mask[..., None], photos[image_id[sid]], 0).astype(np.uint8)
            target = query.segments.mask(comp.component_id)
            start = time.perf_counter()
            aligner(layout, target, pixels, mask)
            t_align += time.perf_counter() - start
            a = aligner.last
            rows.append((comp.class_id, comp.area, a.iou_identity, a.iou_transformed, a.fell_back))
    cls = np.array([r[0] for r in rows])
    area = np.array([r[1] for r in rows], np.float64)
    before = np.array([r[2] for r in rows])
    raw = np.array([r[3] for r in rows])
    fell = np.array([r[4] for r in rows])
    final = np.where(fell, before, raw)

    def summary(sel: np.ndarray) -> dict[str, Any]:
        return {
            "components": int(sel.sum()),
            "iou_identity": round(float(before[sel].mean()), 4) if sel.any() else None,
            "iou_t": round(float(raw[sel].mean()), 4) if sel.any() else None,
            "iou_t_fallback": round(float(final[sel].mean()), 4) if sel.any() else None,
            "fallbacks": int(fell[sel].sum()),
        }

    everything = np.ones(len(rows), bool)
    return {
        "what": "mask IoU of the top-1 retrieved train segment with its val target component, before/after T",
        "weights": str(weights.relative_to(REPO) if weights.is_relative_to(REPO) else weights),
        "val_images": n_images,
        "retrieval": {"k": 1, "mode": "fast"},
        **summary(everything),
        "fallback_rate": round(float(fell.mean()), 4),
        "t_improves": int((raw > before).sum()),
        "t_unchanged": int((raw == before).sum()),
        "t_worsens": int((raw < before).sum()),
        "area_weighted": {
            "iou_identity": round(float((before * area).sum() / area.sum()), 4),
            "iou_t": round(float((raw * area).sum() / area.sum()), 4),
            "iou_t_fallback": round(float((final * area).sum() / area.sum()), 4),
        },
        "per_class": {names[c]: summary(cls == c) for c in range(len(names)) if (cls == c).any()},
        "align_ms_per_segment": round(1000 * t_align / max(len(rows), 1), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["transform", "ordering", "both"], default="both")
    p.add_argument("--train-bank", type=Path, default=REPO / ".sims" / "banks" / "camvid-train")
    p.add_argument("--val-bank", type=Path, default=REPO / ".sims" / "banks" / "camvid-val")
    p.add_argument("--transform", type=Path, default=REPO / "weights" / "transform")
    p.add_argument("--ordering", type=Path, default=REPO / "weights" / "ordering")
    p.add_argument("--limit", type=int, default=None, help="Only the first N val layouts (quick look).")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    train, val = open_bank(args.train_bank), open_bank(args.val_bank)
    machine = {"machine": platform.machine(), "cpus": torch.get_num_threads(), "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part in ("transform", "both"):
        res = {**benchmark_transform(train, val, args.transform, args.limit), "env": machine}
        (args.out / "transform.json").write_text(json.dumps(res, indent=2) + "\n")
        log.info("transform: %s", {k: v for k, v in res.items() if k != "per_class"})
    if args.part in ("ordering", "both"):
        from synthesis.training.ordering import benchmark_ordering

        res = {**benchmark_ordering(train, val, args.ordering, limit=args.limit), "env": machine}
        res["weights"] = str(args.ordering.relative_to(REPO) if args.ordering.is_relative_to(REPO) else args.ordering)
        (args.out / "ordering.json").write_text(json.dumps(res, indent=2) + "\n")
        log.info("ordering: %s", res)


if __name__ == "__main__":
    main()
