"""Config files: JSON read into frozen config dataclasses, validated by pydantic, with one-line errors.

Every SIMS config (a network's ``config.json``, a training run's config file) is a frozen dataclass.
:func:`parse_config` validates a dict against one with :class:`pydantic.TypeAdapter`: types are
checked and coerced (JSON lists become tuples), unknown keys are refused at every level, and the
dataclass's own ``__post_init__`` checks still run. Any failure is a :class:`ConfigError`, a
:class:`~memory_bank.errors.SimsError` whose message is one line naming the offending key, so
``sims`` prints it and exits 2 instead of showing a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from memory_bank.atomic import read_json
from memory_bank.errors import SimsError

C = TypeVar("C")

#: Top-level keys a config file may carry as comments (JSON has none); they are not part of the config.
COMMENT_KEYS = frozenset({"_comment"})

_UNKNOWN_KEY_ERRORS = frozenset({"unexpected_keyword_argument", "extra_forbidden"})


class ConfigError(SimsError, ValueError):
    """A config (file or dict) does not describe a valid config: wrong type, unknown key, bad value."""


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


class JsonConfig:
    """Base of the config dataclasses: JSON round trips, files and overrides through this module."""

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Validate a dict (:func:`parse_config`)."""
        return parse_config(cls, data)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """Read and validate a JSON config file."""
        return load_config_file(cls, path)

    def with_overrides(self: C, **changes: Any) -> C:
        """A copy with dotted-path overrides, e.g. ``train.steps=100`` as ``{"train.steps": 100}``; None skips."""
        return with_overrides(self, changes)


def parse_config(cls: type[C], data: Mapping[str, Any], *, source: str | None = None) -> C:
    """``data`` as a ``cls`` instance; raises :class:`ConfigError` (one line, prefixed with ``source``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source + ': ' if source else ''}expected a JSON object, got {type(data).__name__}")
    body = {k: v for k, v in data.items() if k not in COMMENT_KEYS}
    try:
        return _adapter(cls).validate_python(body, extra="forbid")
    except ValidationError as e:
        message = "; ".join(_describe(e))
        raise ConfigError(f"{source}: {message}" if source else message) from None


def load_config_file(cls: type[C], path: str | Path) -> C:
    """Read and validate a JSON config file (see :func:`parse_config`)."""
    data = read_json(path, ConfigError, missing="config file not found: {path}")
    return parse_config(cls, data, source=str(path))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples as lists, nested configs as dicts)."""
    return _adapter(type(config)).dump_python(config, mode="json")


def with_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """A copy with dotted-path values replaced, e.g. ``{"train.steps": 100}``; None values are skipped."""
    for key, value in overrides.items():
        if value is not None:
            config = _replace_path(config, key.split("."), value)
    return config


def _replace_path(obj: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"no config key {head!r} in {type(obj).__name__}")
    new = _replace_path(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: new})  # type: ignore[type-var]


def _describe(error: ValidationError) -> list[str]:
    """One short phrase per problem; unknown keys are grouped by the section they are in."""
    unknown: dict[str, list[str]] = {}
    parts: list[str] = []
    for e in error.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc)
        if e["type"] in _UNKNOWN_KEY_ERRORS:
            unknown.setdefault(".".join(loc[:-1]), []).append(loc[-1])
        elif e["type"] == "missing":
            parts.append(f"{where} is required")
        elif e["type"] == "value_error":  # a dataclass's own check: its message says what is wrong
            msg = str(e["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        else:
            got = repr(e.get("input"))
            parts.append(f"{where}: {e['msg']} (got {got if len(got) <= 60 else got[:57] + '...'})")
    for section, keys in unknown.items():
        parts.insert(0, f"unknown {section + ' ' if section else ''}config keys: {sorted(keys)}")
    return parts
