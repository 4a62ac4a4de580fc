"""``sims train segmenter``: the segmentation probe of ``sims eval``."""

from __future__ import annotations

import typer

from synthesis.cli.train_options import (
    BankOpt,
    BatchSizeOpt,
    ConfigOpt,
    ExportOpt,
    OutOpt,
    ProgressOpt,
    ResumeOpt,
    SeedOpt,
    StepsOpt,
    ThreadsOpt,
    TimeLimitOpt,
    ValBankOpt,
    default_config,
    one_line_errors,
)

app = typer.Typer()


@app.command("segmenter")
def segmenter(
    bank: BankOpt,
    out: OutOpt,
    config: ConfigOpt = None,
    val_bank: ValBankOpt = None,
    resume: ResumeOpt = False,
    steps: StepsOpt = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    time_limit_minutes: TimeLimitOpt = None,
    export: ExportOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train a compact U-Net on real photos: the probe that scores synthesized images."""
    from synthesis.model_directory import export_float16
    from synthesis.training.segmenter import SegmenterRunConfig, train_segmenter

    with one_line_errors():
        cfg = SegmenterRunConfig.load(config or default_config("segmenter")).with_overrides(
            **{"train.steps": steps, "train.batch_size": batch_size, "train.seed": seed, "train.threads": threads}
        )
        result = train_segmenter(
            bank,
            out,
            cfg.train,
            val_bank=val_bank,
            resume=resume,
            progress=progress,
            time_limit_minutes=time_limit_minutes,
        )
    typer.echo(f"trained to step {result.step} in {result.seconds / 60:.1f} min; run in {result.out_dir}")
    if result.val_scores is not None:
        typer.echo(f"val mIoU {result.val_scores.miou:.4f}, pixel accuracy {result.val_scores.pixel_accuracy:.4f}")
    if export is not None:
        typer.echo(f"float16 weights in {export_float16(result.out_dir, export)}")
