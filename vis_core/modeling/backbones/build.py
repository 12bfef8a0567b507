"""Backbone registry, ``build_backbone(cfg)`` and checkpoint loading with a missing/unexpected-key report.

Every backbone maps a normalised image ``(N, 3, H, W)`` to ``dict(res2..res5)`` at strides 4, 8, 16, 32 and
has ``out_channels`` / ``out_strides`` dicts and ``size_divisibility`` (32).

Checkpoints are local files (nothing is downloaded):

* ``.pth`` / ``.pt``: a torch state dict, or a dict holding one under ``model`` (detectron2 / Swin / DETR
  checkpoints) or ``state_dict``;
* ``.pkl``: detectron2's model-zoo pickle, ``{"model": {name: numpy array}, ...}`` (or a bare mapping).

Both are read as data only (:mod:`vis_core.io.weights`): a file that holds anything but tensors, arrays and
plain containers is refused with an error naming it, and nothing it names is executed.

Keys are remapped before loading: the first of ``prefixes`` that some keys carry is stripped (``backbone.``
for a whole Mask2Former / MinVIS checkpoint, ``module.`` for a DDP one) and keys without it are ignored (they
belong to other parts of the model); then the backbone's own ``remap_checkpoint_keys`` (torchvision ResNet
names -> detectron2 names) runs. The returned :class:`LoadReport` lists loaded, missing, unexpected and
shape-mismatched keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from vis_core.io.weights import load_detectron2_pickle, load_torch_file
from vis_core.modeling.backbones.resnet import RESNET_SPECS, build_resnet
from vis_core.modeling.backbones.swin import SWIN_SPECS, build_swin
from vis_core.modeling.backbones.vit_adapter import VIT_ADAPTER_SPECS, vit_adapter_factory

try:  # optional: pretrained Swin / ViT models on machines where timm imports (never required)
    import timm
except ImportError:  # the CPU torch wheel here has no torchvision, hence no timm
    timm = None

__all__ = [
    "BackboneConfig",
    "BACKBONES",
    "register_backbone",
    "build_backbone",
    "read_checkpoint",
    "load_weights",
    "load_backbone_weights",
    "LoadReport",
    "TimmBackbone",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIXES = ("module.backbone.", "backbone.", "module.")


@dataclass
class BackboneConfig:
    """What ``build_backbone`` needs.

    Attributes:
        name: registry name (``resnet_tiny``, ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
            ``swin_t``, ``swin_s``, ``swin_b``, ``swin_l``) or ``timm:<model name>`` where timm imports.
        weights: local checkpoint to load ("" = random init).
        norm: ResNet norm (detectron2 default ``FrozenBN``; ``BN``, ``SyncBN``, ``GN``); ignored by Swin.
        freeze_at: 0 trains everything (Mask2Former's ``FREEZE_AT: 0``); 1 freezes the stem / patch embedding;
            k >= 2 also res2..res{k}.
        drop_path_rate: Swin stochastic depth (0.3 in the Mask2Former Swin configs).
        out_features: returned feature names.
        overrides: extra constructor arguments, e.g. ``{"depths": (2, 2, 2, 2)}`` for a reduced-depth Swin.
    """

    name: str = "resnet50"
    weights: str = ""
    norm: str = "FrozenBN"
    freeze_at: int = 0
    drop_path_rate: float = 0.3
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    overrides: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping) -> BackboneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown backbone config keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        if "out_features" in values:
            values["out_features"] = tuple(values["out_features"])
        return cls(**values)


BACKBONES: dict[str, Callable[[BackboneConfig], nn.Module]] = {}


def register_backbone(name: str) -> Callable:
    """Decorator adding ``factory(cfg: BackboneConfig) -> nn.Module`` to the registry under ``name``."""

    def wrap(factory: Callable[[BackboneConfig], nn.Module]) -> Callable[[BackboneConfig], nn.Module]:
        if name in BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered")
        BACKBONES[name] = factory
        return factory

    return wrap


def _resnet_factory(name: str) -> Callable[[BackboneConfig], nn.Module]:
    def factory(cfg: BackboneConfig) -> nn.Module:
        return build_resnet(
            name, norm=cfg.norm, freeze_at=cfg.freeze_at, out_features=cfg.out_features, **cfg.overrides
        )

    return factory


def _swin_factory(name: str) -> Callable[[BackboneConfig], nn.Module]:
    def factory(cfg: BackboneConfig) -> nn.Module:
        return build_swin(
            name,
            freeze_at=cfg.freeze_at,
            drop_path_rate=cfg.drop_path_rate,
            out_features=cfg.out_features,
            **cfg.overrides,
        )

    return factory


for _name in RESNET_SPECS:
    register_backbone(_name)(_resnet_factory(_name))
for _name in SWIN_SPECS:
    register_backbone(_name)(_swin_factory(_name))
for _name in VIT_ADAPTER_SPECS:  # vit_adapter_large (DVIS DINOv2 ViT-L), vit_adapter_tiny (smoke)
    register_backbone(_name)(vit_adapter_factory(_name))


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model exposed as res2..res5 (stride 4..32), NCHW.

    Only available where timm imports; weights still come from a local file through ``load_weights``.
    """

    def __init__(
        self, model_name: str, out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"), **kwargs
    ):
        super().__init__()
        if timm is None:
            raise ImportError(
                f"backbone 'timm:{model_name}' needs timm, which does not import here; "
                "use a built-in backbone (resnet*, swin_*) instead"
            )
        self.body = timm.create_model(model_name, pretrained=False, features_only=True, **kwargs)
        info = self.body.feature_info
        reductions = info.reduction()
        self._names: list[str | None] = []
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        for stride, channels in zip(reductions, info.channels(), strict=True):
            name = {4: "res2", 8: "res3", 16: "res4", 32: "res5"}.get(int(stride))
            keep = name is not None and name in out_features
            self._names.append(name if keep else None)
            if keep:
                self.out_channels[name] = int(channels)
                self.out_strides[name] = int(stride)
        missing = set(out_features) - set(self.out_channels)
        if missing:
            raise ValueError(
                f"timm model {model_name!r} has no features at {sorted(missing)} "
                f"(its reductions: {reductions})"
            )
        self.size_divisibility = 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, feat in zip(self._names, self.body(x), strict=True):
            if name is None:
                continue
            if feat.shape[1] != self.out_channels[name] and feat.shape[-1] == self.out_channels[name]:
                feat = feat.permute(0, 3, 1, 2)  # some timm transformers return NHWC maps
            outputs[name] = feat.contiguous()
        return outputs


def build_backbone(cfg: BackboneConfig | Mapping | str) -> nn.Module:
    """Build a backbone from a config (a ``BackboneConfig``, a dict of its fields, or just a registry name).

    Loads ``cfg.weights`` when given (the :class:`LoadReport` is logged and kept as ``model.load_report``).
    """
    if isinstance(cfg, str):
        cfg = BackboneConfig(name=cfg)
    elif isinstance(cfg, Mapping):
        cfg = BackboneConfig.from_dict(cfg)
    if cfg.name.startswith("timm:"):
        model = TimmBackbone(cfg.name[len("timm:") :], out_features=cfg.out_features, **cfg.overrides)
    elif cfg.name in BACKBONES:
        model = BACKBONES[cfg.name](cfg)
    else:
        raise KeyError(f"unknown backbone {cfg.name!r}; known: {sorted(BACKBONES)} or 'timm:<name>'")
    if cfg.weights:
        report = load_backbone_weights(model, cfg.weights)
        logger.info("%s", report)
        model.load_report = report
    return model


@dataclass
class LoadReport:
    """Outcome of loading a checkpoint into a module."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint, model shape)
    ignored: list[str] = field(default_factory=list)  # keys outside the stripped prefix
    prefix: str = ""

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors from {self.path}"
            + (
                f" (prefix {self.prefix!r} stripped, {len(self.ignored)} other keys ignored)"
                if self.prefix
                else ""
            )
        ]
        if self.missing:
            lines.append(f"missing in checkpoint ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"unexpected in checkpoint ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, src, dst in self.mismatched:
            lines.append(f"shape mismatch, skipped: {key}: checkpoint {src} vs model {dst}")
        return "\n".join(lines)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local checkpoint into a flat ``{name: tensor}`` dict (see the module docstring for formats)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    # data only: neither loader runs code named by the file (vis_core.io); detectron2 model-zoo files are
    # Python-2-era pickles of numpy arrays
    obj = load_detectron2_pickle(path) if path.endswith(".pkl") else load_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path!r}: expected a mapping of tensors, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            # (np.ascontiguousarray would turn 0-d arrays such as BN step counters into 1-d ones)
            state[key] = torch.from_numpy(value if value.flags.c_contiguous else value.copy())
        elif isinstance(value, torch.Tensor):
            state[key] = value
        # other entries (e.g. "__author__", "matching_heuristics") are metadata, not weights
    if not state:
        raise ValueError(f"checkpoint {path!r} contains no tensors")
    return state


def load_weights(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    prefixes: Iterable[str] = DEFAULT_PREFIXES,
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> LoadReport:
    """Load matching tensors of a checkpoint into ``model`` and report the rest.

    Args:
        model: target module.
        checkpoint: a path (see :func:`read_checkpoint`) or an already-read state dict.
        prefixes: the first prefix that at least one key carries is stripped; keys without it are ignored.
        rename: optional key-renaming hook applied after prefix stripping.
    Returns:
        a :class:`LoadReport`. Tensors with a shape that differs from the model's are skipped, not loaded.
    """
    path = "<state dict>" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint)
    state = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    report = LoadReport(path=path)
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            report.prefix = prefix
            report.ignored = sorted(k for k in state if not k.startswith(prefix))
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    if rename is not None:
        state = rename(state)
    target = model.state_dict()
    to_load = {}
    for key, value in state.items():
        if key not in target:
            if key.endswith("num_batches_tracked"):
                report.ignored.append(key)  # BatchNorm step counters have no FrozenBN counterpart
            else:
                report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            to_load[key] = value.to(dtype=target[key].dtype)
    # missing: the model has it, the checkpoint does not (shape mismatches are listed on their own)
    report.missing = sorted(k for k in target if k not in state)
    report.unexpected.sort()
    report.mismatched.sort()
    report.loaded = sorted(to_load)
    model.load_state_dict(to_load, strict=False)
    if not to_load:
        logger.warning("no tensor of %s matched the model; check the prefixes / key names", path)
    return report


def load_backbone_weights(
    model: nn.Module,
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    prefixes: Iterable[str] = DEFAULT_PREFIXES,
) -> LoadReport:
    """Load backbone weights from a local file (see :func:`load_weights`).

    Strips ``backbone.`` / ``module.`` prefixes and applies the backbone's ``remap_checkpoint_keys``
    (torchvision -> detectron2 ResNet names).
    """
    rename = getattr(model, "remap_checkpoint_keys", None)
    return load_weights(model, path, prefixes=prefixes, rename=rename)
