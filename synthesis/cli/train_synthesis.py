"""``sims train synthesis``: the synthesis network f (SIMS) or its parametric baseline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()

#: Fallback for the VGG weights path when neither the config nor --vgg-weights gives one.
VGG_ENV = "SIMS_VGG_WEIGHTS"


@app.command("synthesis")
def synthesis(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config JSON (see configs/synthesis/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoints, samples).")],
    parametric: Annotated[
        bool, typer.Option("--parametric", help="Train the CRN-style baseline: same network, empty canvas.")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    vgg_weights: Annotated[
        Path | None, typer.Option(help=f"VGG state dict (overrides vgg.path; default: ${VGG_ENV}).")
    ] = None,
    bank: Annotated[Path | None, typer.Option("--bank", "-b", help="Bank directory (overrides data.bank).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Canvas cache directory (overrides data.cache_dir).")] = None,
    init_from: Annotated[
        Path | None, typer.Option(help="Warm-start a fresh run from this model directory (overrides init_from).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Override train.steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override train.batch_size.")] = None,
    threads: Annotated[int | None, typer.Option(help="Override train.threads (torch CPU threads).")] = None,
    device: Annotated[str | None, typer.Option(help="Override train.device: auto, cpu or cuda.")] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Stop with a checkpoint after this many minutes (resume later).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train the synthesis network on simulated canvases with the perceptual loss."""
    from memory_bank.errors import SimsError
    from synthesis.training.synthesis import TrainSynthesisConfig, train_synthesis

    try:
        cfg = TrainSynthesisConfig.load(config)
    except (ValueError, FileNotFoundError) as e:
        raise SimsError(str(e)) from e
    env_vgg = os.environ.get(VGG_ENV)
    cfg = cfg.with_overrides(
        **{
            "vgg.path": str(vgg_weights) if vgg_weights else (None if cfg.vgg.path else env_vgg),
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
    try:
        result = train_synthesis(
            cfg, out, resume=resume, progress=progress, time_limit=time_limit * 60 if time_limit else None
        )
    except (ValueError, FileNotFoundError) as e:
        # Bad configs, paths and data: the root CLI prints a SimsError as one line (traceback with SIMS_DEBUG=1).
        raise SimsError(str(e)) from e
    last = f"{result.loss_history[-1]:.4f}" if result.loss_history else "n/a"
    typer.echo(
        f"{'parametric baseline' if cfg.parametric else 'SIMS'}: step {result.step} "
        f"({result.steps_run} this run, {result.seconds_per_step:.2f} s/step), loss {last}; "
        f"checkpoint {result.checkpoint}"
    )
