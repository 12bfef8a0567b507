"""IDOL's SimOTA-style dynamic-k matcher (``idol/models/matcher.py``, after YOLOX's SimOTA).

Unlike DETR's one-to-one Hungarian matching, each ground truth (GT) takes its ``k`` cheapest queries, where ``k`` is
the (floored) sum of the GT's 10 largest IoUs with the predicted boxes, at least 1. The cost is

    focal class cost + 3 * (-GIoU) + 100 * [query centre not inside both the GT box and its centre region]
    (+ 10000 when the query centre is inside neither the box nor the centre region of *any* GT)

with the centre region a square of half-side ``2.5 / 32`` (normalised) around the GT centre. A query wanted by
several GTs keeps the cheapest one; a GT left without queries then takes the cheapest still-free query, until every
GT has one (when there are at least as many queries as GTs).

The official loop re-resolves conflicts with a stale mask; here conflicts are recomputed and unmatched GTs choose
only among free queries, which gives the same result whenever the official one is well defined.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from .losses import batch_focal_cost

__all__ = ["in_boxes_info", "simota_cost", "dynamic_k_matching", "SimOTAMatcher"]


def in_boxes_info(pred_boxes: Tensor, gt_boxes: Tensor, center_radius: float = 2.5, expanded_stride: float = 32):
    """Centre priors of SimOTA.

    Args:
        pred_boxes: ``(Q, 4)`` cxcywh normalised. gt_boxes: ``(G, 4)`` cxcywh normalised.
    Returns:
        fg: ``(Q,)`` the query centre lies in some GT box or some GT centre region.
        in_box_and_center: ``(Q, G)`` the query centre lies in GT g's box *and* its centre region.
    """
    cx, cy = pred_boxes[:, 0:1], pred_boxes[:, 1:2]
    xyxy = box_cxcywh_to_xyxy(gt_boxes)
    in_box = (cx > xyxy[:, 0]) & (cx < xyxy[:, 2]) & (cy > xyxy[:, 1]) & (cy < xyxy[:, 3])
    r = center_radius / expanded_stride
    in_center = (
        (cx > gt_boxes[:, 0] - r) & (cx < gt_boxes[:, 0] + r) & (cy > gt_boxes[:, 1] - r) & (cy < gt_boxes[:, 1] + r)
    )
    fg = in_box.any(1) | in_center.any(1)
    return fg, in_box & in_center


def simota_cost(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    cost_class: float = 1.0,
    cost_giou: float = 3.0,
    cost_center: float = 100.0,
    cost_background: float = 10000.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    center_radius: float = 2.5,
    expanded_stride: float = 32,
) -> tuple[Tensor, Tensor]:
    """SimOTA cost and IoU of one image.

    Args:
        pred_logits: ``(Q, K)``. pred_boxes: ``(Q, 4)`` cxcywh. gt_labels: ``(G,)``. gt_boxes: ``(G, 4)`` cxcywh.
    Returns:
        cost ``(Q, G)`` (lower = better) and box IoU ``(Q, G)``.
    """
    fg, in_box_and_center = in_boxes_info(pred_boxes, gt_boxes, center_radius, expanded_stride)
    pred_xyxy, gt_xyxy = box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes)
    ious = box_iou(pred_xyxy, gt_xyxy)[0]
    c_class = batch_focal_cost(pred_logits, gt_labels, alpha=focal_alpha, gamma=focal_gamma)
    c_giou = -generalized_box_iou(pred_xyxy, gt_xyxy)
    cost = cost_class * c_class + cost_giou * c_giou + cost_center * (~in_box_and_center).to(c_giou.dtype)
    cost = cost + cost_background * (~fg).to(cost.dtype)[:, None]
    return cost, ious


def _resolve_conflicts(matching: Tensor, cost: Tensor) -> None:
    """Queries assigned to several GTs keep only their cheapest GT (in place)."""
    multi = matching.sum(1) > 1
    if multi.any():
        best_gt = cost[multi].masked_fill(~matching[multi], float("inf")).argmin(1)
        matching[multi] = False
        matching[multi.nonzero()[:, 0], best_gt] = True


def dynamic_k_matching(cost: Tensor, ious: Tensor, n_candidate_k: int = 10) -> Tensor:
    """Dynamic-k assignment.

    Args:
        cost: ``(Q, G)``. ious: ``(Q, G)``. n_candidate_k: IoUs summed to get each GT's ``k`` (10; IDOL's
            contrastive sampling also uses 100).
    Returns:
        ``(Q, G)`` bool matching matrix: each query matched to at most one GT; every GT matched to at least one
        query when ``Q >= G``.
    """
    num_q, num_gt = cost.shape
    matching = torch.zeros_like(cost, dtype=torch.bool)
    if num_gt == 0 or num_q == 0:
        return matching
    # k per GT: how much IoU mass the predictions put on it (well-localised GTs get more positives)
    topk_ious = torch.topk(ious, min(n_candidate_k, num_q), dim=0).values
    dynamic_ks = topk_ious.sum(0).int().clamp(min=1, max=num_q)
    for g in range(num_gt):
        idx = torch.topk(cost[:, g], k=int(dynamic_ks[g]), largest=False).indices
        matching[idx, g] = True
    _resolve_conflicts(matching, cost)
    # GTs that lost all their queries take the cheapest free query, repeatedly, while free queries remain
    while True:
        unmatched = (~matching.any(0)).nonzero()[:, 0]
        free = ~matching.any(1)
        if len(unmatched) == 0 or not free.any():
            break
        sub = cost[:, unmatched].masked_fill(~free[:, None], float("inf"))
        matching[sub.argmin(0), unmatched] = True
        _resolve_conflicts(matching, cost)
    return matching


class SimOTAMatcher(nn.Module):
    """Batched SimOTA matcher with IDOL's constants (its ``set_cost_*`` options are unused there as well).

    ``forward(outputs, targets)`` with ``outputs["pred_logits"] (B, Q, K)`` and ``outputs["pred_boxes"] (B, Q, 4)``
    cxcywh, ``targets`` a list of B dicts with ``labels (G,)`` and ``boxes (G, 4)`` cxcywh, returns a list of B
    ``(query_idx, gt_idx)`` int64 pairs sorted by query index (a GT may appear several times). With
    ``return_best=True`` it also returns, per image, ``(G,)`` the cheapest matched query of every GT (IDOL's
    ``matched_ids``, the key-frame anchors of the contrastive loss; -1 for a GT left unmatched).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_giou: float = 3.0,
        cost_center: float = 100.0,
        cost_background: float = 10000.0,
        n_candidate_k: int = 10,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        center_radius: float = 2.5,
        expanded_stride: float = 32,
    ):
        super().__init__()
        self.cost_kwargs = dict(
            cost_class=cost_class,
            cost_giou=cost_giou,
            cost_center=cost_center,
            cost_background=cost_background,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            center_radius=center_radius,
            expanded_stride=expanded_stride,
        )
        self.n_candidate_k = n_candidate_k

    @torch.no_grad()
    def match_image(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor):
        """One image: ``(Q, K)``, ``(Q, 4)``, ``(G,)``, ``(G, 4)`` -> ``(query_idx, gt_idx, best_query (G,))``."""
        device = pred_logits.device
        num_gt = len(gt_labels)
        if num_gt == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return empty, empty, empty
        cost, ious = simota_cost(pred_logits.float(), pred_boxes.float(), gt_labels, gt_boxes.float(),
                                 **self.cost_kwargs)
        matching = dynamic_k_matching(cost, ious, self.n_candidate_k)
        query_idx = matching.any(1).nonzero()[:, 0]
        gt_idx = matching[query_idx].float().argmax(1)
        masked = cost.masked_fill(~matching, float("inf"))
        best = masked.argmin(0)
        best = torch.where(matching.any(0), best, torch.full_like(best, -1))
        return query_idx, gt_idx, best

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], return_best: bool = False):
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.shape[0] != len(targets):
            raise ValueError(f"outputs have batch {logits.shape[0]} but {len(targets)} targets were given")
        indices, best = [], []
        for b, tgt in enumerate(targets):
            q, g, bq = self.match_image(logits[b], boxes[b], tgt["labels"], tgt["boxes"])
            indices.append((q, g))
            best.append(bq)
        return (indices, best) if return_best else indices
