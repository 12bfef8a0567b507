"""ResNet backbones in detectron2's layout (the one every Mask2Former / MinVIS / DVIS checkpoint uses).

Parameter names follow detectron2 (``stem.conv1``, ``res2.0.conv1.norm``, ``res3.0.shortcut``...), so a
detectron2 ``.pkl`` / ``.pth`` loads without renaming; torchvision names (``layer1.0.bn1``...) are renamed by
:meth:`ResNet.remap_checkpoint_keys`. Like the official configs (``RESNETS.STRIDE_IN_1X1: False``), the stride
of a bottleneck sits on its 3x3 conv (torchvision / "ResNet v1.5").

Output: ``dict(res2=(N, C2, H/4, W/4), res3=(.., H/8, ..), res4=(.., H/16, ..), res5=(.., H/32, ..))`` with
channels in ``out_channels``. Variants: ``resnet18`` (64..512), ``resnet50`` / ``resnet101`` (256..2048) and
``resnet_tiny`` (one basic block per stage, 16..128 channels) for CPU smoke runs.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.modeling.frozen_bn import Conv2d, convert_frozen_batchnorm, get_norm

__all__ = ["ResNet", "BasicBlock", "BottleneckBlock", "RESNET_SPECS", "build_resnet"]


def _msra_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_msra_fill``: He-normal weights (fan_out, ReLU), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34): ``(N, Cin, H, W)`` -> ``(N, Cout, H/s, W/s)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "FrozenBN"):
        super().__init__()
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, 1, stride=stride, bias=False, norm=get_norm(norm, out_channels)
            )
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels, out_channels, 3, padding=1, bias=False, norm=get_norm(norm, out_channels)
        )
        for conv in (self.conv1, self.conv2, self.shortcut):
            if conv is not None:
                _msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with a residual connection (ResNet-50/101)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        norm: str = "FrozenBN",
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, 1, stride=stride, bias=False, norm=get_norm(norm, out_channels)
            )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            padding=1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels)
        )
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                _msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class BasicStem(nn.Module):
    """7x7 stride-2 conv + 3x3 stride-2 max pool: ``(N, 3, H, W)`` -> ``(N, C, H/4, W/4)``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN"):
        super().__init__()
        self.conv1 = Conv2d(
            in_channels, out_channels, 7, stride=2, padding=3, bias=False, norm=get_norm(norm, out_channels)
        )
        _msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


# name -> (block type, blocks per stage, stem channels, res2 output channels)
RESNET_SPECS: dict[str, tuple[str, tuple[int, int, int, int], int, int]] = {
    "resnet_tiny": ("basic", (1, 1, 1, 1), 16, 16),
    "resnet18": ("basic", (2, 2, 2, 2), 64, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64, 256),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 64, 256),
}

_TORCHVISION_KEY = re.compile(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)$")
_TORCHVISION_DOWNSAMPLE = re.compile(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.+)$")


class ResNet(nn.Module):
    """ResNet returning stride-4/8/16/32 features.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        num_blocks: blocks in res2..res5.
        stem_channels: stem output channels.
        res2_channels: output channels of res2 (doubled at every later stage).
        norm: norm of every conv (``FrozenBN`` as detectron2's default, ``BN``, ``SyncBN``, ``GN``).
        freeze_at: 0 trains everything (Mask2Former's ``FREEZE_AT: 0``); 1 freezes the stem; k >= 2 also
            res2..res{k} (their parameters stop receiving gradients and their norms become FrozenBN).
        out_features: which of res2..res5 to return.
    """

    def __init__(
        self,
        block: str = "bottleneck",
        num_blocks: tuple[int, ...] = (3, 4, 6, 3),
        stem_channels: int = 64,
        res2_channels: int = 256,
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
        in_channels: int = 3,
    ):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 stages (res2..res5), got {num_blocks}")
        unknown = set(out_features) - {"res2", "res3", "res4", "res5"}
        if unknown:
            raise ValueError(f"unknown out_features {sorted(unknown)}; ResNet provides res2..res5")
        self.stem = BasicStem(in_channels, stem_channels, norm)
        self.out_features = tuple(out_features)
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        self.stage_names = ("res2", "res3", "res4", "res5")
        channels_in = stem_channels
        for idx, (name, n) in enumerate(zip(self.stage_names, num_blocks, strict=True)):
            channels_out = res2_channels * 2**idx
            first_stride = 1 if idx == 0 else 2
            blocks = []
            for i in range(n):
                stride = first_stride if i == 0 else 1
                if block == "basic":
                    blocks.append(BasicBlock(channels_in, channels_out, stride, norm))
                else:
                    blocks.append(BottleneckBlock(channels_in, channels_out, channels_out // 4, stride, norm))
                channels_in = channels_out
            self.add_module(name, nn.Sequential(*blocks))
            if name in self.out_features:
                self.out_channels[name] = channels_out
                self.out_strides[name] = 4 * 2**idx
        self.size_divisibility = 32
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (``freeze_at >= 1``) and res2..res{freeze_at} (detectron2 ``FREEZE_AT``)."""
        if freeze_at < 0 or freeze_at > 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        modules = [self.stem] + [getattr(self, name) for name in self.stage_names]
        for module in modules[:freeze_at]:
            for p in module.parameters():
                p.requires_grad_(False)
            convert_frozen_batchnorm(module)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 3, H, W)`` normalised image -> dict of ``(N, out_channels[k], H / stride, W / stride)``."""
        if x.dim() != 4:
            raise ValueError(f"ResNet takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
            if len(outputs) == len(self.out_features):
                break
        return outputs

    @staticmethod
    def remap_checkpoint_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename torchvision keys (``conv1``, ``bn1``, ``layerX.Y.bnZ``, ``downsample``) to detectron2's.

        Keys already in detectron2 form (and unknown keys such as ``fc.*``) pass through unchanged.
        """
        out = {}
        for key, value in state.items():
            new = key
            if key.startswith("conv1."):
                new = "stem.conv1." + key[len("conv1.") :]
            elif key.startswith("bn1."):
                new = "stem.conv1.norm." + key[len("bn1.") :]
            elif m := _TORCHVISION_KEY.match(key):
                stage, idx, kind, k, rest = m.groups()
                norm = "norm." if kind == "bn" else ""
                new = f"res{int(stage) + 1}.{idx}.conv{k}.{norm}{rest}"
            elif m := _TORCHVISION_DOWNSAMPLE.match(key):
                stage, idx, part, rest = m.groups()
                norm = "norm." if part == "1" else ""
                new = f"res{int(stage) + 1}.{idx}.shortcut.{norm}{rest}"
            out[new] = value
        return out


def build_resnet(
    name: str = "resnet50",
    norm: str = "FrozenBN",
    freeze_at: int = 0,
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
    **overrides,
) -> ResNet:
    """ResNet variant by name (see ``RESNET_SPECS``); ``overrides`` replace any constructor argument."""
    if name not in RESNET_SPECS:
        raise KeyError(f"unknown ResNet {name!r}; known: {sorted(RESNET_SPECS)}")
    block, num_blocks, stem_channels, res2_channels = RESNET_SPECS[name]
    kwargs = dict(
        block=block,
        num_blocks=num_blocks,
        stem_channels=stem_channels,
        res2_channels=res2_channels,
        norm=norm,
        freeze_at=freeze_at,
        out_features=tuple(out_features),
    )
    kwargs.update(overrides)
    return ResNet(**kwargs)
