"""Quality assessment module (QAM) of report 000 Sec. 2.3 (eq. 3-4) and report 001 Sec. 2.1.5 (eq. 2).

Two FFN layers on the instance embedding of each matched query predict a score ``S``; the target ``V`` is the
IoU of the predicted (binarised) mask with its ground truth, detached; the loss is ``mean_i (S_i - V_i)^2``.

Both reports use the module only while training ("This module is only conducted during training", 000;
"we also apply the quality assessment module only at the training stage", 001): it shapes the shared
embeddings and is dropped at test time. ``QualityConfig.use_at_test`` (default False, the reports'
behaviour) turns on the usual mask-scoring alternative instead: the final score of a prediction is
``class score * S`` (:func:`rescore`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "QualityConfig",
    "QualityHead",
    "mask_iou_targets",
    "quality_loss",
    "rescore",
    "build_quality_head",
]


@dataclass
class QualityConfig:
    """Config keys of the quality module (``model.quality`` in params.yaml)."""

    enabled: bool = False
    hidden_dim: int | None = None  # FFN width; None -> the embedding width
    loss_weight: float = 1.0
    mask_threshold: float = 0.5  # probability above which a predicted pixel is foreground for V
    use_at_test: bool = False  # reports: training only; True -> final score = class score * S


class QualityHead(nn.Module):
    """Two FFN layers ``Linear -> ReLU -> Linear -> sigmoid``: embeddings ``(..., C)`` -> scores ``(...)``.

    The sigmoid keeps ``S`` in ``(0, 1)``, the range of its IoU target.
    """

    def __init__(self, embed_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or embed_dim
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 1)

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(embeddings))).sigmoid().squeeze(-1)


@torch.no_grad()
def mask_iou_targets(pred_logits: Tensor, gt_masks: Tensor, mask_threshold: float = 0.5) -> Tensor:
    """``V_i = maskIoU(M_i, GT_i)`` (eq. 3) for matched pairs, without gradient.

    Args:
        pred_logits: ``(N, H, W)`` (or ``(N, P)`` point-sampled) mask logits of the matched queries;
            ``M_i = sigmoid(logits) > mask_threshold``.
        gt_masks: the same shape, 0/1 ground truth (values > 0.5 count as foreground).
        mask_threshold: binarisation threshold of the predicted probabilities.
    Returns:
        ``(N,)`` IoU in ``[0, 1]``. An empty prediction on an empty ground truth is a perfect 1.
    """
    if pred_logits.shape != gt_masks.shape:
        raise ValueError(
            f"mask_iou_targets: predictions {tuple(pred_logits.shape)} and targets "
            f"{tuple(gt_masks.shape)} differ"
        )
    pred = (pred_logits.sigmoid() > mask_threshold).flatten(1)
    gt = (gt_masks > 0.5).flatten(1)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def quality_loss(scores: Tensor, targets: Tensor, num_masks: float | None = None) -> Tensor:
    """``L_q = 1/N sum_i (S_i - V_i)^2`` (eq. 4); the target is detached.

    Args:
        scores: ``(N,)`` predicted quality ``S`` of the matched queries.
        targets: ``(N,)`` IoU targets ``V`` (:func:`mask_iou_targets`).
        num_masks: normaliser ``N`` (pass the process-averaged count under DDP); ``None`` -> ``max(N, 1)``.
    """
    if scores.shape != targets.shape:
        raise ValueError(
            f"quality_loss: scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ"
        )
    if num_masks is None:
        num_masks = max(scores.numel(), 1)
    return ((scores - targets.detach().to(scores.dtype)) ** 2).sum() / num_masks


def rescore(class_scores: Tensor, quality: Tensor, use_at_test: bool) -> Tensor:
    """Test-time score: ``class_scores * S`` when ``use_at_test`` else ``class_scores`` unchanged.

    Args:
        class_scores: ``(..., K)`` or ``(...)`` class scores of the predictions.
        quality: ``(...)`` quality scores ``S`` (broadcast over the class dimension when there is one).
    """
    if not use_at_test:
        return class_scores
    if class_scores.dim() == quality.dim() + 1:
        quality = quality.unsqueeze(-1)
    return class_scores * quality


def build_quality_head(cfg: QualityConfig, embed_dim: int) -> QualityHead | None:
    """The head described by ``cfg``, or None when the module is disabled."""
    return QualityHead(embed_dim, cfg.hidden_dim) if cfg.enabled else None
