"""``sims train ordering``: the pairwise ordering network (paper §4.4)."""

from __future__ import annotations

from typing import Annotated

import typer

from synthesis.cli.train_options import (
    BankOpt,
    ConfigOpt,
    ExportOpt,
    OutOpt,
    ProgressOpt,
    ResumeOpt,
    SeedOpt,
    ThreadsOpt,
    TimeLimitOpt,
    ValBankOpt,
    default_config,
    one_line_errors,
)

app = typer.Typer()


@app.command("ordering")
def ordering(
    bank: BankOpt,
    out: OutOpt,
    config: ConfigOpt = None,
    val_bank: ValBankOpt = None,
    resume: ResumeOpt = False,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    time_limit_minutes: TimeLimitOpt = None,
    export: ExportOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train the ordering network on neighbour pairs labelled by the layout rule; fit the class-prior baseline."""
    from memory_bank import open_bank
    from synthesis.model_directory import export_float16
    from synthesis.training.ordering import OrderingRunConfig, train_ordering

    with one_line_errors():
        cfg = OrderingRunConfig.load(config or default_config("ordering")).with_overrides(
            **{"train.epochs": epochs, "train.seed": seed, "train.threads": threads}
        )
        summary = train_ordering(
            open_bank(bank),
            out,
            cfg.model,
            cfg.train,
            val_bank=open_bank(val_bank) if val_bank else None,
            resume=resume,
            progress=progress,
            time_limit_minutes=time_limit_minutes,
        )
    line = f"trained {summary['epochs']} epochs on {summary['train_pairs']} pairs in {summary['wall_s'] / 60:.1f} min"
    if "val_accuracy" in summary:
        line += f"; val accuracy {summary['val_accuracy']:.4f} (class prior {summary['val_class_prior']:.4f})"
    typer.echo(line)
    if export is not None:
        typer.echo(f"float16 weights and class_prior.json in {export_float16(out, export)}")
