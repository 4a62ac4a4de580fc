"""Synthesis network speed: forward latency for one image, and seconds per training step.

Forward: one (layout, canvas, missing) -> photo pass at each config's resolution, batch 1, eval
mode, after warm-up; p50/p95 over ``--repeats`` runs (target: p50 <= 500 ms at the shipped
resolution on the 2-core machine). Training (``--train``): a full step (network forward, VGG
perceptual loss on output and target, backward, Adam) at batch sizes ``--batch-sizes``; needs the
VGG weights (``--vgg-weights`` or ``SIMS_VGG_WEIGHTS``).

Variants: ``fp32`` (NCHW, float32), ``fp32-cl`` (channels-last), ``bf16-cl`` (bfloat16 autocast and
channels-last, which uses AMX/AVX512-BF16 through oneDNN where the CPU has it).
Weights are random: speed does not depend on their values. The machine's load average is recorded
with every measurement. On a shared machine other jobs inflate wall-clock times, so each run waits for
idle CPUs (``--max-busy``) and runs during which other processes used more than ``--max-others`` of the
CPUs are discarded and repeated (counted in ``discarded_runs``).

    .venv/bin/python benchmarks/synthesis_forward.py --threads 2 --train --vgg-weights PATH
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import write_json  # benchmarks/common.py

from synthesis.networks.refinement import CascadedRefinementNetwork
from synthesis.training.synthesis import SynthesisTrainer, TrainSynthesisConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [REPO / "configs/synthesis/camvid-96x128.json", REPO / "configs/synthesis/camvid-192x256.json"]


def inputs(b: int, h: int, w: int, num_classes: int, channels_last: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    missing = (torch.rand(b, 1, h, w, generator=g) > 0.3).float()
    return {
        "layout": torch.randint(0, num_classes, (b, h, w), generator=g),
        "canvas": (torch.rand(b, 3, h, w, generator=g) * (1 - missing)).contiguous(memory_format=fmt),
        "missing": missing.contiguous(memory_format=fmt),
        "photo": torch.rand(b, 3, h, w, generator=g).contiguous(memory_format=fmt),
    }


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (Linux /proc/stat; zeros elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


def wait_for_idle(max_busy: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until the CPUs are at most ``max_busy`` busy; returns the busy fraction seen."""
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = cpu_jiffies()
        time.sleep(1.0)
        b1, t1 = cpu_jiffies()
        busy = 0.0 if t1 == t0 else (b1 - b0) / (t1 - t0)
        if busy <= max_busy or time.monotonic() >= deadline:
            return busy


