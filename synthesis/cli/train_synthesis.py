"""``sims train synthesis``: the synthesis network f (SIMS) or its parametric baseline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from memory_bank.errors import SimsError
from synthesis.cli.train_options import (
    BatchSizeOpt,
    ExportOpt,
    OutOpt,
    ProgressOpt,
    ResumeOpt,
    StepsOpt,
    ThreadsOpt,
    TimeLimitOpt,
    echo_result,
    one_line_errors,
)

app = typer.Typer()

#: Fallback for the VGG weights path when neither the config nor --vgg-weights gives one.
VGG_ENV = "SIMS_VGG_WEIGHTS"


@app.command("synthesis")
def synthesis(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config JSON (see configs/synthesis/).")],
    out: OutOpt,
    parametric: Annotated[
        bool, typer.Option("--parametric", help="Train the CRN-style baseline: same network, empty canvas.")
    ] = False,
    resume: ResumeOpt = False,
    vgg_weights: Annotated[
        Path | None, typer.Option(help=f"VGG state dict (overrides vgg.path; default: ${VGG_ENV}).")
    ] = None,
    bank: Annotated[Path | None, typer.Option("--bank", "-b", help="Bank directory (overrides data.bank).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Canvas cache directory (overrides data.cache_dir).")] = None,
    init_from: Annotated[
        Path | None, typer.Option(help="Warm-start a fresh run from this model directory (overrides init_from).")
    ] = None,
    steps: StepsOpt = None,
    batch_size: BatchSizeOpt = None,
    threads: ThreadsOpt = None,
    device: Annotated[str | None, typer.Option(help="Override train.device: auto, cpu or cuda.")] = None,
    time_limit_minutes: TimeLimitOpt = None,
    export: ExportOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train the synthesis network on simulated canvases with the perceptual loss."""
    from synthesis.training.synthesis import TrainSynthesisConfig, train_synthesis

    with one_line_errors():
        cfg = TrainSynthesisConfig.load(config)
        cfg = cfg.with_overrides(
            **{
                "vgg.path": str(vgg_weights) if vgg_weights else (None if cfg.vgg.path else os.environ.get(VGG_ENV)),
                "data.bank": str(bank) if bank else None,
                "data.cache_dir": str(cache) if cache else None,
                "train.steps": steps,
                "train.batch_size": batch_size,
                "train.threads": threads,
                "train.device": device,
                "parametric": True if parametric else None,
                "init_from": str(init_from) if init_from else None,
            }
        )
        result = train_synthesis(cfg, out, resume=resume, progress=progress, time_limit_minutes=time_limit_minutes)
    echo_result(result, out, export)


@app.command("fetch-vgg")
def fetch_vgg(
    directory: Annotated[Path, typer.Option("--dir", help="Where to keep the weights file.")] = Path(".sims/vgg"),
) -> None:
    """Download torchvision's ImageNet VGG-19 (548 MB, the SIMS paper's loss network) and print its path."""
    from synthesis.networks.vgg import fetch_imagenet_vgg19

    with one_line_errors():
        try:
            path = fetch_imagenet_vgg19(directory)
        except OSError as e:  # urllib's errors are OSErrors: offline, proxy, disk full
            raise SimsError(f"cannot download the VGG-19 weights: {e}") from e
    typer.echo(str(path))
    typer.echo(
        f'use it: --vgg-weights {path} (or {VGG_ENV}), with "vgg": {{"arch": "vgg19", "convention": "imagenet"}} '
        "in the run config"
    )
