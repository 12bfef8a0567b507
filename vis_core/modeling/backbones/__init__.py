"""Backbones returning multi-scale features ``dict(res2..res5)`` at strides 4, 8, 16, 32."""

from vis_core.modeling.backbones.build import (
    BACKBONES,
    BackboneConfig,
    LoadReport,
    build_backbone,
    load_backbone_weights,
    load_weights,
    read_checkpoint,
    register_backbone,
)
from vis_core.modeling.backbones.resnet import ResNet, build_resnet
from vis_core.modeling.backbones.swin import SwinTransformer, build_swin

__all__ = [
    "BACKBONES",
    "BackboneConfig",
    "LoadReport",
    "ResNet",
    "SwinTransformer",
    "build_backbone",
    "build_resnet",
    "build_swin",
    "load_backbone_weights",
    "load_weights",
    "read_checkpoint",
    "register_backbone",
]
