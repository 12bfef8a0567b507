"""``backbone_classifier``: ImageNet-style pre-training of a backbone by image classification.

Every recipe of the reports starts from a backbone pre-trained on ImageNet (Swin-L, ResNet-50) before any
detection or segmentation training. The smoke profile has no ImageNet and downloads nothing, so it trains its
own on the synthetic analogue: object-centric crops (``data.kind: synthetic_objects``, one object of a random
category per image), classified from globally pooled backbone features. The checkpoint's ``backbone.*``
weights then initialise the segmenters exactly as released ImageNet weights would (``backbone_kwargs.weights``
of Deformable DETR, ``backbone_weights`` of Mask2Former).

Without it, a tiny randomly initialised backbone under IDOL's Deformable DETR learns the categories very slowly
(on pseudo videos of still images, 1,000 iterations leave category accuracy near chance while masks are already
good), because its only appearance signal is the sparse focal classification loss of a few queries.

Config (``model:``)::

    model: {backbone: resnet_tiny, norm: GN, num_classes: 10, pooled: [res4, res5]}

Train batches are :func:`~vis_core.data.clips.collate_clips` batches; the label of a frame is its first
target's (the object's) label. ``forward`` returns ``{"loss_cls"}`` in train mode and ``(N, K)`` logits of the
flattened frames in eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vis_core.methods.base import VISMethod
from vis_core.methods.registry import register_method
from vis_core.modeling.backbones.build import build_backbone
from vis_core.modeling.deformable_detr import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BackboneClassifierConfig", "BackboneClassifier"]


@dataclass
class BackboneClassifierConfig:
    """Backbone (registry name + norm, as the segmenters build it) and the pooled feature maps."""

    backbone: str = "resnet_tiny"
    norm: str = "GN"
    num_classes: int | None = None
    pooled: list[str] = field(default_factory=lambda: ["res4", "res5"])

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.pooled:
            raise ValueError("pooled: name at least one backbone output (e.g. res5)")


@register_method("backbone_classifier", config=BackboneClassifierConfig)
class BackboneClassifier(VISMethod):
    """Backbone + global average pooling of ``pooled`` outputs + a linear classifier (cross-entropy)."""

    segmenter_family = "backbone"  # not a segmenter: the pre-training the segmenter families start from

    def __init__(self, cfg: BackboneClassifierConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError("backbone_classifier needs num_classes (filled from the training data by `vis train`)")
        self.cfg = cfg
        self.backbone = build_backbone({"name": cfg.backbone, "norm": cfg.norm, "out_features": tuple(cfg.pooled)})
        channels = sum(self.backbone.out_channels[name] for name in cfg.pooled)
        self.head = nn.Linear(channels, cfg.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def logits(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` float 0..255 -> ``(N, K)`` class logits."""
        feats = self.backbone((images - self.pixel_mean) / self.pixel_std)
        pooled = torch.cat([feats[name].mean(dim=(-2, -1)) for name in self.cfg.pooled], dim=1)
        return self.head(pooled)

    def forward(self, batch: Mapping) -> dict[str, Tensor] | Tensor:
        images = batch["images"].flatten(0, 1)  # (B*T, 3, H, W)
        device = next(self.parameters()).device
        logits = self.logits(images.to(device))
        if not self.training:
            return logits
        labels = []
        for i, clip in enumerate(batch["targets"]):
            for j, tgt in enumerate(clip):
                if len(tgt["labels"]) == 0:
                    raise ValueError(f"batch['targets'][{i}][{j}] has no object to classify")
                labels.append(int(tgt["labels"][0]))
        return {"loss_cls": F.cross_entropy(logits, torch.tensor(labels, device=device))}
