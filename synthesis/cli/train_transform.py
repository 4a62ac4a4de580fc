"""``sims train transform``: the transformation network T (paper §4.3)."""

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


@app.command("transform")
def transform(
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
    """Train T to undo random affine moves and cuts of real bank segments (L1 on colour and mask)."""
    from memory_bank import open_bank
    from synthesis.model_directory import export_float16
    from synthesis.training.transform import TransformRunConfig, train_transform

    with one_line_errors():
        cfg = TransformRunConfig.load(config or default_config("transform")).with_overrides(
            **{"train.steps": steps, "train.batch_size": batch_size, "train.seed": seed, "train.threads": threads}
        )
        summary = train_transform(
            open_bank(bank),
            out,
            cfg.model,
            cfg.train,
            val_bank=open_bank(val_bank) if val_bank else None,
            resume=resume,
            progress=progress,
            time_limit_minutes=time_limit_minutes,
        )
    typer.echo(
        f"trained to step {summary['steps']} in {summary['wall_s'] / 60:.1f} min; perturbed val IoU "
        f"{summary['val_iou_perturbed']:.4f} -> {summary['val_iou_t']:.4f} with T; run in {out}"
    )
    if export is not None:
        typer.echo(f"float16 weights in {export_float16(out, export)}")
