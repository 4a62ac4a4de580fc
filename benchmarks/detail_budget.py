"""Where fine detail goes (issue 28): the bank, the retrieved pixels, the network and each seam-blend stage.

    .venv/bin/python benchmarks/detail_budget.py --bank .sims/banks/camvid-0006R0 \\
        --memory-bank .sims/banks/camvid-trainval-no0006R0 --weights weights/synthesis-heldout

On the held-out drive's layouts (``--bank``, none of its photos in ``--memory-bank``) it runs the
product pipeline as ``sims eval`` does (``k=1``, seed 0) and measures, against the real photos:

- **the bank's own sharpness**, per drive: the mean top-octave energy per pixel (the high-pass of
  :mod:`synthesis.evaluation.seams`, the band hole detail is measured in) and the fine-detail
  fraction (:func:`~synthesis.evaluation.spectrum.high_frequency_fraction`) of every photo;
- for each **image variant** (the real photos with the retrieved pixels pasted in, the network's
  image before the seam blend, the seam blend one stage at a time, and the full blend with its
  texture stage allowed ``--gains`` times the kept pixels' detail energy): the fine-detail ratio,
  the top-octave energy at the kept pixels over the photo's there, the seam score and the hole
  detail (as in the ``sims eval`` report), and KID against the real photos with the evaluation
  segmenter's features (``--segmenter``, as ``sims eval`` computes it);
- where the real photos' detail in the holes is: the share of their top-octave energy within
  ``--edge`` pixels of a layout-class boundary.

Writes ``benchmarks/results/detail_budget.json`` and prints one line per variant.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from common import write_json  # benchmarks/common.py
from tqdm import tqdm

from memory_bank.reader import open_bank
from memory_bank.sequences import bank_sequences
from synthesis.canvas.seams import DRAWN, SeamBlend, blend_seams, seam_pairs
from synthesis.evaluation.image_sets import PipelineImages, items_from_bank
from synthesis.evaluation.kid import kid_with_error, segmenter_features, stack_features
from synthesis.evaluation.seams import CanvasRegions, SeamTally, high_pass
from synthesis.evaluation.spectrum import high_frequency_fraction, high_frequency_ratio
from synthesis.networks.segmenter import SegmentationNet
from synthesis.pipeline import SEAM_BLEND

REPO = Path(__file__).resolve().parents[1]

#: The seam blend's stages one at a time, then together (the product's default is the last).
STAGES = {
    "network, no seam blend": None,
    "stage 1 only (photo against photo)": SeamBlend(drawn=False, texture=False),
    "stage 2 only (drawn against photo)": SeamBlend(photos=False, texture=False),
    "stage 3 only (texture)": SeamBlend(photos=False, drawn=False),
    f"seam blend, texture gain {SEAM_BLEND.texture_gain:g} (product)": SEAM_BLEND,
}


def bank_sharpness(path: str) -> dict[str, dict[str, float]]:
    """Per drive of a bank: photos, mean top-octave energy per pixel (x 1e4) and mean fine-detail fraction."""
    bank = open_bank(path)
    drives = bank_sequences(bank.images.column("dataset").to_pylist(), bank.images.column("source_file").to_pylist())
    energy: dict[str, list[float]] = defaultdict(list)
    fraction: dict[str, list[float]] = defaultdict(list)
    for i in tqdm(range(bank.num_images), desc=f"sharpness {Path(path).name}", unit="img", leave=False):
        photo = np.asarray(bank.photos[i])
        energy[drives[i]].append(float((high_pass(photo) ** 2).mean()))
        fraction[drives[i]].append(high_frequency_fraction(photo))
    return {
        d: {"photos": len(energy[d]), "top_octave_energy_e4": 1e4 * float(np.mean(energy[d])),
            "fine_detail_fraction": float(np.nanmean(fraction[d]))}
        for d in sorted(energy)
    }  # fmt: skip


class Variant:
    """Running sums of one image variant against the real photos."""

    def __init__(self, segmenter: SegmentationNet) -> None:
        self.segmenter = segmenter
        self.features: list[np.ndarray] = []
        self.tally = SeamTally()
        self.fractions: list[float] = []
        self.kept_energy = 0.0

    def add(self, image: np.ndarray, sample: dict[str, np.ndarray]) -> None:
        self.tally.add(image, sample["photo"], sample["regions"])
        self.fractions.append(high_frequency_fraction(image))
        self.features.append(segmenter_features(self.segmenter, image))
        self.kept_energy += float((high_pass(image)[sample["kept"]].astype(np.float64) ** 2).sum())

    def row(self, real_fractions: list[float], real_kept_energy: float, real_features: np.ndarray) -> dict[str, float]:
        kid, kid_se = kid_with_error(stack_features(self.features), real_features)
        return {
            "kid_x1000": 1e3 * kid,
            "kid_se_x1000": 1e3 * kid_se,
            "fine_detail": high_frequency_ratio(self.fractions, real_fractions),
            "kept_top_octave": self.kept_energy / real_kept_energy,
            "seam_score": self.tally.seam_score,
            "hole_detail": self.tally.hole_detail,
        }


def edge_band(layout: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels within ``width`` pixels of another labelled class."""
    band = np.zeros(layout.shape, bool)
    for c in np.unique(layout):
        inside = (layout == c).astype(np.uint8)
        band |= (inside > 0) & (cv2.distanceTransform(inside, cv2.DIST_L2, 3) <= width)
    return band


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bank", default=".sims/banks/camvid-0006R0", help="the held-out layouts and photos")
    ap.add_argument("--memory-bank", default=".sims/banks/camvid-trainval-no0006R0", help="where canvases come from")
    ap.add_argument("--weights", default="weights/synthesis-heldout")
    ap.add_argument("--segmenter", default="weights/segmenter", help="the evaluation segmenter (KID features)")
    ap.add_argument("--limit", type=int, default=None, help="first N layouts (default all)")
    ap.add_argument("--gains", default="2,4", help="texture gains to try beside the product's")
    ap.add_argument("--edge", type=int, default=3, help="pixels from a class boundary that count as an edge")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/detail_budget.json")
    args = ap.parse_args()

    sharpness = {"memory_bank": bank_sharpness(args.memory_bank), "held_out": bank_sharpness(args.bank)}
    items = items_from_bank(open_bank(args.bank), limit=args.limit)
    pipeline = PipelineImages("SIMS", args.weights, open_bank(args.memory_bank))

    blends: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
        "retrieved pixels pasted into the real photo": lambda s: np.where(s["kept"][..., None], s["canvas"], s["photo"])
    }
    for name, settings in STAGES.items():
        blends[name] = (lambda s: s["before"]) if settings is None else _blend(settings)
    for gain in (float(g) for g in args.gains.split(",") if g):
        blends[f"seam blend, texture gain {gain:g}"] = _blend(replace(SEAM_BLEND, texture_gain=gain))

    segmenter = SegmentationNet.from_pretrained(args.segmenter)
    variants = {name: Variant(segmenter) for name in blends}
    real_fractions: list[float] = []
    real_features: list[np.ndarray] = []
    real_kept = real_holes = real_holes_at_edges = 0.0
    hole_pixels = hole_pixels_at_edges = 0
    for item in tqdm(items, desc="layouts", unit="layout"):
        out = pipeline.output_for(item)
        canvas = out.canvas
        assert canvas is not None and out.before_seam_blend is not None
        sources = canvas.sources
        sample = {
            "photo": item.photo, "layout": item.layout, "sources": sources, "kept": canvas.kept,
            "canvas": canvas.canvas, "before": out.before_seam_blend,
            "regions": CanvasRegions(seam_pairs(item.layout, sources), sources == DRAWN),
        }  # fmt: skip
        real = high_pass(item.photo).astype(np.float64) ** 2
        holes, edges = sources == DRAWN, edge_band(item.layout, args.edge)
        real_fractions.append(high_frequency_fraction(item.photo))
        real_features.append(segmenter_features(segmenter, item.photo))
        real_kept += float(real[canvas.kept].sum())
        real_holes += float(real[holes].sum())
        real_holes_at_edges += float(real[holes & edges].sum())
        hole_pixels += int(holes.sum())
        hole_pixels_at_edges += int((holes & edges).sum())
        for name, make in blends.items():
            variants[name].add(make(sample), sample)

    rows = {name: v.row(real_fractions, real_kept, stack_features(real_features)) for name, v in variants.items()}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/detail_budget.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "layouts": len(items),
        "bank_sharpness": sharpness,
        "holes": {
            "edge_pixels": args.edge,
            "share_of_hole_pixels_at_edges": hole_pixels_at_edges / max(hole_pixels, 1),
            "share_of_real_hole_energy_at_edges": real_holes_at_edges / max(real_holes, 1e-12),
        },
        "variants": rows,
    }
    write_json(args.out, result)
    for part, drives in sharpness.items():
        for drive, s in drives.items():
            energy, fraction, n = s["top_octave_energy_e4"], s["fine_detail_fraction"], s["photos"]
            print(f"{part:12s} {drive}: {n:3d} photos, top octave {energy:.1f}e-4/px, fraction {fraction:.4f}")
    print(f"holes: {result['holes']}")
    for name, r in rows.items():
        print(f"{name:45s} fine {r['fine_detail']:.3f}  kept top-octave {r['kept_top_octave']:.3f}"
              f"  seam {r['seam_score']:.2f}  hole {r['hole_detail']:.3f}  KID {r['kid_x1000']:.1f}")  # fmt: skip
    print(f"wrote {args.out}")


def _blend(settings: SeamBlend) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda s: blend_seams(s["before"], s["layout"], s["sources"], settings)


if __name__ == "__main__":
    main()
