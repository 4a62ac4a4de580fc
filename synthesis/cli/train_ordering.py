"""``sims train ordering``: the pairwise ordering network (paper §4.4)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("ordering")
def ordering(
    bank: Annotated[Path, typer.Option("--bank", "-b", help="Bank whose layouts give the training pairs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; an existing run there is resumed.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help='Run config JSON {"model": {...}, "training": {...}}.')
    ] = None,
    val_bank: Annotated[Path | None, typer.Option(help="Bank whose layouts give the val pairs.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the config's epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    time_limit: Annotated[float | None, typer.Option(help="Stop after the epoch past this many minutes.")] = None,
    export: Annotated[
        Path | None,
        typer.Option(help="Copy the float16 checkpoint and class_prior.json here at the end."),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train the ordering network on neighbour pairs labelled by the layout rule; fit the class-prior baseline."""
    import dataclasses

    import torch

    from memory_bank import open_bank
    from synthesis.networks.model_files import CONFIG_NAME, WEIGHTS_NAME
    from synthesis.networks.ordering import PRIOR_NAME, OrderingConfig
    from synthesis.training.ordering import OrderingTrainConfig, load_run_config, train_ordering

    if threads is not None:
        torch.set_num_threads(threads)
    model_cfg, train_cfg = load_run_config(config) if config else (OrderingConfig(), OrderingTrainConfig())
    overrides = {"epochs": epochs, "seed": seed}
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in overrides.items() if v is not None})
    summary = train_ordering(
        open_bank(bank),
        out,
        model_cfg,
        train_cfg,
        val_bank=open_bank(val_bank) if val_bank else None,
        progress=progress,
        time_limit=time_limit,
    )
    line = f"trained {summary['epochs']} epochs on {summary['train_pairs']} pairs in {summary['wall_s'] / 60:.1f} min"
    if "val_accuracy" in summary:
        line += f"; val accuracy {summary['val_accuracy']:.4f} (class prior {summary['val_class_prior']:.4f})"
    typer.echo(line)
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME, PRIOR_NAME):
            shutil.copy2(out / name, export / name)
        typer.echo(f"float16 weights in {export}")
