"""``sims train``: one group, with each network's command in its own module, and ``sims train all``."""

from __future__ import annotations

import typer

from synthesis.cli import (
    train_all,
    train_layout_refiner,
    train_ordering,
    train_segmenter,
    train_synthesis,
    train_transform,
)

app = typer.Typer(help="Train the SIMS networks.", no_args_is_help=True)
for _module in (train_synthesis, train_transform, train_ordering, train_layout_refiner, train_segmenter, train_all):
    # Merge each module's commands into this group: ``sims train synthesis``, not ``sims train synthesis synthesis``.
    app.registered_commands.extend(_module.app.registered_commands)
