"""Typed configs from plain mappings: the strict dataclass parser every part of vis_core uses.

``from_dict(SomeConfig, mapping, where)`` builds a dataclass recursively and checks every value against its
annotation; an unknown key or a wrongly typed value raises :class:`ConfigError` whose message names ``where``
(the file, section or variant) and the key. ``load_yaml_section`` reads one mapping of a YAML file and
``apply_overrides`` applies ``key.sub=value`` command-line overrides (one level: no ``_BASE_`` chains).

This module imports neither torch nor any other part of vis_core, so models, methods and the engine can all
use it without import cycles (``vis_core.engine.config`` holds the training configs built on it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = ["ConfigError", "from_dict", "to_dict", "load_yaml_section", "apply_overrides"]


class ConfigError(ValueError):
    """A configuration problem; the message names the file, section and key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check / convert ``value`` to the annotated type ``tp``; raise ``ConfigError`` naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads "1e-4" (no dot) as a string; accept any number spelled as a float
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys raise ``ConfigError``.

    Args:
        cls: a dataclass type.
        data: its values; missing keys keep their defaults.
        where: location used in error messages, e.g. ``"params.yaml [train] solver"``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {', '.join(names)})")
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # __post_init__ checks of the dataclass
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(cfg: Any) -> dict:
    """Plain-python (YAML/JSON-serialisable) view of a config dataclass."""
    return dataclasses.asdict(cfg)


def load_yaml_section(path: str | Path, section: str | None = None) -> dict:
    """Read ``path`` and return the mapping at ``section`` (dotted for nested ones, e.g. ``train.ovis``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if section:
        for part in section.split("."):
            if not isinstance(data, dict) or part not in data:
                known = sorted(data) if isinstance(data, dict) else []
                raise ConfigError(f"{path}: no section {section!r} (missing {part!r}; found {known})")
            data = data[part]
    if not isinstance(data, dict):
        raise ConfigError(f"{path} [{section}]: expected a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str], where: str = "--set") -> dict:
    """Return a copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"{where}: bad key {key!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} {key}: cannot parse value {raw!r}: {exc}") from exc
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: {key!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
