"""``mask2former_frame``: per-frame training of the Mask2Former segmenter with its set criterion.

Every frame of every clip is an independent image (no temporal loss): this is image-level Mask2Former, the
segmenter that MinVIS, DVIS and VITA build on. Config (``model:`` in params.yaml), flat::

    model: {preset: tiny, num_classes: 10, num_queries: 20, num_points: 1024}

``preset`` (``tiny`` / ``full``) and any :class:`Mask2FormerConfig` field configure the segmenter; the
criterion keys (``class_weight`` 2, ``mask_weight`` 5, ``dice_weight`` 5, ``eos_coef`` 0.1, ``num_points``
12,544, ``oversample_ratio`` 3, ``importance_sample_ratio`` 0.75, ``deep_supervision``) the losses.

In train mode ``method(batch)`` returns the weighted losses; in eval mode the segmenter's raw outputs for
the ``B * T`` frames (clip-major). ``predict_frames`` gives per-image instances (Mask2Former's instance
inference).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vis_core.io.weights import load_state_dict_matching, load_torch_file
from vis_core.methods.base import VISMethod
from vis_core.methods.registry import register_method
from vis_core.modeling.criterion import build_criterion
from vis_core.modeling.mask2former import Mask2FormerConfig, build_mask2former, load_mask2former_weights

__all__ = ["FrameMask2FormerConfig", "Mask2FormerFrame", "clip_batch_to_frames", "instance_inference"]


@dataclass
class FrameMask2FormerConfig:
    """Segmenter (``preset`` + ``num_classes`` + ``overrides`` of :class:`Mask2FormerConfig` fields) and
    criterion settings."""

    preset: str = "tiny"
    num_classes: int | None = None
    overrides: dict = field(default_factory=dict)
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    eos_coef: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    test_topk: int = 100  # instances kept per image at inference

    @classmethod
    def from_dict(cls, values: Mapping) -> FrameMask2FormerConfig:
        """Own keys stay; any other key must be a :class:`Mask2FormerConfig` field and goes to overrides."""
        own = {f.name for f in dataclasses.fields(cls)}
        segmenter = {f.name for f in dataclasses.fields(Mask2FormerConfig)}
        values = dict(values)
        overrides = dict(values.pop("overrides", None) or {})
        for key in [k for k in values if k not in own]:
            if key not in segmenter:
                raise ValueError(
                    f"unknown key {key!r} (criterion keys: {sorted(own)}; "
                    f"Mask2Former keys: {sorted(segmenter)})"
                )
            overrides[key] = values.pop(key)
        return cls(**values, overrides=overrides)

    def segmenter_config(self) -> Mask2FormerConfig:
        values = {"preset": self.preset, **self.overrides}
        if self.num_classes is not None:
            values["num_classes"] = self.num_classes
        return Mask2FormerConfig.from_dict(values)


def clip_batch_to_frames(batch: Mapping, stride: int = 1) -> tuple[torch.Tensor, list[dict]]:
    """``collate_clips`` output -> ``images (B*T, 3, H, W)`` and ``B*T`` targets, clip-major.

    Target masks (stored at each clip's unpadded size) are zero-padded at the bottom/right to the batch
    canvas rounded up to ``stride``, the area the stride-``stride`` mask predictions cover, so that
    normalised point coordinates address the same pixels in predictions and targets.
    """
    images = batch["images"]
    if images.dim() != 5:
        raise ValueError(f"batch['images'] must be (B, T, 3, H, W), got shape {tuple(images.shape)}")
    b, t, _, h, w = images.shape
    if len(batch["targets"]) != b or any(len(clip) != t for clip in batch["targets"]):
        raise ValueError(f"batch['targets'] must be {b} clips of {t} frames")
    ph, pw = stride * math.ceil(h / stride), stride * math.ceil(w / stride)
    targets = []
    for i, clip in enumerate(batch["targets"]):
        for j, tgt in enumerate(clip):
            for key in ("labels", "masks"):
                if key not in tgt:
                    raise KeyError(f"batch['targets'][{i}][{j}] has no field {key!r}")
            masks = tgt["masks"].to(device=images.device, dtype=torch.bool)
            if masks.shape[-2] > ph or masks.shape[-1] > pw:
                raise ValueError(
                    f"batch['targets'][{i}][{j}]['masks'] is {tuple(masks.shape[-2:])}, larger than the "
                    f"images {(h, w)}"
                )
            masks = F.pad(masks, (0, pw - masks.shape[-1], 0, ph - masks.shape[-2]))
            labels = tgt["labels"].to(device=images.device, dtype=torch.int64)
            targets.append({"labels": labels, "masks": masks})
    return images.flatten(0, 1), targets


@torch.no_grad()
def instance_inference(
    logits: torch.Tensor, mask_logits: torch.Tensor, image_size: tuple[int, int], topk: int = 100,
    output_size: tuple[int, int] | None = None, stride: int = 4,
) -> dict[str, torch.Tensor]:
    """Mask2Former instance inference of one image.

    Args:
        logits: ``(Q, K + 1)``; mask_logits: ``(Q, h4, w4)`` at ``stride`` (4) of the padded input.
        image_size: ``(h, w)`` of the valid (unpadded) input region.
        topk: number of (query, class) pairs kept by class score.
        output_size: resolution of the returned masks (default ``image_size``).
    Returns:
        dict(scores ``(k,)`` = class prob x mean mask prob inside the mask, labels ``(k,)`` in ``[0, K)``,
        masks ``(k, H_out, W_out)`` bool).
    """
    num_queries, num_classes = logits.shape[0], logits.shape[1] - 1
    scores = logits.float().softmax(-1)[:, :-1]
    k = min(topk, num_queries * num_classes)
    top_scores, top_idx = scores.flatten().topk(k)
    labels, queries = top_idx % num_classes, top_idx // num_classes
    h, w = image_size
    canvas = (mask_logits.shape[-2] * stride, mask_logits.shape[-1] * stride)
    masks = F.interpolate(mask_logits[queries][None].float(), size=canvas, mode="bilinear",
                          align_corners=False)[0, :, :h, :w]
    if output_size is not None and tuple(output_size) != (h, w):
        masks = F.interpolate(masks[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
    binary = masks > 0
    probs = masks.sigmoid().flatten(1)
    flat = binary.flatten(1).float()
    mask_scores = (probs * flat).sum(1) / (flat.sum(1) + 1e-6)
    return {"scores": top_scores * mask_scores, "labels": labels, "masks": binary}


@register_method("mask2former_frame", config=FrameMask2FormerConfig)
class Mask2FormerFrame(VISMethod):
    """Per-frame Mask2Former + set criterion: the trunk of the Mask2Former family.

    A method built on it (MinVIS; DVIS, VITA) adds its own losses on the final layer's matched queries by
    overriding :meth:`addon_losses` and its heads in ``__init__``; segmenter, targets, criterion and matching
    stay here.

    Args:
        cfg: :class:`FrameMask2FormerConfig`.
        encoder_hooks: optional pixel-decoder encoder hooks ``{depth: module}`` (BatchFormerV2), passed to
            ``build_mask2former``.
    """

    # methods built on this segmenter share its pre-training (reproductions/_pretrain, one run per family)
    segmenter_family = "mask2former"

    def __init__(self, cfg: FrameMask2FormerConfig, encoder_hooks: Mapping[int, torch.nn.Module] | None = None):
        super().__init__()
        self.cfg = cfg
        self.segmenter_cfg = cfg.segmenter_config()
        self.segmenter = build_mask2former(self.segmenter_cfg, encoder_hooks=encoder_hooks)
        self.criterion = build_criterion(
            self.segmenter_cfg.num_classes, cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.eos_coef,
            cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio,
        )

    def load_pretrained(self, path) -> str:
        """``init_weights``: a vis_core training checkpoint of this method, or a Mask2Former segmenter
        checkpoint (ours or an official / MinVIS ``model_final_*.pkl``) loaded into ``segmenter``."""
        if Path(path).suffix == ".pth":
            state = load_torch_file(path)
            if isinstance(state, dict) and isinstance(state.get("model"), dict) and any(
                k.startswith("segmenter.") for k in state["model"]
            ):
                missing, unexpected = load_state_dict_matching(self, state)
                return f"{len(missing)} missing, {len(unexpected)} unexpected keys"
        return str(load_mask2former_weights(self.segmenter, path))

    def param_groups_key(self, name: str) -> str:
        """Backbone parameters train with ``solver.backbone_multiplier`` x the base LR."""
        return "backbone" if name.startswith("segmenter.backbone.") else "default"

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (contiguous labels 0..K-1)."""
        return self.segmenter_cfg.num_classes

    def forward(self, batch: Mapping) -> dict:
        images, targets = clip_batch_to_frames(batch, stride=self.segmenter_cfg.common_stride)
        outputs = self.segmenter(images)
        if not self.training:
            return outputs
        k = outputs["pred_logits"].shape[0] // len(targets)
        if k > 1:  # a batch-multiplying encoder hook (BatchFormerV2 two streams): every stream gets the GT
            targets = targets * k
        if not self.cfg.deep_supervision:
            outputs = {key: v for key, v in outputs.items() if key != "aux_outputs"}
        losses, indices = self.criterion(outputs, targets, return_indices=True)
        losses.update(self.addon_losses(outputs, targets, indices[-1]))
        return losses

    def addon_losses(
        self, outputs: dict, targets: list[dict], indices: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses a method adds on the final layer's matched queries (none here).

        Args:
            outputs: segmenter outputs (``B'`` frames, ``B' = k * B`` under a batch-multiplying hook).
            targets: the ``B'`` per-frame targets. indices: the criterion's final-layer matching, one
                ``(query_idx, target_idx)`` per frame.
        """
        return {}

    @torch.no_grad()
    def predict_frames(
        self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None,
        output_sizes: list[tuple[int, int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Instances of every image: ``images (N, 3, H, W)`` float 0..255 (zero-padded batch) ->
        ``N`` dicts of scores ``(k,)``, labels ``(k,)`` and bool masks ``(k, H_out, W_out)``."""
        outputs = self.segmenter(images)
        n = images.shape[0]
        sizes = image_sizes or [tuple(images.shape[-2:])] * n
        outs = output_sizes or sizes
        return [
            instance_inference(outputs["pred_logits"][i], outputs["pred_masks"][i], tuple(sizes[i]),
                               self.cfg.test_topk, tuple(outs[i]), self.segmenter_cfg.common_stride)
            for i in range(n)
        ]
