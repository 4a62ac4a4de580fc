"""``sims train transform``: the transformation network T (paper §4.3)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("transform")
def transform(
    bank: Annotated[Path, typer.Option("--bank", "-b", help="Bank whose segments are perturbed (e.g. CamVid train).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; an existing run there is resumed.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help='Run config JSON {"model": {...}, "training": {...}}.')
    ] = None,
    val_bank: Annotated[Path | None, typer.Option(help="Bank for the fixed perturbed examples the log scores.")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the config's optimisation steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the config's batch size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    time_limit: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes.")] = None,
    export: Annotated[
        Path | None, typer.Option(help="Copy the float16 checkpoint (config.json, model.safetensors) here at the end.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train T to undo random affine moves and cuts of real bank segments (L1 on colour and mask)."""
    import dataclasses

    import torch

    from memory_bank import open_bank
    from synthesis.networks.model_files import CONFIG_NAME, WEIGHTS_NAME
    from synthesis.networks.transform import TransformConfig
    from synthesis.training.transform import TransformTrainConfig, load_run_config, train_transform

    if threads is not None:
        torch.set_num_threads(threads)
    model_cfg, train_cfg = load_run_config(config) if config else (TransformConfig(), TransformTrainConfig())
    overrides = {"steps": steps, "batch_size": batch_size, "seed": seed}
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in overrides.items() if v is not None})
    summary = train_transform(
        open_bank(bank),
        out,
        model_cfg,
        train_cfg,
        val_bank=open_bank(val_bank) if val_bank else None,
        progress=progress,
        time_limit=time_limit,
    )
    typer.echo(
        f"trained to step {summary['steps']} in {summary['wall_s'] / 60:.1f} min; perturbed val IoU "
        f"{summary['val_iou_perturbed']:.4f} -> {summary['val_iou_t']:.4f} with T; checkpoint in {out}"
    )
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(out / name, export / name)
        typer.echo(f"float16 weights in {export}")