@dataclass
class Timings:
    """Per-call wall and process-CPU seconds of the clean runs, and how many runs other jobs spoiled."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    discarded: int = 0


def timed(fn: Callable[[], Any], repeats: int, warmup: int, max_others: float, max_busy: float) -> Timings:
    """Time ``fn``, keeping only runs during which other processes used at most ``max_others`` of the CPUs.

    Other jobs' CPU use during a run is the machine's busy ticks minus this process's CPU time. Calls
    shorter than 0.25 s are grouped so each measured run spans at least that (ticks are 10 ms).
    """
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    group = max(1, math.ceil(0.25 / max(time.perf_counter() - t, 1e-4)))
    tick, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    out = Timings()
    while len(out.wall) < repeats and out.discarded < 10 * repeats:
        if max_busy < 1.0:
            wait_for_idle(max_busy, timeout=600.0)
        (b0, _), c0, t0 = cpu_jiffies(), time.process_time(), time.perf_counter()
        for _ in range(group):
            fn()
        (b1, _), c1, t1 = cpu_jiffies(), time.process_time(), time.perf_counter()
        others = max(0.0, ((b1 - b0) / tick - (c1 - c0)) / ((t1 - t0) * ncpu))
        if others > max_others:
            out.discarded += 1
            continue
        out.wall.append((t1 - t0) / group)
        out.cpu.append((c1 - c0) / group)
        out.others.append(others)
    if not out.wall:
        raise SystemExit(f"every run was disturbed by other jobs (> {max_others:.0%} of the CPUs); try again later")
    return out


def summary(t: Timings) -> dict[str, float]:
    wall = sorted(t.wall)
    return {
        "p50_ms": round(1000 * statistics.median(wall), 1),
        "p95_ms": round(1000 * wall[min(len(wall) - 1, int(0.95 * len(wall)))], 1),
        "min_ms": round(1000 * wall[0], 1),
        "cpu_p50_ms": round(1000 * statistics.median(t.cpu), 1),
        "runs": len(wall),
        "discarded_runs": t.discarded,
        "others_cpu_max": round(max(t.others), 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def autocast(variant: str) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if variant.startswith("bf16") else contextlib.nullcontext()


def forward_bench(cfg: TrainSynthesisConfig, variant: str, repeats: int, gate: tuple[float, float]) -> dict[str, Any]:
    torch.manual_seed(0)
    cl = variant.endswith("-cl")
    net = CascadedRefinementNetwork.from_config(cfg.model).eval()
    if cl:
        net = net.to(memory_format=torch.channels_last)
    x = inputs(1, *cfg.model.resolution, cfg.model.num_classes, cl)

    def run() -> None:
        with torch.inference_mode(), autocast(variant):
            net(x["layout"], x["canvas"], x["missing"])

    params = sum(p.numel() for p in net.parameters())
    return {"params": params, **summary(timed(run, repeats, 3, *gate))}


def train_bench(
    cfg: TrainSynthesisConfig, variant: str, batch: int, vgg_path: str, repeats: int, gate: tuple[float, float]
) -> dict[str, Any]:
    """Seconds per step of the real training step (SynthesisTrainer.train_step) on a fixed random batch."""
    cfg = cfg.with_overrides(
        **{
            "vgg.path": vgg_path,
            "train.batch_size": batch,
            "train.device": "cpu",
            "train.precision": "bf16" if variant.startswith("bf16") else "fp32",
            "train.channels_last": variant.endswith("-cl"),
        }
    )
    x = inputs(batch, *cfg.model.resolution, cfg.model.num_classes, False)
    trainer = SynthesisTrainer(cfg, [{k: v[0] for k, v in x.items()}])  # type: ignore[arg-type]
    s = summary(timed(lambda: trainer.train_step(x), repeats, 2, *gate))
    return {
        "batch": batch,
        "vgg": f"{trainer.vgg_identity.arch}/{trainer.vgg_identity.file_name}",
        "s_per_step": round(s["p50_ms"] / 1000, 3),
        "s_per_image": round(s["p50_ms"] / 1000 / batch, 3),
        **s,
    }


def save(path: Path, results: dict[str, Any]) -> None:
    """Write the results so far (a long run on a busy machine keeps what it measured)."""
    write_json(path, results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", type=Path, default=DEFAULT_CONFIGS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--variants", default="fp32,fp32-cl,bf16-cl")
    ap.add_argument("--train", action="store_true", help="Also time training steps.")
    ap.add_argument("--train-repeats", type=int, default=5)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--vgg-weights", default=os.environ.get("SIMS_VGG_WEIGHTS"))
    ap.add_argument(
        "--max-others", type=float, default=0.05, help="Discard runs where other jobs used more of the CPUs (0..1)."
    )
    ap.add_argument("--max-busy", type=float, default=0.15, help="Before each run, wait until the CPUs are this idle.")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/synthesis_forward.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    gate = (args.max_others, args.max_busy)
    results: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "threads": args.threads,
        "max_others": args.max_others,
        "max_busy": args.max_busy,
        "forward": [],
        "train_step": [],
    }

    def record(section: str, row: dict, line: str) -> None:
        """Print one measurement, add it to its section and save the results so far."""
        print(f"{line} ({row['runs']} runs, {row['discarded_runs']} discarded)", flush=True)
        results[section].append(row)
        save(args.out, results)

    for path in args.configs:
        cfg = TrainSynthesisConfig.load(path)
        res = "x".join(map(str, cfg.model.resolution))
        model = {"encoder_widths": list(cfg.model.encoder_widths), "decoder_widths": list(cfg.model.decoder_widths)}
        for variant in variants:
            r = {"config": path.name, "resolution": res, "variant": variant, **model}
            r |= forward_bench(cfg, variant, args.repeats, gate)
            line = f"forward {res} {variant}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms"
            record("forward", r, f"{line}, cpu {r['cpu_p50_ms']} ms")
        if not args.train:
            continue
        if not args.vgg_weights:
            raise SystemExit("--train needs --vgg-weights or SIMS_VGG_WEIGHTS")
        for variant in variants:
            for b in (int(v) for v in args.batch_sizes.split(",")):
                r = {"config": path.name, "resolution": res, "variant": variant, **model}
                r |= train_bench(cfg, variant, b, args.vgg_weights, args.train_repeats, gate)
                line = f"train {res} {variant} batch {b}: {r['s_per_step']} s/step, min {r['min_ms']} ms"
                record("train_step", r, f"{line}, cpu {r['cpu_p50_ms']} ms")
    save(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
