"""Hungarian matching of mask queries to ground-truth instances with Mask2Former's point-sampled costs.

Cost of assigning query ``q`` to target ``t`` (Mask2Former defaults: class 2, mask 5, dice 5, 12,544 points)::

    C[q, t] = w_class * (-softmax(logits_q)[label_t]) + w_mask * BCE(q, t) + w_dice * dice(q, t)

where BCE and dice are computed at ``num_points`` uniformly random points shared by all queries and targets
of an image (normalised coordinates, so ``H/4`` predictions and full-size targets are compared at the same
places).
The assignment is solved exactly with ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from vis_core.modeling.losses import batch_dice_cost, batch_sigmoid_ce_cost
from vis_core.modeling.point_sampling import point_sample

__all__ = ["HungarianMatcher", "build_matcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment between the ``Q`` queries and the ``N <= Q`` targets of every image.

    Args:
        cost_class: weight of the classification cost ``-p(label)``.
        cost_mask: weight of the point-sampled sigmoid BCE cost.
        cost_dice: weight of the point-sampled dice cost.
        num_points: points sampled per image (12,544 = 112 x 112 in Mask2Former).
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all cost weights are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, masks: Tensor, labels: Tensor, tgt_masks: Tensor) -> Tensor:
        """Matching cost of one image.

        Args:
            logits: ``(Q, K + 1)`` class logits (last = no object).
            masks: ``(Q, h, w)`` mask logits.
            labels: ``(N,)`` int64 target classes.
            tgt_masks: ``(N, H, W)`` binary target masks (any resolution).
        Returns:
            ``(Q, N)`` float32 cost on the device of ``logits``.
        """
        prob = logits.float().softmax(-1)
        cost_class = -prob[:, labels]
        # one set of points for all masks of the image keeps the cost an (Q, N) matmul
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        out = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1)).squeeze(1)
        tgt = point_sample(
            tgt_masks[:, None].to(out.dtype), coords.expand(tgt_masks.shape[0], -1, -1)
        ).squeeze(1)
        # float32 costs even under AMP: autocast would run the pairwise matmuls in float16
        with torch.autocast(device_type=out.device.type, enabled=False):
            cost_mask = batch_sigmoid_ce_cost(out, tgt)
            cost_dice = batch_dice_cost(out, tgt)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``pred_logits (B, Q, K + 1)`` and ``pred_masks (B, Q, h, w)``.
            targets: ``B`` dicts with ``labels (N_b,)`` and ``masks (N_b, H, W)``.
        Returns:
            ``B`` pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length ``min(Q, N_b)``, sorted by
            query index.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {logits.shape[0]}")
        indices = []
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to(logits.device)
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b], masks[b], labels, tgt["masks"].to(masks.device))
            if not torch.isfinite(cost).all():
                raise FloatingPointError(f"HungarianMatcher: non-finite matching cost for image {b}")
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )


def build_matcher(
    cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
) -> HungarianMatcher:
    return HungarianMatcher(cost_class, cost_mask, cost_dice, num_points)
