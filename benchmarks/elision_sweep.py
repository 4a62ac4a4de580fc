"""Test-time boundary elision, measured: which band keeps the most real pixels without hurting the photo.

    .venv/bin/python benchmarks/elision_sweep.py --bank .sims/banks/camvid-val --memory-bank .sims/banks/camvid-train \
        --weights weights/synthesis --base .sims/reference/synthesis-step10000

For every band in ``--bands`` (fractions of the frame height; the paper's is 0.05) and the rate
``--rate`` (share of the inside band elided, paper 0.8), the CamVid val layouts are synthesized
through the product's pipeline (``sims eval``'s :class:`PipelineImages`, k=1, seed 0) and scored
with ``sims eval``'s metrics: segmentation mIoU, fine-detail ratio, full-resolution spectrum
distance and KID on the evaluation segmenter's features. With ``--base`` (a model whose output
the paste floor uses, e.g. the previous shipped network), a ``paste`` row pastes each canvas's
kept pixels over that model's output, and the base model's own row is scored too.
``--seam-feather`` also feathers the seams between pasted segments. The share of
the frame whose canvas pixels are kept is recorded per band. Writes
``benchmarks/results/elision_sweep.json``.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import write_json  # benchmarks/common.py

from memory_bank import open_bank
from synthesis.canvas.elision import ElisionConfig
from synthesis.evaluation.image_sets import EvalItem, ImageSet, PastedImages, PipelineImages, items_from_bank
from synthesis.evaluation.scoring import evaluate_image_sets
from synthesis.networks.segmenter import SegmentationNet

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", type=Path, required=True, help="Bank of the val photos and layouts.")
    p.add_argument("--memory-bank", type=Path, required=True, help="Bank the canvases are built from.")
    p.add_argument("--weights", type=Path, default=REPO / "weights/synthesis")
    p.add_argument("--base", type=Path, default=None, help="Model the paste row pastes over (optional).")
    p.add_argument("--segmenter", type=Path, default=REPO / "weights/segmenter")
    p.add_argument("--bands", default="0.05,0.035,0.02,0", help="Comma-separated bands.")
    p.add_argument("--rate", type=float, default=0.8)
    p.add_argument("--seam-feather", action="store_true", help="Also feather seams between pasted segments.")
    p.add_argument("--feather", type=int, default=None, help="Feather radius of the blend (default: the product's).")
    p.add_argument("--limit", type=int, default=None, help="Only the first N layouts.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "elision_sweep.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    val, memory = open_bank(args.bank), open_bank(args.memory_bank)
    items = items_from_bank(val, args.limit)
    segmenter = SegmentationNet.from_pretrained(args.segmenter)
    rows = []
    for band in [float(b) for b in args.bands.split(",") if b.strip()]:
        start = time.perf_counter()
        elision = ElisionConfig(band=band, white_fraction=args.rate)
        sims = PipelineImages("SIMS", args.weights, memory, elision=elision)
        sims.generator.seam_feather = args.seam_feather
        if args.feather is not None:
            sims.generator.feather_radius = args.feather
        sets: list[ImageSet] = [sims]
        if args.base is not None:
            base = PipelineImages("base", args.base, memory, elision=elision)
            sets += [base, PastedImages("paste", sims, base)]
        kept: list[float] = []

        def count_kept(item: EvalItem, outputs: dict, kept: list[float] = kept) -> None:
            canvas = outputs["SIMS"].canvas
            kept.append(float((canvas.provenance >= 0).mean()))

        report = evaluate_image_sets(items, sets, segmenter, val.classes, progress=True, on_item=count_kept)
        row = {"band": band, "rate": args.rate, "kept_fraction": float(np.mean(kept)), "seconds": 0.0, "sets": {}}
        for r in report.results:
            row["sets"][r.name] = {
                "miou": r.scores.miou,
                "pixel_accuracy": r.scores.pixel_accuracy,
                "fine_detail_ratio": r.fine_detail_ratio,
                "spectrum_distance": r.spectrum_distance,
                "kid_x1000": None if r.kid is None else 1e3 * r.kid,
                "kid_se_x1000": None if r.kid_se is None else 1e3 * r.kid_se,
                "l1": r.l1,
            }
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        s = row["sets"]["SIMS"]
        print(
            f"band {band:.3f}: kept {row['kept_fraction']:.3f}  SIMS mIoU {s['miou']:.4f}"
            f"  fine {s['fine_detail_ratio']:.3f}"
            f"  spectrum {s['spectrum_distance']:.3f}  KID {s['kid_x1000']:.2f}  ({row['seconds']:.0f} s)",
            flush=True,
        )
    result = {
        "benchmark": "elision_sweep",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()},
        "weights": str(args.weights),
        "seam_feather": args.seam_feather,
        "feather_radius": args.feather,
        "base": None if args.base is None else str(args.base),
        "val_bank": val.version,
        "memory_bank": memory.version,
        "layouts": len(items),
        "rows": rows,
    }
    write_json(args.out, result, announce=True)


if __name__ == "__main__":
    main()
