"""Options every ``sims train`` command shares, as ``Annotated`` aliases (one definition each)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from memory_bank.errors import SimsError

if TYPE_CHECKING:
    from synthesis.training.harness import TrainResult

#: The repository's config folders (``configs/<network>/<name>.json``), the commands' defaults.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def default_config(network: str, name: str = "camvid") -> Path:
    """``configs/<network>/<name>.json``."""
    return CONFIGS_DIR / network / f"{name}.json"


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Run config JSON (default: configs/<network>/camvid.json).")
]
BankOpt = Annotated[Path, typer.Option("--bank", "-b", help="Bank to train on (e.g. CamVid train).")]
ValBankOpt = Annotated[Path | None, typer.Option("--val-bank", help="Bank to score on (e.g. CamVid val).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory: checkpoints, log, samples.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint.")]
TimeLimitOpt = Annotated[
    float | None,
    typer.Option(
        "--time-limit-minutes",
        help="Stop with a checkpoint after this many minutes of training (earlier sessions of the run count); "
        "--resume with a larger limit to go on.",
    ),
]
ExportOpt = Annotated[
    Path | None, typer.Option("--export", help="At the end, write the run's float16 weights (the shipping form) here.")
]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Override train.steps.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Override train.batch_size.")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Override train.epochs.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override train.seed.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="Override train.threads (torch CPU threads).")]
#: The option of each ``train`` key a command may override (``BankTrainerSpec.overrides``).
TRAIN_OVERRIDE_OPTIONS: dict[str, object] = {
    "steps": StepsOpt,
    "batch_size": BatchSizeOpt,
    "epochs": EpochsOpt,
    "seed": SeedOpt,
    "threads": ThreadsOpt,
}
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad configs, paths and data become :class:`SimsError`: the root CLI prints them as one line."""
    try:
        yield
    except SimsError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise SimsError(str(e)) from e


def echo_result(result: TrainResult, out: Path, export: Path | None, exported: str = "float16 weights") -> None:
    """Print a run's summary lines, then, with ``--export``, write its float16 weights and say where."""
    from synthesis.model_directory import export_float16

    for line in result.lines:
        typer.echo(line)
    if export is not None:
        typer.echo(f"{exported} in {export_float16(out, export)}")
