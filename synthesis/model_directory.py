"""Model directories: one on-disk format and one pair of verbs for every SIMS network, diffusers style.

A model directory holds:

- ``config.json``: ``_class_name`` (which network) and the network's config, its constructor's arguments;
- ``model.safetensors``: the weights (float32 as trained, float16 once exported for shipping);
- ``sims.json`` (optional): where the weights come from: data, steps, loss curve, training config;
- ``training_state.pt`` (optional): optimizer, RNG and data position, which make it a resumable
  training checkpoint (see :mod:`synthesis.training.harness`);
- files a network keeps beside its weights (the ordering network's ``class_prior.json``).

:func:`save_pretrained` writes the whole directory under a temporary name and renames it into
place, so a reader never sees half a directory. :func:`from_pretrained` picks the network class
from ``_class_name``: each network class registers itself, with its config class, by subclassing
:class:`PretrainedNetwork`. A training run directory (a ``latest.json`` naming its newest
checkpoint) is accepted wherever a model directory is.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memory_bank.errors import SimsError
from synthesis.configs import ConfigError, JsonConfig, config_to_dict, parse_config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "sims.json"
TRAINING_STATE_FILE = "training_state.pt"
#: A run directory's pointer to its newest checkpoint: ``{"checkpoint": "checkpoints/step-00000500", ...}``.
LATEST_FILE = "latest.json"
#: Files every model directory may hold; anything else in it is an extra file of the network.
MODEL_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, TRAINING_STATE_FILE})

#: The modules whose networks register themselves, imported on the first lookup of an unknown
#: ``_class_name`` so that loading a directory needs no import by the caller.
NETWORK_MODULES = (
    "synthesis.networks.refinement",
    "synthesis.networks.layout_refiner",
    "synthesis.networks.transform",
    "synthesis.networks.ordering",
    "synthesis.networks.segmenter",
    "synthesis.networks.spade",
)

#: ``config.json`` files written before ``_class_name``, as shipped in ``weights/segmenter``, name
#: their network with ``model_type``; read only, never written.
_LEGACY_MODEL_TYPES = {"sims-segmenter": "SegmentationNet"}
#: Keys of older ``config.json`` files that are no part of the config: ``model_type`` (above) and the
#: ``model`` tag that T and ordering checkpoints carried before ``_class_name``.
_LEGACY_KEYS = ("model_type", "model")

N = TypeVar("N", bound="PretrainedNetwork")


class ModelNotFoundError(SimsError, FileNotFoundError):
    """No model directory (``config.json`` + ``model.safetensors``) at the given path."""


@dataclass(frozen=True)
class NetworkType:
    """A registered network: its class, its config class and what a person calls it (for messages)."""

    class_name: str
    network: type[PretrainedNetwork]
    config: type
    kind: str


_REGISTRY: dict[str, NetworkType] = {}


class NetworkConfig(JsonConfig):
    """Base of the network config dataclasses: JSON round trips that know ``_class_name``."""

    @classmethod
    def from_dict(cls: type[Any], data: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; a ``_class_name`` naming another network is an error."""
        return _parse(data, network_for_config(cls).network)[1]


