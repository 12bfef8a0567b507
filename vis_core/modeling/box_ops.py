"""Bounding-box utilities: format conversion, (generalized) IoU and boxes from masks.

Formats: ``xyxy`` = (x0, y0, x1, y1); ``cxcywh`` = (centre x, centre y, width, height). Functions work on any
leading shape (``(..., 4)``) unless they say pairwise, in which case they take ``(N, 4)`` and ``(M, 4)`` and return
``(N, M)``. Follows facebookresearch/detr ``util/box_ops.py`` (and torchvision.ops) so that matching costs and
losses carry over from Deformable DETR / IDOL unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "masks_to_boxes",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` cxcywh -> ``(..., 4)`` xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(..., 4)`` cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` area (degenerate boxes give 0 or negative values, as torchvision)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``(N, 4)``. boxes2: ``(M, 4)``.
    Returns:
        ``(iou, union)``, both ``(N, M)``.
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def _check_xyxy(boxes: Tensor, name: str) -> None:
    # degenerate boxes give inf / nan GIoU; DETR checks this up front
    if not bool((boxes[..., 2:] >= boxes[..., :2]).all()):
        bad = (boxes[..., 2:] < boxes[..., :2]).any(-1).nonzero()[0].tolist()
        raise ValueError(f"{name}: box at index {bad} has x1 < x0 or y1 < y0 (expected xyxy)")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al.) of xyxy boxes.

    Args:
        boxes1: ``(N, 4)``. boxes2: ``(M, 4)``.
    Returns:
        ``(N, M)`` in ``[-1, 1]``.
    """
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    # IDOL's eps keeps two coincident degenerate boxes finite
    return iou - (enclosing - union) / (enclosing + 1e-7)


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU of corresponding xyxy boxes: ``(..., 4)`` x ``(..., 4)`` -> ``(iou, union)`` of shape ``(...)``."""
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union, union


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of corresponding xyxy boxes (the diagonal of :func:`generalized_box_iou`); ``1 - giou`` is the
    GIoU loss (fvcore ``giou_loss`` used by IDOL)."""
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    iou, union = elementwise_box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    # IDOL's eps keeps two coincident degenerate boxes finite
    return iou - (enclosing - union) / (enclosing + 1e-7)


def masks_to_boxes(masks: Tensor, exclusive: bool = False) -> Tensor:
    """Tight xyxy boxes of binary masks.

    Args:
        masks: ``(N, H, W)`` bool or {0, 1}.
        exclusive: False (torchvision / IDOL convention): ``x1, y1`` are the indices of the last foreground
            column / row, so a single pixel at (x, y) gives (x, y, x, y). True: pixel-edge extent (``x1`` one past
            the last column), the convention of the normalised cxcywh targets in ``vis_core.data``.
    Returns:
        ``(N, 4)`` float32; an empty mask gives an all-zero box.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks_to_boxes expects (N, H, W), got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), device=masks.device, dtype=torch.float32)
    m = masks.bool()
    cols = m.any(1)  # (N, W)
    rows = m.any(2)  # (N, H)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    big = float(max(h, w) + 1)
    end = 1.0 if exclusive else 0.0
    x0 = torch.where(cols, xs, big).min(1).values
    x1 = torch.where(cols, xs + end, -1.0).max(1).values
    y0 = torch.where(rows, ys, big).min(1).values
    y1 = torch.where(rows, ys + end, -1.0).max(1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~cols.any(1)
    return boxes.masked_fill(empty[:, None], 0.0)
