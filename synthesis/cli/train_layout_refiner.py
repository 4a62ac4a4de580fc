"""``sims train layout-refiner``: the coarse-to-fine layout refiner."""

from __future__ import annotations

import json

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


@app.command("layout-refiner")
def layout_refiner(
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
    """Train the layout refiner on (coarse, fine) pairs coarsened on the fly from the bank's label maps."""
    from synthesis.model_directory import export_float16
    from synthesis.training.layout_refiner import RefineRunConfig, train_refiner

    with one_line_errors():
        cfg = RefineRunConfig.load(config or default_config("layout-refiner")).with_train(
            steps=steps, batch_size=batch_size, seed=seed, threads=threads
        )
        result = train_refiner(
            bank, out, cfg, val_bank=val_bank, resume=resume, progress=progress, time_limit_minutes=time_limit_minutes
        )
    last = f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.4f}" if result.losses else "n/a"
    typer.echo(f"trained to step {result.step} in {result.seconds / 60:.1f} min, loss {last}; run in {out}")
    if result.val is not None:
        typer.echo(json.dumps({k: result.val[k] for k in ("coverage", "coarse_labelled_accuracy")}))
        c = result.val["coarse"]
        typer.echo(f"coarse  vs fine: pixel accuracy {c['pixel_accuracy']:.4f}, mIoU {c['miou']:.4f}")
        for t, s in result.val["refined"].items():
            typer.echo(f"refined vs fine (keep {t}): pixel accuracy {s['pixel_accuracy']:.4f}, mIoU {s['miou']:.4f}")
    if export is not None:
        typer.echo(f"float16 weights in {export_float16(out, export)}")
