"""Grid fidelity: how often the top-1 at the fine grid is the top-1 at full working resolution.

    .venv/bin/python benchmarks/grid_fidelity.py --root ../shared/data/camvid

Every kept component (area >= the bank's ``min_area``) of every CamVid val label map is a
query against the CamVid train bank. For each candidate fine grid the bank is rebuilt with
that grid and the query's top-1 is taken with the exact grid scorer
(:func:`retrieval_service.reference.brute_force_topk`). Independently, every query is scored
against every train segment of its class with the same definition, ``IoU(mask) +
IoU(context)``, on pixels at the working resolution. Segmentation does not depend on the
grid, so the full-resolution scores are computed once and shared by all grids.

Full-resolution scoring, per (query layout, bank image) pair: mask intersections of all
query components with all segments of the bank image come from one ``bincount`` of the
joint component ids; context intersections from a summed-area table of ``label_q ==
label_img`` (both labelled) evaluated on ``cbox_q ∩ cbox_s``; context sizes from summed-area
tables of ``label != 255`` on each box. A naive per-pixel scorer checks it on random pairs.

Writes benchmarks/results/grid_fidelity.json and prints a markdown table. The recommended
grid is the coarsest one (fewest cells) whose top-1 agreement is at least ``--target``.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import write_json  # benchmarks/common.py

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import IGNORE, SegmentConfig, extract_segments, open_bank
from memory_bank.config import Grid, parse_size
from memory_bank.images import resize_label
from memory_bank.segments import segment_context
from retrieval_service.engine import RetrievalEngine
from retrieval_service.iou import iou64
from retrieval_service.query import prepare_query
from retrieval_service.reference import brute_force_topk
from retrieval_service.types import RetrievalOptions, Status

RESULTS = Path(__file__).parent / "results"
AREA_BUCKETS = (64, 256, 1024, 4096, 16384)
SHORTLISTS = (5, 10, 20, 50, 100)  # grid top-k sizes whose hit rate (full-res best inside) is reported


# ----------------------------------------------------------------------------------------------
# Full-resolution scorer


def summed_area(a: np.ndarray) -> np.ndarray:
    """(H + 1, W + 1) int32 summed-area table of a 2-D array, zero first row and column."""
    h, w = a.shape
    s = np.zeros((h + 1, w + 1), np.int32)
    np.cumsum(a, axis=0, dtype=np.int32, out=s[1:, 1:])
    np.cumsum(s[1:, 1:], axis=1, dtype=np.int32, out=s[1:, 1:])
    return s


def box_sums(sat: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Sums over ``[y0, y1) x [x0, x1)`` rectangles (broadcast); empty rectangles give 0."""
    y1 = np.maximum(y1, y0)
    x1 = np.maximum(x1, x0)
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


@dataclass(frozen=True)
class BankImages:
    """What the full-resolution scorer needs of the bank, as plain numpy (inherited by forked workers)."""

    labels: np.ndarray  # (N, H, W) uint8
    components: np.ndarray  # (N, H, W) uint16, local_index + 1
    start: np.ndarray  # (N + 1,) first segment id of each image (segments are image-major)
    class_id: np.ndarray  # (S,)
    area: np.ndarray  # (S,)
    context_box: np.ndarray  # (S, 4)
    context_size: np.ndarray  # (S,) labelled pixels inside the context box
    position: np.ndarray  # (S,) index of the segment among the bank segments of its class
    class_size: np.ndarray  # (C,) bank segments per class


@dataclass(frozen=True)
class QueryLayout:
    """The kept components of one val label map (grid-independent)."""

    label: np.ndarray  # (H, W) uint8
    kept_map: np.ndarray  # (H, W) int32, 1..n for kept component k-1, 0 elsewhere
    kept: np.ndarray  # (n,) indices into the layout's min_area=1 components (prepare_query's order)
    class_id: np.ndarray  # (n,)
    area: np.ndarray  # (n,)
    context_box: np.ndarray  # (n, 4)
    context_size: np.ndarray  # (n,)


