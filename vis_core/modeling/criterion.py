"""Mask2Former set criterion: Hungarian matching, then class CE + point-sampled mask BCE + dice per layer.

Follows ``mask2former/modeling/criterion.py``: softmax cross-entropy with the "no object" class weighted
by ``eos_coef`` (0.1); mask losses on ``num_points`` points per matched mask chosen by PointRend importance
sampling (``oversample_ratio`` 3, ``importance_sample_ratio`` 0.75); normalisation by the number of target
masks averaged over processes; the same losses on every ``aux_outputs`` layer (deep supervision), each layer
with its own matching.

``forward`` can take the matching (``indices``) instead of running the matcher and can return the one it
used (``return_indices``), so a method's add-on losses read the very matching of the final layer.

Unlike the official class, ``forward`` returns the losses already multiplied by their weights (class 2,
mask 5, dice 5), which is what a method hands to the trainer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vis_core.modeling.losses import dice_loss, sigmoid_ce_loss, softmax_ce_loss
from vis_core.modeling.matcher import HungarianMatcher
from vis_core.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

__all__ = ["SetCriterion", "average_over_processes", "build_criterion", "pad_masks"]


def pad_masks(masks: list[Tensor]) -> Tensor:
    """Zero-pad ``(N_i, H_i, W_i)`` masks at the bottom/right to a common ``(sum N_i, H, W)`` tensor."""
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    return torch.cat([F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks])


def average_over_processes(count: float, device: torch.device) -> float:
    """Mean of ``count`` over the DDP processes, at least 1 (the loss normaliser of DETR-style criteria)."""
    value = torch.as_tensor([float(count)], dtype=torch.float, device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        world = dist.get_world_size()
    return torch.clamp(value / world, min=1).item()


class SetCriterion(nn.Module):
    """Losses of a Mask2Former-style query segmenter.

    Args:
        num_classes: number of object classes ``K`` (logits have ``K + 1`` columns).
        matcher: the Hungarian matcher.
        class_weight, mask_weight, dice_weight: loss weights (2, 5, 5).
        eos_coef: class weight of "no object" (0.1).
        num_points, oversample_ratio, importance_sample_ratio: PointRend point sampling of the mask losses.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @staticmethod
    def _src_index(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list) -> dict[str, Tensor]:
        """Softmax CE over all ``B x Q`` queries; unmatched queries are "no object" (index ``K``)."""
        logits = outputs["pred_logits"].float()
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes, expected num_classes + 1 = "
                f"{self.num_classes + 1}"
            )
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        matched = torch.cat(
            [t["labels"][tgt].to(logits.device) for t, (_, tgt) in zip(targets, indices, strict=True)]
        )
        target_classes[self._src_index(indices)] = matched
        return {"loss_ce": softmax_ce_loss(logits, target_classes, self.eos_coef)}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: list, num_masks: float) -> dict:
        """Point-sampled BCE and dice between matched predicted and target masks."""
        pred_masks = outputs["pred_masks"]
        src_masks = pred_masks[self._src_index(indices)]
        if src_masks.shape[0] == 0:
            # no target in the whole batch: zero losses that still touch the graph (DDP needs all params)
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        tgt_masks = pad_masks([t["masks"].to(pred_masks.device) for t in targets])
        offsets = torch.cumsum(torch.as_tensor([0] + [len(t["labels"]) for t in targets[:-1]]), 0)
        tgt_idx = torch.cat([tgt + offsets[i] for i, (_, tgt) in enumerate(indices)]).to(pred_masks.device)
        tgt_masks = tgt_masks[tgt_idx].to(src_masks.dtype)[:, None]
        src_masks = src_masks[:, None]
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src_masks, calculate_uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(tgt_masks.float(), coords).squeeze(1)
        point_logits = point_sample(src_masks.float(), coords).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def layer_losses(
        self, outputs: dict, targets: list[dict], indices: list, num_masks: float
    ) -> dict[str, Tensor]:
        """Unweighted losses of one decoder layer under its matching ``indices`` (per image
        ``(query_idx, target_idx)``)."""
        losses = self.loss_labels(outputs, targets, indices)
        losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def forward(
        self, outputs: dict, targets: list[dict], indices: list | None = None, return_indices: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], list]:
        """Weighted losses of the last layer (``loss_ce``, ``loss_mask``, ``loss_dice``) and of every
        auxiliary layer ``i`` (``loss_ce_i``, ...).

        Args:
            outputs: ``pred_logits (B, Q, K + 1)``, ``pred_masks (B, Q, h, w)`` and optionally
                ``aux_outputs``, a list of dicts with the same two keys.
            targets: ``B`` dicts with ``labels (N_b,)`` int64 and ``masks (N_b, H, W)`` (bool or float).
            indices: the matching to use instead of running the matcher: one entry per layer, the
                ``aux_outputs`` layers first and the final layer last (the layout of
                :meth:`~vis_core.modeling.idol_criterion.IDOLCriterion.match`), each ``B`` pairs
                ``(query_idx, target_idx)``. An entry may be None (that layer is matched here).
            return_indices: also return the matching used, in the same layout; ``indices[-1]`` is the final
                layer's, which the add-on losses of a method (MinVIS) read.
        Returns:
            the weighted losses, or ``(losses, indices)`` with ``return_indices``.
        """
        num_masks = average_over_processes(
            sum(len(t["labels"]) for t in targets), outputs["pred_logits"].device
        )
        layers = list(outputs.get("aux_outputs", []))
        layers.append({k: v for k, v in outputs.items() if k != "aux_outputs"})
        if indices is not None and len(indices) != len(layers):
            raise ValueError(f"SetCriterion: {len(indices)} matchings given for {len(layers)} layers")
        used = list(indices) if indices is not None else [None] * len(layers)
        final = len(layers) - 1
        weighted = {}
        # final layer first, then the aux layers, each matched right before its losses: the official loop,
        # whose order fixes which random points the matcher and the mask losses draw
        for i in [final, *range(final)]:
            if used[i] is None:
                used[i] = self.matcher(layers[i], targets)
            suffix = "" if i == final else f"_{i}"
            for name, value in self.layer_losses(layers[i], targets, used[i], num_masks).items():
                weighted[name + suffix] = value * self.weight_dict[name]
        return (weighted, used) if return_indices else weighted


def build_criterion(
    num_classes: int,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    eos_coef: float = 0.1,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> SetCriterion:
    """Mask2Former criterion whose matcher uses the same weights as the losses (as in the official config)."""
    matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
    return SetCriterion(
        num_classes, matcher, class_weight, mask_weight, dice_weight, eos_coef, num_points, oversample_ratio,
        importance_sample_ratio,
    )
