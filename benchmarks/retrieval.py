"""Retrieval benchmark: brute force vs exact vs fast, from the CamVid train bank to 10^7 segments.

    .venv/bin/python benchmarks/retrieval.py --root ../shared/data/camvid

Banks: the CamVid train bank itself (size ``train``; built once under benchmarks/.cache), and
that bank grown to each size by jittering whole label maps (benchmarks/jitter.py, cached: 10^7
segments take ~31 GB of disk and ~15 min to generate). Queries: every CamVid val layout.
Latency is per whole layout (cutting and coding the layout included). Brute force runs on an
even sample of layouts, within a time budget per size (about 250 s per layout at 10^7).

Side by side, the same benchmark runs the engine of the format-1 layout (dense contexts, git
revision ``--v1-rev``) on the same data, from a ``git archive`` of that revision in a temporary
directory, in its own process.

Writes benchmarks/results/retrieval.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json  # benchmarks/common.py
from jitter import CACHE_DIR, CodeBank, code_bank_from_bank, jittered_bank

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import current_version, open_bank
from memory_bank.candidate_index import CandidateConfig, set_nprobe
from memory_bank.errors import BankNotFoundError
from retrieval_service.engine import RetrievalEngine
from retrieval_service.query import prepare_query
from retrieval_service.reference import brute_force_topk
from retrieval_service.types import RetrievalOptions, Status

RESULTS = Path(__file__).parent / "results"


def train_bank(root: Path) -> Path:
    """The CamVid train bank, built once and cached."""
    path = CACHE_DIR / "camvid-train"
    try:
        current_version(path)
    except BankNotFoundError:
        build_bank(create_reader("camvid", root, ["train"]), path, progress=True)
    return path


#: Segments a brute-force scan reads at once: the result is the same, the memory bounded.
BRUTE_FORCE_CHUNK = 200_000


def brute_force_layout(codes: CodeBank, class_id: np.ndarray, label: np.ndarray, k: int) -> list:
    """The reference: cut and code the layout, then a full numpy scan of the class per component.

    The bank is read in contiguous chunks of rows, each scored for every component against the
    chunk's rows of its class, and the chunks' top-k merged in the same order (score descending,
    then id): a bank of 10^7 segments does not fit in memory beside the engine, and this way it
    is read from disk once per layout, sequentially."""
    query = prepare_query(label, codes.num_classes, codes.config, codes.resolution)
    present = set(np.unique(class_id).tolist())
    comps = [
        i
        for i in range(len(query))
        if query.segments.area[i] >= codes.config.min_area and int(query.segments.class_id[i]) in present
    ]
    parts: dict[int, list] = {i: [] for i in comps}
    for start in range(0, len(class_id), BRUTE_FORCE_CHUNK):
        stop = min(start + BRUTE_FORCE_CHUNK, len(class_id))
        mask, context, chunk_class = codes.mask[start:stop], codes.context[start:stop], class_id[start:stop]
        for c in {int(query.segments.class_id[i]) for i in comps}:
            rows = np.flatnonzero(chunk_class == c)
            if not rows.size:
                continue
            m, x, ids = mask[rows], context[rows], start + rows
            for i in comps:
                if int(query.segments.class_id[i]) == c:
                    parts[i].append(brute_force_topk(query.codes.mask[i], query.codes.context[i], m, x, ids, k))
    out = []
    for i in comps:
        ids, score, miou, ciou = (np.concatenate(a) for a in zip(*parts[i], strict=True))
        order = np.lexsort((ids, -score))[:k]
        out.append((ids[order], score[order], miou[order], ciou[order]))
    return out


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process: what the engine holds, without the page cache
    of the memory-mapped benchmark arrays."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def use_config(engine: RetrievalEngine, config: CandidateConfig) -> None:
    """Search with ``config`` from now on: its candidate counts, and its nprobe in every loaded index."""
    engine.candidate_config = config
    for shard in engine.index.shards.values():
        if "faiss" in shard.extras:
            set_nprobe(shard.extras["faiss"], config)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_size(codes: CodeBank, layouts: list[np.ndarray], args: argparse.Namespace) -> dict:
    n = len(codes)
    # 1. Index build: shards, grid boxes, and FAISS candidate indexes.
    rss_before = rss_anon_bytes()
    t0 = time.perf_counter()
    index = codes.segment_index()
    config = CandidateConfig(nprobe=args.nprobe)
    engine = RetrievalEngine(index, config)
    engine.warm_up()
    build_seconds = time.perf_counter() - t0
    engine_rss = rss_anon_bytes() - rss_before
    faiss_bytes = sum(
        s.extras["faiss"].ntotal * (s.coarse.shape[1] + 8) for s in index.shards.values() if "faiss" in s.extras
    )
    # 2. Each mode as its own stream of queries (every layout, ``--repeats`` passes): a service
    #    sees runs of one mode, and interleaving them would charge each with the other's cache
    #    misses.
    #    Where some class is larger than ``config.grow_from``: ``fast_fixed_counts`` is fast mode
    #    with the same nprobe and candidates in every class, and ``--sweep`` other growths of both
    #    (one pass each), e.g. ``fast nprobe^0.75 candidates^0.25``.
    largest = max(len(s) for s in index.shards.values())
    modes = {"exact": ("exact", config), "fast": ("fast", config)}
    if config.grow_from is not None and largest > config.grow_from:
        modes["fast_fixed_counts"] = ("fast", replace(config, grow_from=None))
        for pair in filter(None, args.sweep.split(",")):
            a, b = (float(x) for x in pair.split(":"))
            swept = replace(config, nprobe_growth=a, candidates_growth=b)
            modes[f"fast nprobe^{a:g} candidates^{b:g}"] = ("fast", swept)
    lat: dict[str, list[float]] = {m: [] for m in modes}
    prepare: dict[str, list[float]] = {m: [] for m in modes}
    scored: dict[str, list[int]] = {m: [] for m in modes}
    last: dict[str, list] = {}
    for name, (mode, variant) in modes.items():
        use_config(engine, variant)
        opts = RetrievalOptions(k=args.k, mode=mode, candidates=args.candidates)
        for _ in range(args.repeats if name in ("exact", "fast", "fast_fixed_counts") else 1):
            last[name] = []
            for label in tqdm(layouts, desc=f"{n:>8} {name}", unit="layout"):
                t = time.perf_counter()
                res = engine.retrieve(label, opts)
                lat[name].append(time.perf_counter() - t)
                prepare[name].append(res.timings["prepare"])
                scored[name].append(res.scored)
                last[name].append(res)
    use_config(engine, config)
    exact_results = last["exact"]
    recall = {}
    for name in modes.keys() - {"exact"}:
        hits = total = 0
        for exact, fast in zip(last["exact"], last[name], strict=True):
            for e, f in zip(exact.components, fast.components, strict=True):
                if e.status is Status.OK:
                    total += 1
                    hits += abs(e.matches[0].score - f.matches[0].score) <= 1e-6
        recall[name] = hits / max(1, total)
    # 3. Brute force on a sample of layouts (it is slow), checked against exact: an even sample,
    #    cut short once the time budget is spent (after at least three layouts).
    class_id = np.asarray(codes.class_id)
    sample = np.linspace(0, len(layouts) - 1, min(args.brute_force_layouts, len(layouts))).astype(int)
    brute = []
    mismatches = 0
    spent = 0.0
    for done, i in enumerate(tqdm(sample, desc=f"{n:>8} brute force", unit="layout")):
        if done >= 3 and spent > args.brute_force_seconds:
            sample = sample[:done]
            break
        t = time.perf_counter()
        ref = brute_force_layout(codes, class_id, layouts[i], args.k)
        brute.append(time.perf_counter() - t)
        spent += brute[-1]
        got = [c for c in exact_results[i].components if c.status is Status.OK]
        for (ids, scores, _, _), comp in zip(ref, got, strict=True):
            mismatches += [m.segment_id for m in comp.matches] != ids.tolist()
            mismatches += [m.score for m in comp.matches] != scores.tolist()
    exact_on_sample = [lat["exact"][i] for i in sample]  # first pass
    speedup = {
        "exact_speedup_vs_brute_force_p50": pct(brute, 50) / pct(exact_on_sample, 50) if brute else None,
        "exact_speedup_vs_brute_force_mean": statistics.mean(brute) / statistics.mean(exact_on_sample)
        if brute
        else None,
    }
    return {
        "segments": n,
        "index_build_seconds": build_seconds,
        "index_bytes": index.nbytes(),
        "faiss_bytes": faiss_bytes,
        "engine_bytes_per_segment": (index.nbytes() + faiss_bytes) / n,
        "engine_rss_anon_bytes": engine_rss,
        "layouts": len(layouts),
        "components_scored": total,
        "latency_ms": {
            mode: {"p50": 1e3 * pct(v, 50), "p95": 1e3 * pct(v, 95), "mean": 1e3 * statistics.mean(v)}
            for mode, v in {**lat, "brute_force": brute}.items()
            if v
        },
        "brute_force_layouts": len(sample),
        **speedup,
        "exact_mismatches_vs_brute_force": mismatches if brute else None,
        "fast_recall_at_1": recall["fast"],
        "recall_at_1": recall,
        "largest_class": largest,
        "largest_class_nprobe": config.nprobe_for(largest),
        "largest_class_candidates": config.candidates_for(largest, args.candidates),
        "segments_scored_per_layout": {m: statistics.mean(v) for m, v in scored.items()},
        "prepare_ms_p50": {m: 1e3 * pct(v, 50) for m, v in prepare.items()},
        "passes": args.repeats,
        "class_threads": engine.class_threads,
    }


def format_1_engine(args: argparse.Namespace, sizes: list[str]) -> dict:
    """The same benchmark, run by the engine of git revision ``args.v1_rev`` (format 1: dense
    contexts) in its own process, from a ``git archive`` of that revision. It builds its own
    CamVid train bank (the same segments and codes; format 1 cannot read a format-2 bank) and
    its own jittered banks, in the temporary tree."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="sims-v1-") as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.v1_rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        out = Path(tmp) / "v1.json"
        cmd = [sys.executable, str(Path(tmp) / "benchmarks" / "retrieval.py"), "--root", str(args.root.resolve())]
        cmd += ["--sizes", ",".join(sizes), "--out", str(out), "--k", str(args.k), "--candidates", str(args.candidates)]
        cmd += ["--nprobe", str(args.nprobe), "--repeats", str(args.repeats)]
        cmd += ["--brute-force-layouts", str(args.v1_brute_force_layouts)]
        if args.max_layouts:
            cmd += ["--max-layouts", str(args.max_layouts)]
        subprocess.run(cmd, check=True, cwd=tmp, env={**os.environ, "PYTHONPATH": tmp})
        result = json.loads(out.read_text())
    return {"rev": args.v1_rev, "peak_rss_bytes": result["peak_rss_bytes"], "sizes": result["sizes"]}


