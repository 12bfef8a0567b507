"""``deformable_detr_frame``: per-frame training of IDOL's Deformable-DETR segmenter with its SimOTA losses.

Every frame of every clip is an independent image (no temporal loss): this is the image-level part of IDOL, the
base that the IDOL method extends with its contrastive association loss. Config (``model:`` in params.yaml)::

    model: {preset: tiny, num_classes: 10, overrides: {num_queries: 30}}

``preset`` is ``tiny`` / ``full`` / ``full_<dataset>`` (:class:`DeformableDETRConfig` presets), ``overrides`` any
of its fields.

In train mode ``method(batch)`` returns IDOL's weighted losses; in eval mode it returns the segmenter's raw outputs
for the ``B * T`` frames (frame order: clip-major).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.methods.base import VISMethod
from vis_core.methods.registry import register_method
from vis_core.modeling.deformable_detr import DeformableDETR, DeformableDETRConfig, postprocess_frames
from vis_core.modeling.idol_criterion import IDOLCriterion, idol_weight_dict
from vis_core.modeling.simota_matcher import SimOTAMatcher

__all__ = ["DetrFrameConfig", "DeformableDETRFrame", "flatten_clip_batch"]


@dataclass
class DetrFrameConfig:
    """``preset`` name, optional ``num_classes`` and further :class:`DeformableDETRConfig` field overrides."""

    preset: str = "tiny"
    num_classes: int | None = None
    overrides: dict = field(default_factory=dict)

    def model_config(self) -> DeformableDETRConfig:
        extra = dict(self.overrides)
        if self.num_classes is not None:
            extra["num_classes"] = self.num_classes
        return DeformableDETRConfig.preset(self.preset, **extra)


def flatten_clip_batch(batch: Mapping, device: torch.device | None = None):
    """``collate_clips`` output -> ``(images (B*T, 3, H, W), image_sizes (B*T), targets (B*T))`` clip-major.

    Target tensors are moved to ``device``; labels become int64 and masks bool.
    """
    images = batch["images"]
    if images.dim() != 5:
        raise ValueError(f"batch['images'] must be (B, T, 3, H, W), got shape {tuple(images.shape)}")
    b, t = images.shape[:2]
    device = device if device is not None else images.device
    if len(batch["targets"]) != b or any(len(clip) != t for clip in batch["targets"]):
        raise ValueError(f"batch['targets'] must be {b} clips of {t} frames")
    sizes = batch.get("image_sizes") or [tuple(images.shape[-2:])] * b
    image_sizes = [tuple(int(v) for v in sizes[i]) for i in range(b) for _ in range(t)]
    targets = []
    for i, clip in enumerate(batch["targets"]):
        for j, tgt in enumerate(clip):
            for key in ("labels", "boxes", "masks"):
                if key not in tgt:
                    raise KeyError(f"batch['targets'][{i}][{j}] has no field {key!r}")
            targets.append({
                "labels": tgt["labels"].to(device=device, dtype=torch.int64),
                "boxes": tgt["boxes"].to(device=device, dtype=torch.float32),
                "masks": tgt["masks"].to(device=device, dtype=torch.bool),
            })
    return images.flatten(0, 1).to(device), image_sizes, targets


@register_method("deformable_detr_frame", config=DetrFrameConfig)
class DeformableDETRFrame(VISMethod):
    """Per-frame IDOL segmenter + criterion.

    Args:
        cfg: :class:`DetrFrameConfig` (or a ready :class:`DeformableDETRConfig`).
        backbone, encoder_hooks: passed to :class:`DeformableDETR`.
    """

    # methods built on this segmenter share its pre-training (reproductions/_pretrain, one run per family)
    segmenter_family = "deformable_detr"

    def __init__(self, cfg: DetrFrameConfig | DeformableDETRConfig, backbone: nn.Module | None = None,
                 encoder_hooks: Mapping[int, nn.Module] | None = None):
        super().__init__()
        model_cfg = cfg if isinstance(cfg, DeformableDETRConfig) else cfg.model_config()
        self.model_cfg = model_cfg
        self.model = DeformableDETR(model_cfg, backbone=backbone, encoder_hooks=encoder_hooks)
        weights = idol_weight_dict(
            class_weight=model_cfg.class_weight,
            bbox_weight=model_cfg.bbox_weight,
            giou_weight=model_cfg.giou_weight,
            mask_weight=model_cfg.mask_weight,
            dice_weight=model_cfg.dice_weight,
            num_aux=model_cfg.dec_layers - 1 if model_cfg.aux_loss else 0,
        )
        self.criterion = IDOLCriterion(
            model_cfg.num_classes,
            SimOTAMatcher(focal_alpha=model_cfg.focal_alpha),
            weight_dict=weights,
            focal_alpha=model_cfg.focal_alpha,
            mask_out_stride=model_cfg.mask_out_stride,
            mask_head=self.model.mask_head,
        )

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (contiguous labels 0..K-1)."""
        return self.model_cfg.num_classes

    def forward(self, batch: Mapping) -> dict:
        device = next(self.model.parameters()).device
        images, image_sizes, targets = flatten_clip_batch(batch, device)
        outputs = self.model(images, image_sizes=image_sizes)
        if not self.training:
            return outputs
        k = outputs["pred_logits"].shape[0] // len(targets)
        if k > 1:  # a batch-multiplying encoder hook (BatchFormerV2 two-stream): every stream gets the GT
            targets = targets * k
        return self.criterion.weighted(self.criterion(outputs, targets))

    @torch.no_grad()
    def predict_frames(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None,
                       output_sizes: list[tuple[int, int]] | None = None, topk: int = 100) -> list[dict]:
        """Per-image instances for frame-level AP (``vis_core.engine.evaluate_frames``): ``images (N, 3, H, W)``
        float 0..255 (zero-padded batch) -> ``N`` dicts of ``scores (k,)``, ``labels (k,)``, ``masks (k, H_out,
        W_out)`` bool (IDOL's ``coco_inference``: top ``topk`` (query, class) pairs)."""
        sizes = image_sizes or [tuple(images.shape[-2:])] * images.shape[0]
        outputs = self.model(images, image_sizes=sizes)
        results = postprocess_frames(outputs, sizes, topk=topk, mask_stride=self.model_cfg.mask_out_stride)
        for res, size in zip(results, output_sizes or sizes, strict=True):
            if tuple(res["masks"].shape[-2:]) != tuple(size):
                res["masks"] = F.interpolate(res["masks"][None].float(), size=tuple(size), mode="nearest")[0] > 0.5
        return results
