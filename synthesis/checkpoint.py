"""Checkpoint directories for the synthesis network, diffusers style.

A model directory holds:

- ``config.json``: the network's constructor arguments (:class:`RefinementConfig`) plus ``_class_name``;
- ``model.safetensors``: the weights (float32 while training, float16 when exported for shipping);
- ``sims.json``: where the weights come from: the VGG used by the loss, the data and bank version,
  the step count, the loss curve, parametric or not, the training config.

A training checkpoint adds ``training_state.pt`` (optimizer state, RNG states, data position), so
training can resume exactly. Every directory is written under a temporary name and renamed into
place, so a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from synthesis.networks.refinement import CascadedRefinementNetwork, RefinementConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "sims.json"
TRAINING_STATE_FILE = "training_state.pt"
CLASS_NAME = "CascadedRefinementNetwork"


@dataclass(frozen=True)
class LoadedModel:
    """A network read back from a model directory, with its ``sims.json`` metadata."""

    model: CascadedRefinementNetwork
    metadata: dict[str, Any]
    path: Path

    @property
    def parametric(self) -> bool:
        """True for the CRN-style baseline, which must be fed an empty canvas."""
        return bool(self.metadata.get("parametric", False))


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_model_files(
    directory: Path, model: CascadedRefinementNetwork, metadata: Mapping[str, Any], dtype: torch.dtype
) -> None:
    config = {"_class_name": CLASS_NAME, **model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "class_name": CLASS_NAME})
    (directory / METADATA_FILE).write_text(json.dumps(dict(metadata), indent=2) + "\n")


def save_pretrained(
    model: CascadedRefinementNetwork,
    directory: str | Path,
    metadata: Mapping[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory atomically (replacing any existing one) and return its path.

    ``dtype=torch.float16`` gives the shipping form; ``training_state`` (optimizer, RNG, data
    position) makes it a resumable training checkpoint.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        _write_model_files(tmp, model, metadata, dtype)
        if training_state is not None:
            torch.save(dict(training_state), tmp / TRAINING_STATE_FILE)
        if directory.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_config(directory: str | Path) -> RefinementConfig:
    """The network config of a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a synthesis model directory (no {CONFIG_FILE})")
    data = json.loads(path.read_text())
    name = data.pop("_class_name", CLASS_NAME)
    if name != CLASS_NAME:
        raise ValueError(f"{path} describes a {name}, not a {CLASS_NAME}")
    return RefinementConfig.from_dict(data)


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``sims.json`` of a model directory (empty if absent)."""
    path = Path(directory) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def from_pretrained(directory: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory as a float32 network in eval mode (float16 exports are upcast)."""
    directory = Path(directory)
    config = read_config(directory)
    model = CascadedRefinementNetwork.from_config(config)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}")
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    return LoadedModel(model.to(device).eval(), read_metadata(directory), directory)


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """The optimizer, RNG and data state of a training checkpoint."""
    path = Path(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a training checkpoint (no {TRAINING_STATE_FILE})")
    return torch.load(path, map_location="cpu", weights_only=True)


def export_float16(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the shipping form of a checkpoint: float16 weights, config and metadata, no optimizer.

    The loss curve is dropped from the metadata (its final value is kept) to keep the export small.
    """
    loaded = from_pretrained(checkpoint)
    meta = dict(loaded.metadata)
    history = meta.pop("loss_history", None)
    if history:
        meta["final_loss"] = history[-1]
    meta["exported_from"] = str(Path(checkpoint).name)
    return save_pretrained(loaded.model, out_dir, meta, dtype=torch.float16)
