"""Classification and mask losses shared by the segmenters, plus their pairwise (matching-cost) forms.

Conventions follow the official sources so that loss weights carry over unchanged:

* ``sigmoid_focal_loss``: Deformable-DETR / IDOL (``models/segmentation.py``): the element-wise focal
  loss is averaged over dim 1 (the query dimension for ``(B, Q, K)`` logits), summed over everything else
  and divided by ``num_boxes``. Deformable DETR multiplies the result by ``Q`` afterwards
  (``loss_ce = focal(...) * Q``), which makes it "sum over all elements / num_boxes"; callers that want
  that convention multiply by ``Q`` themselves.
* ``dice_loss`` / ``sigmoid_ce_loss``: Mask2Former (``mask2former/modeling/criterion.py``) on flattened
  (point-sampled) masks ``(N, P)``: one value per mask, summed over masks and divided by ``num_masks``.
* ``batch_*_cost``: Mask2Former / Deformable-DETR matchers: an ``(N, M)`` cost between every prediction
  ``n`` and every target ``m``; the diagonal of a square cost equals the corresponding per-mask loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_focal_loss",
    "dice_loss",
    "sigmoid_ce_loss",
    "softmax_ce_loss",
    "batch_dice_cost",
    "batch_sigmoid_ce_cost",
    "batch_focal_cost",
]


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss of RetinaNet in the Deformable-DETR reduction.

    Args:
        inputs: logits of any shape with at least 2 dims, typically ``(B, Q, K)``.
        targets: same shape, binary (0/1) float targets.
        num_boxes: normaliser (number of ground-truth objects, already averaged over processes).
        alpha: weight of positives (``alpha``) vs negatives (``1 - alpha``); negative disables weighting.
        gamma: focusing exponent.
    Returns:
        scalar: ``loss.mean(1).sum() / num_boxes``.
    """
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean(1).sum() / num_boxes


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Soft dice loss ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask (Mask2Former form).

    Args:
        inputs: ``(N, ...)`` mask logits; flattened to ``(N, P)``.
        targets: ``(N, ...)`` binary (or soft) targets with as many elements per mask as ``inputs``.
        num_masks: normaliser.
    Returns:
        scalar: sum of per-mask dice losses / ``num_masks``.
    """
    p = inputs.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    numerator = 2 * (p * t).sum(-1)
    denominator = p.sum(-1) + t.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Binary cross-entropy averaged over the points of each mask, summed over masks / ``num_masks``.

    Args:
        inputs: ``(N, P)`` mask logits at ``P`` points (more dims are flattened).
        targets: ``(N, P)`` binary (or soft) targets.
        num_masks: normaliser.
    """
    x = inputs.flatten(1)
    t = targets.flatten(1).to(x.dtype)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return loss.mean(1).sum() / num_masks


def softmax_ce_loss(logits: Tensor, target_classes: Tensor, no_object_weight: float = 0.1) -> Tensor:
    """DETR / Mask2Former classification loss with a down-weighted "no object" class.

    Args:
        logits: ``(B, Q, K + 1)``; the last class is "no object".
        target_classes: ``(B, Q)`` int64 in ``[0, K]`` (``K`` for unmatched queries).
        no_object_weight: class weight of the "no object" class (``eos_coef``, 0.1).
    Returns:
        scalar: weighted mean cross-entropy (``F.cross_entropy`` with ``weight``, i.e. normalised by the
        sum of the weights of the targets, as in DETR).
    """
    num_classes = logits.shape[-1] - 1
    weight = torch.ones(num_classes + 1, dtype=logits.dtype, device=logits.device)
    weight[-1] = no_object_weight
    return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice loss.

    Args:
        inputs: ``(N, P)`` mask logits.
        targets: ``(M, P)`` binary targets.
    Returns:
        ``(N, M)`` with entry ``[n, m]`` = dice loss of prediction ``n`` against target ``m``.
    """
    p = inputs.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    numerator = 2 * p @ t.T
    denominator = p.sum(-1)[:, None] + t.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise binary cross-entropy averaged over points.

    Uses ``BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0)`` so the ``(N, M)`` matrix needs two matmuls
    instead of an ``(N, M, P)`` tensor.

    Args:
        inputs: ``(N, P)`` mask logits.
        targets: ``(M, P)`` binary targets.
    Returns:
        ``(N, M)`` mean BCE over the ``P`` points.
    """
    x = inputs.flatten(1)
    t = targets.flatten(1).to(x.dtype)
    num_points = x.shape[1]
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    return (pos @ t.T + neg @ (1 - t).T) / num_points


def batch_focal_cost(
    logits: Tensor, target_labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Deformable-DETR focal classification cost.

    Args:
        logits: ``(N, K)`` sigmoid class logits (no "no object" column).
        target_labels: ``(M,)`` int64 class ids in ``[0, K)``.
    Returns:
        ``(N, M)``: ``pos_cost[n, label_m] - neg_cost[n, label_m]`` (lower = better match).
    """
    prob = logits.sigmoid()
    neg = (1 - alpha) * (prob**gamma) * (-(1 - prob + 1e-8).log())
    pos = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
    return pos[:, target_labels] - neg[:, target_labels]
