"""What the trainers share of optimisation: AdamW, one optimizer step, and the learning-rate schedules.

The run itself (directory, resume, checkpoints, time limit) is :mod:`synthesis.training.harness`'s.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn


class WarmupCosine(Protocol):
    """A ``train`` section scheduled by steps: peak ``lr``, ``warmup_steps``, ``steps``."""

    lr: float
    warmup_steps: int
    steps: int


def warmup_cosine(step: int, config: WarmupCosine) -> float:
    """The learning rate at ``step``: linear warm-up, then cosine decay to 1% of ``lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def warmup_cosine_by_progress(peak: float, progress: float, warmup: float = 0.05) -> float:
    """The learning rate at ``progress`` (0..1 of steps or time, whichever is further): linear warm-up
    over the first ``warmup`` of the run, then cosine decay to zero at 1."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


class AdamWSettings(Protocol):
    """A ``train`` section with AdamW's peak ``lr`` and ``weight_decay``."""

    lr: float
    weight_decay: float


def adamw(model: nn.Module, settings: AdamWSettings) -> torch.optim.AdamW:
    """The bank trainers' optimizer: AdamW over ``model``'s parameters at the settings' ``lr`` and ``weight_decay``."""
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (a schedule's value for this step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float | None = None) -> float:
    """Backpropagate ``loss`` into cleared gradients and take one ``optimizer`` step; returns the loss.

    With ``max_grad_norm`` the gradients of the optimizer's parameters are first clipped to that total norm.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
    return float(loss.detach())


__all__ = [
    "AdamWSettings",
    "WarmupCosine",
    "adamw",
    "optimizer_step",
    "set_lr",
    "warmup_cosine",
    "warmup_cosine_by_progress",
]
