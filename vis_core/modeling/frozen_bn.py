"""Normalisation plumbing of backbones and decoders: FrozenBatchNorm2d, ``get_norm``, a conv with norm.

Detectron2 backbones (and therefore every Mask2Former / MinVIS / DVIS checkpoint) use ``FrozenBatchNorm2d``:
batch statistics and the affine transform are fixed buffers, so small per-GPU batches cannot corrupt them.
``Conv2d`` reproduces detectron2's conv layout (``<name>.weight`` plus ``<name>.norm.*``) so that checkpoints
written by detectron2 load without renaming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrozenBatchNorm2d", "get_norm", "group_norm_groups", "Conv2d", "convert_frozen_batchnorm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are constant buffers (detectron2 semantics).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, the same in train and eval mode;
    nothing here receives a gradient.

    Args:
        num_features: channels C of the ``(N, C, H, W)`` input. eps: added to the variance.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchNorm checkpoints carry a step counter that a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups`` (32 for every official width)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def get_norm(norm: str | None, channels: int) -> nn.Module | None:
    """Normalisation layer by detectron2 name.

    Args:
        norm: ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"GN"`` (32 groups, fewer when ``channels`` is not a
            multiple of 32, as in the width-reduced smoke models) or ``""`` / ``None`` for no normalisation.
        channels: number of channels.
    """
    if not norm:
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of FrozenBN, BN, SyncBN, GN or ''")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm and activation, with detectron2's parameter names.

    Args: as ``nn.Conv2d``, plus ``norm`` (a module or None) and ``activation`` (a callable or None).
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``SyncBatchNorm`` in ``module`` by an equal ``FrozenBatchNorm2d``.

    Returns the converted module (``module`` itself unless it is a batch norm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
