"""``sims train refine``: the coarse-to-fine layout refiner."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("layout-refiner")
def refine(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config JSON (see configs/layout-refiner/).")],
    bank: Annotated[Path, typer.Option("--bank", "-b", help="Bank whose label maps are the fine layouts.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; an existing run there is resumed.")],
    val_bank: Annotated[
        Path | None, typer.Option(help="Bank of val label maps: score coarse and refined layouts at the end.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Override train.steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override train.batch_size.")] = None,
    threads: Annotated[int | None, typer.Option(help="Override train.threads (torch CPU threads).")] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Stop with a checkpoint after this many minutes (resume later).")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Also write the final weights as float16 to this directory.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train the layout refiner on (coarse, fine) pairs coarsened on the fly from the bank's label maps."""
    from synthesis.training.layout_refiner import RefineRunConfig, export_float16, train_refiner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = RefineRunConfig.load(config).with_train(
        steps=steps, batch_size=batch_size, threads=threads, time_limit_minutes=time_limit
    )
    result = train_refiner(bank, out, cfg, val_bank=val_bank, progress=progress)
    last = f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.4f}" if result.losses else "n/a"
    typer.echo(f"trained to step {result.step} in {result.seconds / 60:.1f} min, loss {last}; checkpoint in {out}")
    if result.val is not None:
        typer.echo(json.dumps({k: result.val[k] for k in ("coverage", "coarse_labelled_accuracy")}))
        c = result.val["coarse"]
        typer.echo(f"coarse  vs fine: pixel accuracy {c['pixel_accuracy']:.4f}, mIoU {c['miou']:.4f}")
        for t, s in result.val["refined"].items():
            typer.echo(f"refined vs fine (keep {t}): pixel accuracy {s['pixel_accuracy']:.4f}, mIoU {s['miou']:.4f}")
    if export is not None:
        meta = {"data": str(bank), "step": result.step, "minutes": round(result.seconds / 60, 1)}
        typer.echo(f"float16 weights in {export_float16(out, export, meta)}")
