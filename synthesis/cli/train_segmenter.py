"""``sims train segmenter``: the segmentation probe of ``sims eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memory_bank.config import parse_size
from synthesis.training.segmenter import SegmenterTrainConfig

app = typer.Typer()

_D = SegmenterTrainConfig()


@app.command("segmenter")
def segmenter(
    bank: Annotated[Path, typer.Option("--bank", "-b", help="Bank of real training photos (e.g. CamVid train).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; an existing run there is resumed.")],
    val_bank: Annotated[Path | None, typer.Option(help="Bank of real val photos to score on.")] = None,
    resolution: Annotated[str, typer.Option(help="Training resolution ROWSxCOLS.")] = "x".join(map(str, _D.resolution)),
    widths: Annotated[str, typer.Option(help="U-Net channels per level, comma-separated.")] = ",".join(
        map(str, _D.widths)
    ),
    steps: Annotated[int, typer.Option(help="Optimisation steps in total.")] = _D.steps,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = _D.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = _D.lr,
    max_zoom: Annotated[float, typer.Option(help="Largest random zoom-in of the crops.")] = _D.max_zoom,
    low_res_prob: Annotated[
        float, typer.Option(help="Share of crops shrunk to half size and enlarged back (low-res robustness).")
    ] = _D.low_res_prob,
    class_balance: Annotated[
        float, typer.Option(help="Exponent of the median-frequency class weights (0: unweighted).")
    ] = _D.class_balance,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = _D.checkpoint_every,
    eval_every: Annotated[int, typer.Option(help="Steps between val scores (0: only at the end).")] = _D.eval_every,
    seed: Annotated[int, typer.Option()] = _D.seed,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    time_limit: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes.")] = None,
    export: Annotated[
        Path | None, typer.Option(help="Also write the final weights as float16 to this directory.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train a compact U-Net on real photos: the probe that scores synthesized images."""
    from synthesis.training.segmenter import export_float16, train_segmenter

    config = SegmenterTrainConfig(
        resolution=parse_size(resolution),
        widths=tuple(int(w) for w in widths.split(",") if w.strip()),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        max_zoom=max_zoom,
        low_res_prob=low_res_prob,
        class_balance=class_balance,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        seed=seed,
        threads=threads,
        time_limit_minutes=time_limit,
    )
    result = train_segmenter(bank, out, config, val_bank=val_bank, progress=progress)
    typer.echo(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint in {result.out_dir}")
    if result.val_scores is not None:
        typer.echo(f"val mIoU {result.val_scores.miou:.4f}, pixel accuracy {result.val_scores.pixel_accuracy:.4f}")
    if export is not None:
        typer.echo(f"float16 weights in {export_float16(result.out_dir, export)}")
