"""The networks trained on a bank, by name: one table for ``sims train <network>`` and ``sims train all``.

Each entry names a :class:`~synthesis.training.harness.BankTraining` (the one entry shape, ``train_x(bank,
out, config, *, val_bank, resume, progress, time_limit_minutes) -> TrainResult``) and what its command
lets a caller override. The trainer's module is imported only when the entry is loaded: the table is
read when the CLI starts, and the trainers import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthesis.training.harness import BankTraining


@dataclass(frozen=True)
class BankTrainerSpec:
    """One network trained on a bank.

    Attributes:
        name: its ``sims train`` command, ``configs/`` folder, ``sims train all`` stage and ``weights/`` folder.
        module: the module that defines ``train_<name>`` (dashes as underscores).
        description: one line on what it trains (the command's help).
        overrides: the ``train`` keys the command overrides by option (``--steps``, ``--epochs``, ...).
        exported: what its float16 export holds, as the command reports it.
    """

    name: str
    module: str
    description: str
    overrides: tuple[str, ...] = ("steps", "batch_size", "seed", "threads")
    exported: str = "float16 weights"

    @property
    def key(self) -> str:
        """The name as a Python identifier: ``layout_refiner`` (a config set's key, a :class:`Chain` field)."""
        return self.name.replace("-", "_")

    def load(self) -> BankTraining:
        """Its ``train_<key>`` (imports the trainer's module)."""
        return getattr(importlib.import_module(self.module), f"train_{self.key}")


#: In the order ``sims train all`` trains them (between them it writes the canvas cache and trains synthesis).
BANK_TRAINERS: dict[str, BankTrainerSpec] = {
    spec.name: spec
    for spec in (
        BankTrainerSpec(
            "transform",
            "synthesis.training.transform",
            "Train T to undo random affine moves and cuts of real bank segments (L1 on colour and mask).",
        ),
        BankTrainerSpec(
            "ordering",
            "synthesis.training.ordering",
            "Train the ordering network on neighbour pairs labelled by the layout rule; fit the class-prior baseline.",
            overrides=("epochs", "seed", "threads"),
            exported="float16 weights and class_prior.json",
        ),
        BankTrainerSpec(
            "layout-refiner",
            "synthesis.training.layout_refiner",
            "Train the layout refiner on (coarse, fine) pairs coarsened on the fly from the bank's label maps.",
        ),
        BankTrainerSpec(
            "segmenter",
            "synthesis.training.segmenter",
            "Train a compact U-Net on real photos: the probe that scores synthesized images.",
        ),
    )
}

__all__ = ["BANK_TRAINERS", "BankTrainerSpec"]