def load_bank_images(bank) -> BankImages:
    image_id = bank.column("image_id")
    local = bank.column("local_index")
    n_images = bank.num_images
    start = np.searchsorted(image_id, np.arange(n_images + 1))
    expected = np.arange(len(image_id)) - start[image_id]
    if not (np.all(np.diff(image_id) >= 0) and np.array_equal(local, expected)):
        raise RuntimeError("bank segments are not numbered image-major by local index; the scorer assumes it")
    labels = np.asarray(bank.labels[:])
    components = np.asarray(bank.components[:])
    cbox = bank.column("context_box").astype(np.int64)
    context_size = np.zeros(len(image_id), np.int64)
    for j in range(n_images):
        lo, hi = start[j], start[j + 1]
        if hi > lo:
            sat = summed_area(labels[j] != IGNORE)
            b = cbox[lo:hi]
            context_size[lo:hi] = box_sums(sat, b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    class_id = bank.column("class_id").astype(np.int64)
    num_classes = len(bank.classes)
    position = np.zeros(len(class_id), np.int64)
    for c in range(num_classes):
        ids = np.flatnonzero(class_id == c)
        position[ids] = np.arange(ids.size)
    return BankImages(
        labels=labels,
        components=components,
        start=start,
        class_id=class_id,
        area=bank.column("area").astype(np.int64),
        context_box=cbox,
        context_size=context_size,
        position=position,
        class_size=np.bincount(class_id, minlength=num_classes),
    )


def make_query_layout(label: np.ndarray, num_classes: int, config: SegmentConfig) -> QueryLayout:
    # The same extraction prepare_query does (min_area=1), so indices line up with its codes.
    segs = extract_segments(label, num_classes, replace(config, min_area=1))
    kept = np.flatnonzero(segs.area >= config.min_area)
    remap = np.zeros(len(segs) + 1, np.int32)
    remap[kept + 1] = np.arange(1, kept.size + 1)
    cbox = segs.context_box[kept].astype(np.int64)
    sat = summed_area(label != IGNORE)
    return QueryLayout(
        label=label,
        kept_map=remap[segs.component_map],
        kept=kept,
        class_id=segs.class_id[kept].astype(np.int64),
        area=segs.area[kept].astype(np.int64),
        context_box=cbox,
        context_size=box_sums(sat, cbox[:, 0], cbox[:, 1], cbox[:, 2], cbox[:, 3]),
    )


def full_resolution_scores(bank: BankImages, q: QueryLayout) -> list[np.ndarray]:
    """For each kept query component, its full-resolution score against every bank segment of its class.

    Entry ``i`` of the returned list is indexed like ``bank.segment_ids(class_id[i])``.
    """
    n = q.class_id.size
    out = [np.full(bank.class_size[c], np.nan) for c in q.class_id]
    if n == 0:
        return out
    flat_q = q.kept_map.ravel()
    pix = np.flatnonzero(flat_q)
    qid = flat_q[pix].astype(np.int64)
    labelled = q.label != IGNORE
    qclasses = np.zeros(256, bool)
    qclasses[q.class_id] = True
    qb = q.context_box
    for j in range(bank.labels.shape[0]):
        lo, hi = bank.start[j], bank.start[j + 1]
        ns = hi - lo
        if ns == 0 or not qclasses[bank.class_id[lo:hi]].any():
            continue
        comp = bank.components[j].ravel()[pix].astype(np.int64)
        joint = np.bincount(qid * (ns + 1) + comp, minlength=(n + 1) * (ns + 1)).reshape(n + 1, ns + 1)
        inter = joint[1:, 1:]
        sat = summed_area((q.label == bank.labels[j]) & labelled)
        sb = bank.context_box[lo:hi]
        cinter = box_sums(
            sat,
            np.maximum(qb[:, None, 0], sb[None, :, 0]),
            np.maximum(qb[:, None, 1], sb[None, :, 1]),
            np.minimum(qb[:, None, 2], sb[None, :, 2]),
            np.minimum(qb[:, None, 3], sb[None, :, 3]),
        )
        score = iou64(inter, q.area[:, None], bank.area[None, lo:hi]) + iou64(
            cinter, q.context_size[:, None], bank.context_size[None, lo:hi]
        )
        qi, si = np.nonzero(q.class_id[:, None] == bank.class_id[None, lo:hi])
        for i in np.unique(qi):
            sel = qi == i
            out[i][bank.position[lo + si[sel]]] = score[i, si[sel]]
    return out


def naive_score(q: QueryLayout, i: int, bank: BankImages, sid: int) -> float:
    """The score definition, literally: full-frame masks and contexts, pixel by pixel."""
    j = int(np.searchsorted(bank.start, sid, side="right") - 1)
    mq = q.kept_map == i + 1
    ms = bank.components[j] == sid - bank.start[j] + 1
    cq = segment_context(q.label, q.context_box[i])
    cs = segment_context(bank.labels[j], bank.context_box[sid])
    m = iou64(np.sum(mq & ms), np.sum(mq), np.sum(ms))
    c = iou64(np.sum((cq == cs) & (cq != IGNORE)), np.sum(cq != IGNORE), np.sum(cs != IGNORE))
    return float(m + c)


# Worker state, set before the pool forks so the bank arrays are shared copy-on-write.
_STATE: dict = {}


def _score_layout(index: int) -> tuple[int, list[np.ndarray], float]:
    t = time.process_time()
    scores = full_resolution_scores(_STATE["bank"], _STATE["layouts"][index])
    return index, scores, time.process_time() - t


# ----------------------------------------------------------------------------------------------
# Benchmark


def grid_label(g: Grid) -> str:
    return f"{g[0]}x{g[1]}"


def build(reader, out: Path, grid: Grid, workers: int | None):
    # Coarse (FAISS) grids must not be finer than the fine grid; they do not affect the fine codes.
    config = SegmentConfig(fine_grid=grid)  # coarse grids follow the fine grid by default
    t = time.perf_counter()
    report = build_bank(reader, out, config=config, workers=workers, progress=False)
    return open_bank(report.version_dir), time.perf_counter() - t


def segment_signature(bank) -> dict[str, np.ndarray]:
    return {k: bank.column(k) for k in ("image_id", "local_index", "class_id", "area", "bbox", "context_box")}


def evaluate_grid(bank, layouts: list[QueryLayout], full: list[list[np.ndarray]], target: float) -> dict:
    """Grid ranking of every query with the reference scorer, compared with the full-resolution scores."""
    num_classes = len(bank.classes)
    mask = np.asarray(bank.codes["mask"][:])
    context = bank.context_rows()
    class_rows = [bank.segment_ids(c) for c in range(num_classes)]
    class_codes = [(mask[r], context[r]) for r in class_rows]
    rows = []
    t = time.perf_counter()
    for q, fscores in zip(layouts, full, strict=True):
        query = prepare_query(q.label, num_classes, bank.config, bank.resolution)
        for i, k in enumerate(q.kept):
            c = int(q.class_id[i])
            n = class_rows[c].size
            if n == 0:
                continue
            # k = n ranks the whole class (the cost is the same as k=1: scoring and the sort dominate),
            # so the grid score of the full-res best is at hand for the diagnostics below.
            ids, scores, _, _ = brute_force_topk(
                query.codes.mask[k], query.codes.context[k], *class_codes[c], class_rows[c], n
            )
            empty_context = not (query.codes.context[k] != IGNORE).any()
            rows.append((c, int(q.area[i]), ids, scores, fscores[i], empty_context))
    seconds = time.perf_counter() - t

    agree, ratio, gap, rank, grid_tie, empty, cls, area = ([] for _ in range(8))
    for c, a, ids, scores, fs, empty_context in rows:
        fs_ranked = fs[np.searchsorted(class_rows[c], ids)]  # full-res scores in grid order
        best = fs.max()
        picked = fs_ranked[0]
        agree.append(picked == best)  # exact ties at full resolution count as agreement
        ratio.append(picked / best if best > 0 else 1.0)
        gap.append(best - picked)
        rank.append(int(np.argmax(fs_ranked == best)))  # grid rank of the first full-res best
        # Did the grid score some full-res best exactly as high as its own pick (a grid tie)?
        grid_tie.append(bool(np.any((scores == scores[0]) & (fs_ranked == best))))
        empty.append(empty_context)
        cls.append(c)
        area.append(a)
    agree, ratio, gap, rank, grid_tie, empty = map(np.array, (agree, ratio, gap, rank, grid_tie, empty))
    cls, area = np.array(cls), np.array(area)
    names = bank.classes.names
    per_class = {
        names[c]: {"queries": int((cls == c).sum()), "agreement": float(agree[cls == c].mean())}
        for c in range(num_classes)
        if (cls == c).any()
    }
    edges = [*AREA_BUCKETS, np.inf]
    per_area = {}
    for lo, hi in itertools.pairwise(edges):
        sel = (area >= lo) & (area < hi)
        if sel.any():
            key = f"{lo}-{int(hi) - 1}" if np.isfinite(hi) else f">={lo}"
            per_area[key] = {"queries": int(sel.sum()), "agreement": float(agree[sel].mean())}
    dis = ~agree
    return {
        "queries": len(rows),
        "agreement": float(agree.mean()),
        "score_ratio_mean": float(ratio.mean()),
        "score_ratio_p5": float(np.percentile(ratio, 5)),
        "score_ratio_min": float(ratio.min()),
        "full_res_best_in_grid_topk": {str(k): float(np.mean(rank < k)) for k in SHORTLISTS},
        # Smallest grid shortlist that holds the full-res best for `target` of the queries: the
        # size a full-resolution re-ranking stage would need.
        "shortlist_for_target": int(np.sort(rank)[int(np.ceil(target * rank.size)) - 1] + 1),
        "disagreements": int(dis.sum()),
        "disagreement_gap_median": float(np.median(gap[dis])) if dis.any() else 0.0,
        "disagreements_within_0.01": int((dis & (gap < 0.01)).sum()),
        "disagreements_within_0.05": int((dis & (gap < 0.05)).sum()),
        "disagreements_grid_tie": int((dis & grid_tie).sum()),
        "queries_with_empty_grid_context": int(empty.sum()),
        "agreement_empty_grid_context": float(agree[empty].mean()) if empty.any() else None,
        "per_class": per_class,
        "per_query_area": per_area,
        "grid_seconds": seconds,
        "grid_ms_per_query": 1e3 * seconds / max(len(rows), 1),
        "mask_bytes_per_segment": int(mask.shape[1]),
        "context_bytes_per_segment": int(context.shape[1]),
        "fine_bytes_per_segment": int(mask.shape[1] + context.shape[1]),
    }


def verify_scorer(bank: BankImages, layouts: list[QueryLayout], full: list[list[np.ndarray]], pairs: int) -> None:
    """Assert the fast full-resolution scores equal the naive per-pixel ones on random pairs."""
    rng = np.random.default_rng(0)
    candidates = [(v, i) for v, q in enumerate(layouts) for i in range(q.class_id.size) if full[v][i].size]
    for _ in range(pairs):
        v, i = candidates[rng.integers(len(candidates))]
        q = layouts[v]
        c = q.class_id[i]
        ids = np.flatnonzero(bank.class_id == c)
        # Half of the pairs against the full-res best (overlapping), half at random.
        p = int(np.nanargmax(full[v][i])) if rng.random() < 0.5 else int(rng.integers(ids.size))
        fast, slow = full[v][i][p], naive_score(q, i, bank, int(ids[p]))
        assert fast == slow, f"full-res scorer mismatch: layout {v} comp {i} segment {ids[p]}: {fast} != {slow}"


def evaluate_full_mode(bank, layouts: list[QueryLayout], full: list[list[np.ndarray]]) -> dict:
    """The engine's ``full`` mode (exact on pixels, seeded by the grid) against the full scan."""
    engine = RetrievalEngine.from_bank(bank)
    engine.warm_up()
    engine.pixel_frames()  # load outside the timings
    agree, latency, scored = [], {"full": [], "fast": []}, 0
    for q, fscores in zip(layouts, full, strict=True):
        for mode in ("fast", "full"):
            t = time.perf_counter()
            res = engine.retrieve(q.label, RetrievalOptions(k=1, mode=mode))
            latency[mode].append(time.perf_counter() - t)
        scored += res.scored
        for i, k in enumerate(q.kept):
            comp = res.components[k]
            if comp.status is Status.OK:
                agree.append(comp.matches[0].score == fscores[i].max())
    return {
        "mode": "full",
        "queries": len(agree),
        "agreement": float(np.mean(agree)),
        "latency_ms_per_layout": {
            m: {"p50": 1e3 * float(np.median(v)), "p95": 1e3 * float(np.percentile(v, 95))} for m, v in latency.items()
        },
        "pixel_scored_per_component": scored / max(1, len(agree)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CamVid root (SegNet layout)")
    parser.add_argument("--grids", default="45x60,36x48,30x40,24x32,18x24,60x80,90x120")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--target", type=float, default=0.95, help="required top-1 agreement")
    parser.add_argument("--max-val", type=int, default=None, help="use only the first N val images (smoke tests)")
    parser.add_argument("--verify-pairs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "grid_fidelity.json")
    args = parser.parse_args()
    grids = [parse_size(g) for g in args.grids.split(",")]
    workers = args.workers or os.cpu_count() or 1
    t_start = time.perf_counter()

    train = create_reader("camvid", args.root, ["train"])
    val = create_reader("camvid", args.root, ["val"])
    refs = val.refs[: args.max_val] if args.max_val else val.refs

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="grid_fidelity_") as tmp:
        # Bank of the first grid: its pixels serve the full-resolution scorer for every grid.
        bank, build_seconds = build(train, Path(tmp) / "bank0", grids[0], workers)
        num_classes = len(bank.classes)
        signature = segment_signature(bank)
        bank_images = load_bank_images(bank)
        layouts = [
            make_query_layout(resize_label(val.load(r).label, bank.resolution), num_classes, bank.config) for r in refs
        ]
        n_queries = sum(q.class_id.size for q in layouts)
        print(
            f"bank: {bank.num_images} train images, {bank.num_segments} segments; "
            f"queries: {n_queries} components of {len(layouts)} val images"
        )

        # Full-resolution scores, once.
        _STATE.update(bank=bank_images, layouts=layouts)
        t = time.perf_counter()
        full: list[list[np.ndarray]] = [[] for _ in layouts]
        full_cpu = 0.0
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                for index, scores, cpu in pool.imap_unordered(_score_layout, range(len(layouts))):
                    full[index], full_cpu = scores, full_cpu + cpu
        else:
            for index in range(len(layouts)):
                _, full[index], cpu = _score_layout(index)
                full_cpu += cpu
        full_wall = time.perf_counter() - t
        assert all(not np.isnan(s).any() for f in full for s in f), "some bank segment was never scored"
        verify_scorer(bank_images, layouts, full, args.verify_pairs)
        print(
            f"full resolution: {full_wall:.1f} s wall, {full_cpu:.1f} s CPU "
            f"({1e3 * full_cpu / max(n_queries, 1):.1f} ms CPU per query); "
            f"naive check passed on {args.verify_pairs} pairs"
        )

        full_mode = evaluate_full_mode(bank, layouts, full)
        print(
            f"full mode on the {grid_label(grids[0])} bank: agreement {100 * full_mode['agreement']:.2f}%, "
            f"{full_mode['latency_ms_per_layout']['full']['p50']:.1f} ms p50 per layout"
        )
        for gi, grid in enumerate(grids):
            if gi > 0:
                shutil.rmtree(Path(tmp) / f"bank{gi - 1}", ignore_errors=True)
                bank, build_seconds = build(train, Path(tmp) / f"bank{gi}", grid, workers)
                for k, v in signature.items():
                    if not np.array_equal(v, bank.column(k)):
                        raise RuntimeError(f"grid {grid_label(grid)} bank has different segments ({k})")
            r = evaluate_grid(bank, layouts, full, args.target)
            r.update(grid=list(grid), cells=grid[0] * grid[1], coarse_grids=[list(g) for g in bank.config.coarse_grids])
            r["build_seconds"] = build_seconds
            results[grid_label(grid)] = r
            print(
                f"{grid_label(grid)}: agreement {100 * r['agreement']:.2f}%, "
                f"ratio mean {r['score_ratio_mean']:.4f} p5 {r['score_ratio_p5']:.4f}, "
                f"grid {r['grid_seconds']:.1f} s, build {build_seconds:.1f} s"
            )

    by_cells = sorted(results.values(), key=lambda r: r["cells"])
    passing = [r for r in by_cells if r["agreement"] >= args.target]
    recommended = grid_label(passing[0]["grid"]) if passing else None
    best = max(by_cells, key=lambda r: r["agreement"])
    result = {
        "benchmark": "grid_fidelity",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "dataset": "camvid",
        "bank_split": "train",
        "query_split": "val",
        "bank_images": int(bank_images.labels.shape[0]),
        "bank_segments": int(bank_images.class_id.size),
        "query_images": len(layouts),
        "query_components": n_queries,
        "resolution": list(bank.resolution),
        "min_area": bank.config.min_area,
        "score": "IoU(mask) + IoU(context); top-1 ties -> lower segment id; exact full-res ties count as agreement",
        "target_agreement": args.target,
        "recommended_grid": recommended,
        "most_faithful_grid": grid_label(best["grid"]),
        "full_res_seconds_wall": full_wall,
        "full_res_seconds_cpu": full_cpu,
        "full_res_ms_per_query_cpu": 1e3 * full_cpu / max(n_queries, 1),
        "workers": workers,
        "naive_check_pairs": args.verify_pairs,
        "total_seconds": time.perf_counter() - t_start,
        "grids": results,
        "full_mode": {"bank_grid": grid_label(grids[0]), **full_mode},
    }
    write_json(args.out, result)

    print()
    print(
        "| grid | cells | top-1 agreement | score ratio mean | ratio p5 | best in grid top-5 "
        f"| grid top-k for {100 * args.target:.0f}% | grid ms/query | fine bytes/segment |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in by_cells:
        mark = " **(recommended)**" if grid_label(r["grid"]) == recommended else ""
        print(
            f"| {grid_label(r['grid'])}{mark} | {r['cells']} | {100 * r['agreement']:.2f}% "
            f"| {r['score_ratio_mean']:.4f} | {r['score_ratio_p5']:.4f} "
            f"| {100 * r['full_res_best_in_grid_topk']['5']:.2f}% | {r['shortlist_for_target']} "
            f"| {r['grid_ms_per_query']:.2f} "
            f"| {r['fine_bytes_per_segment']} ({r['mask_bytes_per_segment']} + {r['context_bytes_per_segment']}) |"
        )
    fm = full_mode["latency_ms_per_layout"]
    print(
        f"| `full` mode (pixels, {grid_label(grids[0])} seeds) | - | {100 * full_mode['agreement']:.2f}% | 1 | 1 "
        f"| - | - | {fm['full']['p50']:.1f} ms/layout (fast: {fm['fast']['p50']:.1f}) | frames in RAM |"
    )
    print(
        f"\n{n_queries} query components; full resolution: {result['full_res_ms_per_query_cpu']:.1f} ms CPU per query"
    )
    if recommended:
        print(f"recommended grid (coarsest with >= {100 * args.target:.0f}% agreement): {recommended}")
    else:
        print(f"no grid reaches {100 * args.target:.0f}%; the most faithful is {result['most_faithful_grid']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
