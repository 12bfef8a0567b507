"""Typed training configuration built from one section of a YAML file, plus ``--set key=value`` overrides.

A reproduction's ``params.yaml`` holds e.g.::

    train:
      method: mask2former_frame
      model: {num_classes: 40, num_queries: 100}
      data: {json: data/train.json, image_root: data/train/JPEGImages, num_frames: 2}
      solver: {lr: 1.0e-4, max_iter: 6000, steps: [4000], batch_size: 16, clip_grad: 0.01}
      output_dir: runs/m2f

and ``vis train --config params.yaml --section train --set model.num_queries=10`` builds a ``TrainConfig``
from it. There is exactly one level of override (the command line over the file section): no ``_BASE_``
chains. Unknown keys and values of the wrong type are errors naming the file, the section and the key.
``model`` is a plain dict here; the method registry turns it into the method's own dataclass (same checks).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "SolverConfig",
    "TrainConfig",
    "from_dict",
    "to_dict",
    "load_config",
    "load_yaml_section",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file, section and key."""


@dataclass
class DataConfig:
    """Training clips (see ``vis_core.data.clips.VISClipDataset``)."""

    # "vis" (video clips of an annotation file), "coco_pseudo" (pseudo videos from a COCO instance set),
    # "synthetic" (clips of videos rendered on the fly by the generator, a stream that is never repeated),
    # "synthetic_pseudo" (pseudo videos of synthetic still images rendered on the fly) or "synthetic_objects"
    # (object-centric synthetic images for backbone classification, the smoke profile's ImageNet)
    kind: str = "vis"
    json: str = ""  # YouTube-VIS / OVIS style annotation file (COCO instances file for coco_pseudo)
    image_root: str = ""  # folder holding <video>/<frame>.jpg as named in the json
    # synthetic kinds: the generator's preset, seed and knobs, e.g. {preset: ovis, seed: 0, height: 96}
    synthetic: dict = field(default_factory=dict)
    stream_length: int = 100_000  # synthetic kinds: distinct videos (images) in the stream, i.e. one epoch
    sampling: str = "clip"  # "pair" (IDOL key + reference frame) or "clip" (MinVIS/DVIS/VITA)
    num_frames: int = 2  # frames per training clip
    frame_range: int = 20  # max distance (frames) between the frames of a clip
    min_sizes: list[int] = field(default_factory=lambda: [288, 320, 352, 384, 416, 448, 480, 512])
    max_size: int = 768
    hflip: bool = True
    num_workers: int = 0
    pseudo_mode: str = "crop_pair"  # coco_pseudo: "crop_pair" (IDOL, reports 000/001) or "rotate3" (SeqFormer)
    # coco_pseudo: COCO category id -> VIS category id (pairs); COCO categories not listed are dropped. Empty:
    # keep the COCO categories as they are.
    category_map: list[list[int]] = field(default_factory=list)
    vis_json: str = ""  # coco_pseudo: the VIS train json whose categories define the labels (with category_map)


@dataclass
class SolverConfig:
    """AdamW + step schedule (Mask2Former / IDOL recipe)."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0  # norm layers (Mask2Former: 0)
    weight_decay_embed: float = 0.0  # embeddings / position tables (Mask2Former: 0)
    backbone_multiplier: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_iter: int = 6000
    steps: list[int] = field(default_factory=list)  # iterations at which the LR is multiplied by gamma
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 1.0  # LR multiplier at iteration 0, linearly raised to 1 over warmup_iters
    clip_grad: float = 0.01  # max global grad norm (Mask2Former 0.01, IDOL 0.1); <= 0 disables
    batch_size: int = 16  # global batch (clips), split evenly over the DDP processes
    amp: bool = False  # mixed precision (float16 autocast + GradScaler); CUDA only, ignored on CPU


@dataclass
class TrainConfig:
    method: str = ""
    model: dict = field(default_factory=dict)  # the method's own options, checked by its config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    checkpoint_period: int = 1000
    checkpoint_keep: int = 0  # numbered checkpoints to keep besides last.pth; 0 keeps all
    log_period: int = 20
    seed: int = 0
    output_dir: str = "output"
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1, ...
    cpu_threads: int = 0  # torch intra-op threads per process; 0 keeps torch's default
    init_weights: str = ""  # checkpoint whose model weights initialise the method (e.g. COCO pre-training)
    find_unused_parameters: bool = False  # DDP option for methods with conditionally used heads


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


def load_config(
    path: str | Path, section: str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """``TrainConfig`` from ``section`` of the YAML file ``path`` with command-line ``overrides``."""
    data = apply_overrides(load_yaml_section(path, section), list(overrides or []))
    where = f"{path} [{section}]" if section else str(path)
    cfg = from_dict(TrainConfig, data, where)
    if not cfg.method:
        raise ConfigError(f"{where}: missing key 'method'")
    return cfg
