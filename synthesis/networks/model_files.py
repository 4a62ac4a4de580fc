"""What the small canvas networks (T, ordering) share: their model directory and their conv block.

A model directory holds ``config.json`` (the constructor's arguments plus ``_class_name``, as
diffusers writes them) and ``model.safetensors``. Files are written under temporary names and
renamed, so a reader (or a killed run) never sees a half-written one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def config_to_dict(config: Any, class_name: str) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-ready dict (tuples as lists) tagged with ``_class_name``."""
    d = asdict(config)
    return {"_class_name": class_name, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def config_kwargs(d: dict[str, Any], class_name: str) -> dict[str, Any]:
    """Inverse of :func:`config_to_dict`: the constructor's arguments; another network's config is an error."""
    d = dict(d)
    name = d.pop("_class_name", class_name)
    d.pop("model", None)  # the tag of checkpoints written before ``_class_name``
    if name != class_name:
        raise ValueError(f"this config is for {name}, not {class_name}")
    return d


def write_model_dir(directory: str | Path, config: dict[str, Any], model: nn.Module, half: bool = True) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (float16 unless ``half`` is False) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "class_name": str(config.get("_class_name", ""))}
    save_file(tensors, str(out / f".{WEIGHTS_NAME}.tmp"), metadata=meta)
    (out / f".{CONFIG_NAME}.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(out / f".{WEIGHTS_NAME}.tmp", out / WEIGHTS_NAME)
    os.replace(out / f".{CONFIG_NAME}.tmp", out / CONFIG_NAME)
    return out


def read_model_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config dict and the float32 state dict of a directory written by :func:`write_model_dir`."""
    d = Path(directory)
    if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{d} holds no {CONFIG_NAME} + {WEIGHTS_NAME} checkpoint")
    config = json.loads((d / CONFIG_NAME).read_text())
    return config, {k: v.float() for k, v in load_file(str(d / WEIGHTS_NAME)).items()}


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Conv 3x3 (optionally strided) -> GroupNorm -> LeakyReLU(0.2)."""
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(groups, cout),
        nn.LeakyReLU(0.2, inplace=True),
    )
