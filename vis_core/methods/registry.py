"""String-name registry of methods.

A *method* is a subclass of :class:`vis_core.methods.base.VISMethod` (the contract: training hook, inference
hooks of its kind, optional hooks). Register one with::

    @dataclass
    class MyConfig:
        num_classes: int = 40
        num_queries: int = 100

    @register_method("my_method", config=MyConfig)
    class MyMethod(VISMethod):
        kind = "online"
        def __init__(self, cfg: MyConfig): ...

Registering checks the contract of the method's kind (its inference hooks exist) and records the kind, which
the inference runner, ``vis bench`` and the report read (:func:`method_kind_of`).

and build it from the ``method`` / ``model`` keys of a ``TrainConfig`` with ``build_method(cfg)``. When a
config class is given, the ``model`` dict is turned into it (by its ``from_dict`` classmethod when it has one,
else field by field, nested dataclasses included) and unknown keys or wrongly typed values are errors naming
the key; otherwise the factory gets the plain dict.

Modules under ``vis_core.methods`` register themselves on import; ``build_method`` imports them lazily on the
first lookup of an unknown name, so callers never need to import a method's module by hand.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from vis_core.io.config import ConfigError, from_dict
from vis_core.methods.base import check_contract

__all__ = ["register_method", "build_method", "get_method", "available_methods", "method_config_from_dict",
           "segmenter_family", "method_kind_of"]


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    name: str
    factory: Callable[..., nn.Module]
    config: type | None
    kind: str | None  # online | clip | offline, None without video inference (vis_core.methods.base)


_REGISTRY: dict[str, MethodEntry] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def register_method(name: str, config: type | None = None) -> Callable:
    """Decorator registering the :class:`VISMethod` subclass ``factory`` under ``name``.

    Args:
        name: the string used in configs (``method: name``).
        config: optional dataclass type; ``build_method`` converts the ``model`` dict into it.
    Raises ``TypeError`` when the class does not fulfil the contract of its kind.
    """
    if config is not None and not dataclasses.is_dataclass(config):
        raise TypeError(f"register_method({name!r}): config must be a dataclass type, got {config!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        existing = _REGISTRY.get(name)
        # re-registering the same factory (module re-import) is fine; two methods under one name are not
        if existing is not None and existing.factory.__qualname__ != factory.__qualname__:
            raise ValueError(f"method {name!r} is already registered by {existing.factory!r}")
        check_contract(factory, name)
        _REGISTRY[name] = MethodEntry(name, factory, config, factory.kind)
        return factory

    return decorator


def _import_method_modules() -> None:
    """Import every module of the ``vis_core.methods`` package so that their decorators run."""
    import vis_core.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        module_name = f"{pkg.__name__}.{info.name}"
        if info.name == "registry" or module_name in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(module_name)
        except ImportError as exc:  # a method whose optional dependency is missing must not hide the others
            _IMPORT_ERRORS[module_name] = f"{type(exc).__name__}: {exc}"


def get_method(name: str) -> MethodEntry:
    """Return the registry entry of ``name``; unknown names list what is available."""
    if name not in _REGISTRY:
        _import_method_modules()
    if name not in _REGISTRY:
        msg = f"unknown method {name!r}; available: {sorted(_REGISTRY)}"
        if _IMPORT_ERRORS:
            msg += f"; modules that failed to import: {_IMPORT_ERRORS}"
        raise KeyError(msg)
    return _REGISTRY[name]


def segmenter_family(name: str) -> str:
    """The segmenter family of method ``name`` (``deformable_detr``, ``mask2former``): methods of one family
    can start from one shared pre-training of that segmenter."""
    family = get_method(name).factory.segmenter_family
    if family is None:
        raise KeyError(f"method {name!r} declares no segmenter_family")
    return family


def method_kind_of(name: str) -> str | None:
    """The kind of method ``name``: ``online``, ``clip``, ``offline`` or None (no video inference)."""
    return get_method(name).kind


def available_methods(kind: str | None = "any") -> list[str]:
    """Registered method names (only those of ``kind`` when given: ``online``, ``clip``, ``offline``, None)."""
    _import_method_modules()
    return sorted(n for n, e in _REGISTRY.items() if kind == "any" or e.kind == kind)


def method_config_from_dict(config_cls: type, values: Mapping[str, Any], where: str = "model") -> Any:
    """Build the dataclass ``config_cls`` from ``values``; unknown keys raise naming ``where`` and the key."""
    custom = getattr(config_cls, "from_dict", None)
    if callable(custom):
        try:
            return custom(dict(values))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return from_dict(config_cls, dict(values), where)


def build_method(cfg: Any, model_cfg: Mapping[str, Any] | None = None, where: str = "model") -> nn.Module:
    """Build a registered method.

    Args:
        cfg: a ``TrainConfig`` (uses ``cfg.method`` and ``cfg.model``) or a method name (then ``model_cfg``).
        model_cfg: the method's options when ``cfg`` is a name.
        where: prefix for error messages (e.g. ``"params.yaml [train] model"``).
    """
    if isinstance(cfg, str):
        name, values = cfg, dict(model_cfg or {})
    else:
        name, values = cfg.method, dict(cfg.model or {})
    entry = get_method(name)
    if entry.config is None:
        return entry.factory(values)
    return entry.factory(method_config_from_dict(entry.config, values, where=where))