def table_row(name: str, r: dict) -> str:
    lm = r["latency_ms"]
    memory = r["index_bytes"] + r["faiss_bytes"]
    brute = f"{lm['brute_force']['p50']:,.0f} ms" if "brute_force" in lm else "not run"
    speedup = f"{r['exact_speedup_vs_brute_force_p50']:,.0f}x" if "brute_force" in lm else "-"
    return (
        f"| {name} | {r['segments']:,} | {brute} | {lm['exact']['p50']:.1f} / "
        f"{lm['exact']['p95']:.1f} ms | {lm['fast']['p50']:.1f} / {lm['fast']['p95']:.1f} ms "
        f"| {speedup} | {r['fast_recall_at_1']:.4f} "
        f"| {r['index_build_seconds']:,.0f} s | {memory / 1e9:.2f} GB ({memory / r['segments']:,.0f} B) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CamVid root (SegNet layout)")
    parser.add_argument("--bank", type=Path, default=None, help="CamVid train bank (default: built under .cache)")
    parser.add_argument("--sizes", default="train,10000,100000,1000000,10000000", help="'train' is the bank itself")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=512, help="fast mode: FAISS candidates per component")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument(
        "--sweep",
        default="0.5:0.25,0.5:0.5,0.5:1,0:0.75,1:0.75",
        help="nprobe_growth:candidates_growth pairs, also run where a class grows (one pass each)",
    )
    parser.add_argument("--brute-force-layouts", type=int, default=10, help="at most, per size; 0 skips it")
    parser.add_argument("--brute-force-seconds", type=float, default=600, help="budget per size (>= 3 layouts)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the layouts per mode")
    parser.add_argument("--max-layouts", type=int, default=None)
    parser.add_argument("--v1-rev", default="45c90a6", help="the last revision with the format-1 engine")
    parser.add_argument("--v1-sizes", default="1000000", help="sizes run side by side on it ('' for none)")
    parser.add_argument("--v1-brute-force-layouts", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval.json")
    parser.add_argument(
        "--update", action="store_true", help="keep the sizes (and format-1 run) of --out this run does not measure"
    )
    args = parser.parse_args()

    bank_path = args.bank or train_bank(args.root)
    bank = open_bank(bank_path)
    val = create_reader("camvid", args.root, ["val"])
    layouts = [val.load(ref).label for ref in val.refs[: args.max_layouts]]
    results: list[dict] = []
    v1: dict | None = None
    kept: dict = json.loads(args.out.read_text()) if args.update and args.out.exists() else {}

    def write() -> None:  # after every size, so that a long run keeps what it measured
        measured = {(r["bank"], r["segments"]) for r in results}
        now = datetime.now(UTC).isoformat(timespec="seconds")
        out = {
            "benchmark": "retrieval",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "source_bank": bank.version,
            "grid": {"fine": list(bank.config.fine_grid), "coarse": [list(g) for g in bank.config.coarse_grids]},
            "k": args.k,
            "fast_candidates": args.candidates,
            "nprobe": args.nprobe,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "sizes": sorted(
                [r for r in kept.get("sizes", []) if (r["bank"], r["segments"]) not in measured] + results,
                key=lambda r: (r["bank"] != "camvid-train", r["segments"]),
            ),
            "format_1_engine": v1 if v1 is not None else kept.get("format_1_engine"),
            "runs": [*kept.get("runs", [kept["date"]] if kept else []), now],
            "targets": {
                "1e7": {"engine_bytes": 12e9, "fast_p50_ms": 40, "fast_recall_at_1": 0.99, "exact_speedup": 100},
                "1e6": {"fast_p50_ms": 20, "exact_p50_ms": 50},
                "every_size": {"fast_recall_at_1": 0.99},
            },
        }
        write_json(args.out, out)

    for size in args.sizes.split(","):
        codes = code_bank_from_bank(bank) if size == "train" else jittered_bank(bank_path, int(float(size)))
        results.append({"bank": "camvid-train" if size == "train" else "jittered", **run_size(codes, layouts, args)})
        r = results[-1]
        print(json.dumps({k: r[k] for k in ("segments", "latency_ms", "fast_recall_at_1")}, indent=None), flush=True)
        del codes
        write()
    v1_sizes = [s for s in args.v1_sizes.split(",") if s]
    if v1_sizes:
        v1 = format_1_engine(args, v1_sizes)
        write()
    print()
    print("| engine | segments | brute force p50 | exact p50 / p95 | fast p50 / p95 | exact speed-up | fast recall@1 "
          "| index build | engine memory (per segment) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(table_row("format 2" if r["bank"] == "jittered" else "format 2, CamVid train", r))
    for r in (v1 or {"sizes": []})["sizes"]:
        print(table_row(f"format 1 ({args.v1_rev})", r))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
