"""How well candidate codes rank the exact top-1: the choice of the coarse code, by measurement.

    .venv/bin/python benchmarks/coarse_codes.py --root ../shared/data/camvid --size 1000000

Fast mode re-ranks exactly the ``P`` nearest coarse codes (Hamming) of a class, so its recall@1
is about the share of components whose exact top-1 (any segment tied with it) is among those
``P``. For each candidate code this measures that share on a jittered bank
(benchmarks/jitter.py) at pool sizes 32 ... 512, for an even sample of CamVid val layouts, with
an exact scan of the whole class (no IVF). Codes compared: pyramids of the fine mask OR-pooled to
some grids (:func:`memory_bank.codes.pool_cells`, as the bank builds them), the fine mask itself
(a ceiling: too long for FAISS), and pyramids with a one-hot context code added (each class's
context cells OR-pooled to a grid), weighted against the mask's distance.

Writes benchmarks/results/coarse_codes.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json  # benchmarks/common.py
from jitter import jittered_bank
from retrieval import train_bank

from indexers.readers import create_reader
from memory_bank.codes import fine_bits, pack_bits, pool_cells, unpack_bits
from retrieval_service.engine import RetrievalEngine
from retrieval_service.query import prepare_query
from retrieval_service.types import RetrievalOptions, Status

RESULTS = Path(__file__).parent / "results"
POOLS = (32, 64, 128, 256, 512)
CHUNK = 50_000
#: Code name -> its terms: (part, weight); the distance is the weighted sum of the parts' Hamming.
CODES: dict[str, list[tuple[str, float]]] = {
    "15x20+9x12 (until 2026-12-03)": [("mask 15x20", 1.0), ("mask 9x12", 1.0)],
    "15x20": [("mask 15x20", 1.0)],
    "23x30": [("mask 23x30", 1.0)],
    "23x30+15x20+9x12 (default)": [("mask 23x30", 1.0), ("mask 15x20", 1.0), ("mask 9x12", 1.0)],
    "fine mask 45x60 (ceiling)": [("mask 45x60", 1.0)],
    "15x20+9x12 + context 5x6": [("mask 15x20", 1.0), ("mask 9x12", 1.0), ("context 5x6", 1.0)],
    "15x20+9x12 + context 5x6 x0.5": [("mask 15x20", 1.0), ("mask 9x12", 1.0), ("context 5x6", 0.5)],
}


def parse_part(part: str) -> tuple[str, tuple[int, int]]:
    kind, grid = part.split()
    h, w = grid.split("x")
    return kind, (int(h), int(w))


def part_codes(kind: str, grid: tuple[int, int], mask: np.ndarray, context: np.ndarray, codes) -> np.ndarray:
    """Packed codes of one part for rows of packed fine masks and dense contexts."""
    cfg = codes.config
    if kind == "mask":
        cells = unpack_bits(mask, fine_bits(cfg))
        return pack_bits(cells if grid == cfg.fine_grid else pool_cells(cells, cfg.fine_grid, grid))
    one_hot = [pool_cells(context == c, cfg.fine_grid, grid) for c in range(codes.num_classes)]
    return pack_bits(np.concatenate(one_hot, axis=1))


def hamming(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(rows, q[None, :])).sum(axis=1, dtype=np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CamVid root (SegNet layout)")
    parser.add_argument("--size", type=int, default=1_000_000, help="jittered bank size in segments")
    parser.add_argument("--layouts", type=int, default=40, help="val layouts, an even sample")
    parser.add_argument("--out", type=Path, default=RESULTS / "coarse_codes.json")
    args = parser.parse_args()

    bank_path = train_bank(args.root)
    codes = jittered_bank(bank_path, args.size)
    parts = sorted({p for terms in CODES.values() for p, _ in terms})
    t0 = time.perf_counter()
    bank_parts: dict[str, np.ndarray] = {}
    for part in tqdm(parts, desc="coding the bank", unit="code"):
        kind, grid = parse_part(part)
        chunks = [slice(s, s + CHUNK) for s in range(0, len(codes), CHUNK)]
        bank_parts[part] = np.concatenate(
            [part_codes(kind, grid, np.asarray(codes.mask[c]), np.asarray(codes.context[c]), codes) for c in chunks]
        )
    coding_seconds = time.perf_counter() - t0
    class_id = np.asarray(codes.class_id)
    rows_of = {c: np.flatnonzero(class_id == c) for c in range(codes.num_classes)}
    engine = RetrievalEngine(codes.segment_index())
    val = create_reader("camvid", args.root, ["val"])
    refs = val.refs[:: max(1, len(val.refs) // args.layouts)][: args.layouts]
    ranks: dict[str, list[int]] = {name: [] for name in CODES}
    for ref in tqdm(refs, desc="ranking", unit="layout"):
        label = val.load(ref).label
        exact = engine.retrieve(label, RetrievalOptions(k=5, mode="exact"))
        query = prepare_query(label, codes.num_classes, codes.config, codes.resolution)
        q_parts = {}
        for part in parts:
            kind, grid = parse_part(part)
            q_parts[part] = part_codes(kind, grid, query.codes.mask, query.codes.context, codes)
        for comp in exact.components:
            if comp.status is not Status.OK:
                continue
            rows = rows_of[comp.class_id]
            top = comp.matches[0].score
            best = np.searchsorted(rows, [m.segment_id for m in comp.matches if abs(m.score - top) <= 1e-6])
            dist = {p: hamming(q_parts[p][comp.component_id], bank_parts[p][rows]) for p in parts}
            for name, terms in CODES.items():
                d = sum(w * dist[p] for p, w in terms)
                ranks[name].append(int(min((d < d[b]).sum() for b in best)))
    share = {name: {str(p): float(np.mean(np.asarray(r) < p)) for p in POOLS} for name, r in ranks.items()}

    def part_bits(part: str) -> int:
        kind, (h, w) = parse_part(part)
        return h * w * (1 if kind == "mask" else codes.num_classes)

    bits = {name: sum(part_bits(p) for p, _ in terms) for name, terms in CODES.items()}
    out = {
        "benchmark": "coarse_codes",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "segments": len(codes),
        "layouts": len(refs),
        "components": len(next(iter(ranks.values()))),
        "pools": list(POOLS),
        "top1_within_pool": share,
        "bits": bits,
        "bank_coding_seconds": coding_seconds,
    }
    write_json(args.out, out)
    print("| code | bits | " + " | ".join(f"P={p}" for p in POOLS) + " |")
    print("|---|---:|" + "---:|" * len(POOLS))
    for name, s in share.items():
        print(f"| {name} | {bits[name]} | " + " | ".join(f"{s[str(p)]:.4f}" for p in POOLS) + " |")


if __name__ == "__main__":
    main()
