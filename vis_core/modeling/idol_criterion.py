"""Per-frame detection and segmentation losses of IDOL (``idol/models/deformable_detr.py: SetCriterion``).

For every decoder layer (the last one and, with deep supervision, each earlier one) the SimOTA matcher assigns
queries to ground truths (a GT may take several queries) and the matched pairs get

* ``loss_ce``: sigmoid focal loss over all queries and classes (targets one-hot for matched queries), in
  Deformable DETR's reduction ``sum / num_matched`` (``focal(...).mean(1).sum() / n * Q``);
* ``loss_bbox``: L1 on normalised cxcywh boxes, ``sum / num_matched``;
* ``loss_giou``: ``1 - GIoU``, ``sum / num_matched``;
* ``loss_mask``: sigmoid focal loss per pixel at stride 4 (mean over pixels, ``sum / num_matched``);
* ``loss_dice``: dice loss, ``sum / num_matched``.

Ground-truth masks are sampled at stride 4 as IDOL does (pixel ``4 i + 2`` of the mask padded to a multiple of 4).
Weights (IDOL ``config.py``): class 2, L1 5, GIoU 2, mask 2, dice 5, the same for every layer. The contrastive
(reid) loss is added by the IDOL method on top; :meth:`IDOLCriterion.match` gives it the matching to reuse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from .losses import dice_loss, sigmoid_focal_loss
from .simota_matcher import SimOTAMatcher

__all__ = ["IDOLCriterion", "downsample_target_masks", "idol_weight_dict"]

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


def idol_weight_dict(class_weight=2.0, bbox_weight=5.0, giou_weight=2.0, mask_weight=2.0, dice_weight=5.0,
                     num_aux: int = 0) -> dict[str, float]:
    """``{"loss_ce": 2, ..., "loss_ce_0": 2, ...}`` for the last layer and ``num_aux`` earlier ones."""
    base = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight,
            "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def downsample_target_masks(masks: Tensor, stride: int, out_size: tuple[int, int]) -> Tensor:
    """``(N, H, W)`` bool -> ``(N, out_h, out_w)`` float, taking pixel ``stride * i + stride // 2`` (IDOL).

    The mask is zero-padded to ``stride * out_size`` first, so predictions over a padded input line up.
    """
    out_h, out_w = out_size
    h, w = masks.shape[-2:]
    if h > out_h * stride or w > out_w * stride:
        raise ValueError(f"target masks {h}x{w} are larger than predictions {out_h}x{out_w} x stride {stride}")
    m = F.pad(masks.float(), (0, out_w * stride - w, 0, out_h * stride - h))
    start = stride // 2
    return m[..., start::stride, start::stride]


class IDOLCriterion(nn.Module):
    """IDOL's detection + mask losses with SimOTA matching on every layer.

    Args:
        num_classes: K.
        matcher: a :class:`SimOTAMatcher` (default: IDOL's constants).
        weight_dict: loss weights (see :func:`idol_weight_dict`); :meth:`weighted` applies them.
        focal_alpha: alpha of both focal losses. mask_out_stride: stride of ``pred_masks``.
        mask_head: the model's :class:`DynamicMaskHead`; lets layers without dense ``pred_masks`` predict masks
            for their matched queries only (IDOL's training path). Optional when every layer has ``pred_masks``.
    """

    def __init__(self, num_classes: int, matcher: SimOTAMatcher | None = None,
                 weight_dict: dict[str, float] | None = None, focal_alpha: float = 0.25,
                 mask_out_stride: int = 4, mask_head: nn.Module | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else SimOTAMatcher()
        self.weight_dict = dict(weight_dict) if weight_dict is not None else idol_weight_dict(num_aux=5)
        self.focal_alpha = focal_alpha
        self.mask_out_stride = mask_out_stride
        # not a registered submodule: it belongs to (and is trained through) the model
        self._mask_head = [mask_head]

    @staticmethod
    def _layers(outputs: dict) -> list[dict]:
        return list(outputs.get("aux_outputs", [])) + [outputs]

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict], return_best: bool = False):
        """SimOTA indices for every layer, aux layers first and the last layer last.

        With ``return_best=True`` also returns the last layer's cheapest query per GT (per image, ``(G,)``): the
        key-frame anchors of IDOL's contrastive loss (``matched_ids`` in the official code).
        """
        layers = self._layers(outputs)
        indices = [self.matcher(layer, targets) for layer in layers[:-1]]
        last, best = self.matcher(layers[-1], targets, return_best=True)
        indices.append(last)
        return (indices, best) if return_best else indices

    def loss_labels(self, out: dict, targets: list[dict], indices, num: float) -> dict[str, Tensor]:
        logits = out["pred_logits"]
        onehot = torch.zeros_like(logits)
        for b, (q, g) in enumerate(indices):
            if len(q):
                onehot[b, q, targets[b]["labels"][g]] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, num, alpha=self.focal_alpha, gamma=2.0) * logits.shape[1]
        return {"loss_ce": loss}

    def loss_boxes(self, out: dict, targets: list[dict], indices, num: float) -> dict[str, Tensor]:
        src = torch.cat([out["pred_boxes"][b, q] for b, (q, _) in enumerate(indices)])
        tgt = torch.cat([targets[b]["boxes"][g] for b, (_, g) in enumerate(indices)]).to(src.dtype)
        if len(src) == 0:
            zero = out["pred_boxes"].sum() * 0
            return {"loss_bbox": zero, "loss_giou": zero}
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num}

    def _matched_masks(self, out: dict, indices) -> Tensor:
        if "pred_masks" in out:
            return torch.cat([out["pred_masks"][b, q] for b, (q, _) in enumerate(indices)])
        head = self._mask_head[0]
        if head is None or "mask_params" not in out:
            raise KeyError("a layer output has no 'pred_masks'; give IDOLCriterion the model's mask_head "
                           "(and the outputs 'mask_params' / 'mask_refs' / 'mask_features') to predict them")
        out_h, out_w = out["mask_size"]
        masks = [head(out["mask_features"][b], out["mask_params"][b, q], out["mask_refs"][b, q])[:, :out_h, :out_w]
                 for b, (q, _) in enumerate(indices)]
        return torch.cat(masks)

    def loss_masks(self, out: dict, targets: list[dict], indices, num: float) -> dict[str, Tensor]:
        src = self._matched_masks(out, indices)
        if len(src) == 0:
            zero = out["pred_logits"].sum() * 0
            if "pred_masks" in out:
                zero = zero + out["pred_masks"].sum() * 0
            return {"loss_mask": zero, "loss_dice": zero}
        size = tuple(src.shape[-2:])
        tgt = torch.cat([
            downsample_target_masks(targets[b]["masks"][g], self.mask_out_stride, size)
            for b, (_, g) in enumerate(indices)
        ]).to(src.dtype)
        src, tgt = src.flatten(1), tgt.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(src, tgt, num, alpha=self.focal_alpha, gamma=2.0),
            "loss_dice": dice_loss(src, tgt, num),
        }

    def layer_losses(self, out: dict, targets: list[dict], indices) -> dict[str, Tensor]:
        """All five losses of one layer given its matching."""
        # IDOL normalises by the number of matched (query, GT) pairs of this layer, at least 1
        num = float(max(sum(len(q) for q, _ in indices), 1))
        losses = {}
        losses.update(self.loss_labels(out, targets, indices, num))
        losses.update(self.loss_boxes(out, targets, indices, num))
        losses.update(self.loss_masks(out, targets, indices, num))
        return losses

    def forward(self, outputs: dict, targets: list[dict], indices: list | None = None) -> dict[str, Tensor]:
        """Unweighted losses: ``loss_*`` for the last layer, ``loss_*_{i}`` for aux layer ``i``.

        Args:
            outputs: the segmenter's output dict (batch B).
            targets: B dicts with ``labels (G,)``, ``boxes (G, 4)`` cxcywh normalised, ``masks (G, H, W)`` bool.
            indices: optional result of :meth:`match` (to share one matching with other losses).
        """
        if outputs["pred_logits"].shape[0] != len(targets):
            raise ValueError(f"outputs have batch {outputs['pred_logits'].shape[0]}, targets {len(targets)}")
        layers = self._layers(outputs)
        if indices is None:
            indices = self.match(outputs, targets)
        losses = self.layer_losses(layers[-1], targets, indices[-1])
        for i, layer in enumerate(layers[:-1]):
            losses.update({f"{k}_{i}": v for k, v in self.layer_losses(layer, targets, indices[i]).items()})
        return losses

    def weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Multiply every loss by its weight in ``weight_dict`` (a loss without a weight is an error)."""
        missing = sorted(set(losses) - set(self.weight_dict))
        if missing:
            raise KeyError(f"no weight for loss(es) {missing}; weight_dict has {sorted(self.weight_dict)}")
        return {k: v * self.weight_dict[k] for k, v in losses.items()}