class PretrainedNetwork(nn.Module):
    """Base of every SIMS network: registration by class statement, and the model-directory verbs.

    ``class SegmentationNet(PretrainedNetwork, config_class=SegmenterConfig, kind="segmenter")``
    registers the class under its name. A network keeps its config as ``self.config``, and
    :meth:`from_config` builds it from one (by default, the config's fields are its constructor's arguments).
    """

    config: Any

    def __init_subclass__(cls, *, config_class: type | None = None, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if config_class is not None:
            _REGISTRY[cls.__name__] = NetworkType(cls.__name__, cls, config_class, kind or cls.__name__)

    @classmethod
    def from_config(cls: type[N], config: Any) -> N:
        """Build the (untrained) network a config describes."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

    @classmethod
    def from_pretrained(cls: type[N], directory: str | Path, *, device: str | torch.device = "cpu") -> N:
        """Load a model directory holding this network (see :func:`from_pretrained`)."""
        return from_pretrained(directory, network=cls, device=device)

    def save_pretrained(self, directory: str | Path, metadata: Mapping[str, Any] | None = None, **kwargs: Any) -> Path:
        """Write this network as a model directory (see :func:`save_pretrained`)."""
        return save_pretrained(self, directory, metadata, **kwargs)


# ---------------------------------------------------------------- the registry


def network_type(class_name: str) -> NetworkType:
    """The registered network called ``class_name``."""
    if class_name not in _REGISTRY:
        for module in NETWORK_MODULES:
            importlib.import_module(module)
    if class_name not in _REGISTRY:
        raise ConfigError(f"unknown network class {class_name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[class_name]


def network_for_config(config_class: type) -> NetworkType:
    """The registered network whose config class is ``config_class``."""
    for entry in _REGISTRY.values():
        if entry.config is config_class:
            return entry
    raise ConfigError(f"no network is registered with config class {config_class.__name__}")


def _type_of(model: nn.Module) -> NetworkType:
    entry = _REGISTRY.get(type(model).__name__)
    if entry is None or entry.network is not type(model):
        raise TypeError(f"{type(model).__name__} is not a registered network (subclass PretrainedNetwork)")
    return entry


def _parse(
    data: Mapping[str, Any], network: type[PretrainedNetwork] | None, source: str | None = None
) -> tuple[NetworkType, Any]:
    """The network type and config a ``config.json`` dict describes; ``network`` is the class expected."""
    body = dict(data)
    name = body.pop("_class_name", None)
    legacy = body.get("model_type")
    for key in _LEGACY_KEYS:
        body.pop(key, None)
    if name is None and legacy is not None:
        name = _LEGACY_MODEL_TYPES.get(str(legacy), str(legacy))
    if name is None:
        if network is None:
            raise ConfigError(f"{source or 'config'}: no _class_name says which network it describes")
        name = network.__name__
    entry = network_type(str(name))
    if network is not None and entry.network is not network:
        raise ConfigError(f"{source + ': ' if source else ''}this config is for {name}, not {network.__name__}")
    return entry, parse_config(entry.config, body, source=source)


# ---------------------------------------------------------------- reading


def resolve(directory: str | Path) -> Path:
    """``directory`` itself, or for a training run directory the newest checkpoint its ``latest.json`` names."""
    d = Path(directory)
    if not (d / CONFIG_FILE).is_file() and (d / LATEST_FILE).is_file():
        target = d / json.loads((d / LATEST_FILE).read_text())["checkpoint"]
        if (target / CONFIG_FILE).is_file():
            return target
    return d


def _require(directory: Path, name: str, network: type[PretrainedNetwork] | None) -> Path:
    path = directory / name
    if not path.is_file():
        kind = _REGISTRY[network.__name__].kind if network is not None else "model"
        raise ModelNotFoundError(
            f"no {kind} checkpoint at {directory} (a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    return path


def read_config(directory: str | Path, *, network: type[PretrainedNetwork] | None = None) -> Any:
    """The network config of a model directory (``network``: the class it must hold)."""
    directory = resolve(directory)
    path = _require(directory, CONFIG_FILE, network)
    return _parse(json.loads(path.read_text()), network, str(path))[1]


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``sims.json`` of a model directory (empty if it has none)."""
    path = resolve(directory) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """The training state (optimizer, RNG, data position, ...) of a checkpoint."""
    path = resolve(directory) / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a training checkpoint (no {TRAINING_STATE_FILE})")
    return torch.load(path, map_location="cpu", weights_only=True)


def from_pretrained(directory: str | Path, *, network: type[N] | None = None, device: str | torch.device = "cpu") -> N:
    """Load a model directory as a float32 network in eval mode (float16 weights are upcast).

    The class comes from ``config.json``; ``network`` makes any other class an error.
    """
    directory = resolve(directory)
    config_path = _require(directory, CONFIG_FILE, network)
    entry, config = _parse(json.loads(config_path.read_text()), network, str(config_path))
    model = entry.network.from_config(config)
    weights = _require(directory, WEIGHTS_FILE, network)
    # Floating tensors come back as float32; integer buffers (BatchNorm's step count) keep their type.
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()  # type: ignore[return-value]


# ---------------------------------------------------------------- writing


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    metadata: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    training_state: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write ``model`` as a model directory, atomically replacing any directory there; returns its path.

    ``dtype`` casts the floating weights (``torch.float16`` is the shipping form; None keeps them);
    ``metadata`` becomes ``sims.json``; ``training_state`` makes the directory a resumable
    checkpoint; ``extra_files`` (name -> content) are written beside the weights.
    """
    entry = _type_of(model)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        config = {"_class_name": entry.class_name, **config_to_dict(model.config)}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "class_name": entry.class_name})
        if metadata is not None:
            (tmp / METADATA_FILE).write_text(json.dumps(dict(metadata), indent=2) + "\n")
        if training_state is not None:
            torch.save(dict(training_state), tmp / TRAINING_STATE_FILE)
        for name, content in (extra_files or {}).items():
            if name in MODEL_FILES or Path(name).name != name:
                raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
            (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
        _move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _move_into_place(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
        return
    # A directory cannot be renamed over a non-empty one: move the old one aside first.
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def export_float16(source: str | Path, out_dir: str | Path) -> Path:
    """Write the shipping form of a checkpoint (or of a run's newest one): float16 weights, no training state.

    The config, the metadata and the network's extra files are kept; the loss curve is dropped
    from the metadata (its last value is kept as ``final_loss``) to keep the export small.
    """
    source = resolve(source)
    model = from_pretrained(source)
    meta = read_metadata(source)
    history = meta.pop("loss_history", None)
    if history:
        meta["final_loss"] = history[-1]
    meta["exported_from"] = source.name
    extras = {p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file() and p.name not in MODEL_FILES}
    return save_pretrained(model, out_dir, meta, dtype=torch.float16, extra_files=extras)


__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "TRAINING_STATE_FILE",
    "WEIGHTS_FILE",
    "ModelNotFoundError",
    "NetworkConfig",
    "PretrainedNetwork",
    "export_float16",
    "from_pretrained",
    "load_training_state",
    "network_type",
    "read_config",
    "read_metadata",
    "resolve",
    "save_pretrained",
]
