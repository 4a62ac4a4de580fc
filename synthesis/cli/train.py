"""``sims train``: one command per network trained on a bank, built from one table, plus synthesis and ``all``.

``sims train transform|ordering|layout-refiner|segmenter`` are one command each, made by
:func:`bank_train_command` from :data:`~synthesis.training.registry.BANK_TRAINERS`: the same options
(``--bank``, ``--out``, ``--config``, ``--val-bank``, ``--resume``, ``--time-limit-minutes``,
``--export``, ``--progress``) plus the ``train`` overrides the network's entry names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from synthesis.cli import train_all, train_synthesis
from synthesis.cli.train_options import (
    TRAIN_OVERRIDE_OPTIONS,
    BankOpt,
    ConfigOpt,
    ExportOpt,
    OutOpt,
    ProgressOpt,
    ResumeOpt,
    TimeLimitOpt,
    ValBankOpt,
    default_config,
    echo_result,
    one_line_errors,
)
from synthesis.training.registry import BANK_TRAINERS, BankTrainerSpec

_EMPTY = inspect.Parameter.empty


def _parameter(name: str, option: object, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=default)


def bank_train_command(spec: BankTrainerSpec) -> Callable[..., None]:
    """The ``sims train <spec.name>`` command: load the run config, apply the overrides, train, report."""

    def command(
        *,
        bank: Path,
        out: Path,
        config: Path | None,
        val_bank: Path | None,
        resume: bool,
        time_limit_minutes: float | None,
        export: Path | None,
        progress: bool,
        **overrides: int | None,
    ) -> None:
        from memory_bank import open_bank

        train = spec.load()
        with one_line_errors():  # the config first: a bad one is reported before any bank is opened
            run_config = train.run_config.load(config or default_config(spec.name))
            run_config = run_config.with_overrides(**{f"train.{k}": v for k, v in overrides.items()})
            val = open_bank(val_bank) if val_bank else None
            options = {"resume": resume, "progress": progress, "time_limit_minutes": time_limit_minutes}
            result = train(open_bank(bank), out, run_config, val_bank=val, **options)
        echo_result(result, out, export, spec.exported)

    # The options typer reads, in the order --help lists them: the shared ones around the network's overrides.
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            _parameter("bank", BankOpt, _EMPTY),
            _parameter("out", OutOpt, _EMPTY),
            _parameter("config", ConfigOpt),
            _parameter("val_bank", ValBankOpt),
            _parameter("resume", ResumeOpt, False),
            *(_parameter(key, TRAIN_OVERRIDE_OPTIONS[key]) for key in spec.overrides),
            _parameter("time_limit_minutes", TimeLimitOpt),
            _parameter("export", ExportOpt),
            _parameter("progress", ProgressOpt, True),
        ]
    )
    command.__doc__ = spec.description
    return command


app = typer.Typer(help="Train the SIMS networks.", no_args_is_help=True)
# synthesis's own command first, then the bank-trained networks, then `all` (the order of --help).
app.registered_commands.extend(train_synthesis.app.registered_commands)
for _spec in BANK_TRAINERS.values():
    app.command(_spec.name)(bank_train_command(_spec))
app.registered_commands.extend(train_all.app.registered_commands)
