"""The training losses of the report add-ons (boundary branch, quality module), shared by IDOL and MinVIS.

A method hands over its final layer's matched queries, in one order (image by image, as matched): their
predicted mask logits, their GT masks already at the stride of the mask logits, and two callables that run
the heads on them: ``boundary_logits`` (the part that depends on the segmenter: a dot product with
Mask2Former's mask features for MinVIS, CondInst dynamic convolutions + upsampling for IDOL) and
``quality_scores`` (the quality head on the matched queries' embeddings; IDOL runs it image by image, MinVIS
on all at once, and a matrix product of another size rounds differently, so the caller keeps its own way).

The two methods differ on purpose in three places, each the behaviour of its own code, and keep them:

* GT downsampling, done by the caller: IDOL reads one pixel per stride-4 cell
  (:func:`~vis_core.modeling.idol_criterion.downsample_target_masks`, as its mask losses); MinVIS
  area-averages and binarises at 0.5 (:func:`~vis_core.methods.minvis.matched_targets_at`).
* The normaliser ``num_masks``: MinVIS passes Mask2Former's (GT masks averaged over the processes) to both
  losses; IDOL passes None, the local number of matched queries (at least 1).
* An empty matching: with ``empty_match_anchor`` (IDOL passes all query embeddings) each loss is
  ``anchor.sum() * 0 + sum(head parameters) * 0`` and the heads do not run; without it (MinVIS) the heads
  run on the empty set and the losses return their own zeros.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from vis_core.modeling.heads.boundary import BoundaryConfig, boundary_loss, boundary_targets
from vis_core.modeling.heads.quality import QualityConfig, mask_iou_targets, quality_loss

__all__ = ["addon_losses"]


def _empty_match_zero(anchor: Tensor, head: nn.Module) -> Tensor:
    """A zero that keeps ``anchor`` and every parameter of ``head`` in the graph (DDP needs all of them)."""
    return anchor.sum() * 0.0 + sum(p.sum() for p in head.parameters()) * 0.0


def addon_losses(
    mask_logits: Tensor,
    gt_masks: Tensor,
    *,
    boundary_head: nn.Module | None,
    boundary_logits: Callable[[], Tensor],
    boundary_cfg: BoundaryConfig,
    quality_head: nn.Module | None,
    quality_scores: Callable[[], Tensor],
    quality_cfg: QualityConfig,
    num_masks: float | None = None,
    empty_match_anchor: Tensor | None = None,
) -> dict[str, Tensor]:
    """Weighted ``loss_boundary`` (when ``boundary_head``) and ``loss_quality`` (when ``quality_head``).

    Args:
        mask_logits: ``(N, h, w)`` mask logits of the ``N`` matched queries (the quality target is their IoU
            with the GT; no gradient).
        gt_masks: ``(N, h, w)`` 0/1 float, their GT masks at the same stride.
        boundary_head: the boundary head, or None when the branch is off.
        boundary_logits: ``() -> (N, h, w)``: ``boundary_head`` on the matched queries.
        boundary_cfg, quality_cfg: thresholds, smooth term and loss weights.
        quality_head: the quality head, or None when the module is off.
        quality_scores: ``() -> (N,)``: ``quality_head`` on the matched queries' embeddings.
        num_masks: normaliser of both losses; None -> ``max(N, 1)`` (see the module docstring).
        empty_match_anchor: any tensor of the graph (IDOL: all query embeddings); see the module docstring.

    The callables run only for a branch that is on and, with ``empty_match_anchor``, when something is matched.
    """
    losses = {}
    empty = empty_match_anchor is not None and mask_logits.shape[0] == 0
    if boundary_head is not None:
        if empty:
            loss = _empty_match_zero(empty_match_anchor, boundary_head)
        else:
            logits = boundary_logits()
            target = boundary_targets(gt_masks, boundary_cfg.threshold).to(logits.dtype)
            loss = boundary_loss(logits, target, num_masks, smooth=boundary_cfg.smooth)
        losses["loss_boundary"] = loss * boundary_cfg.loss_weight
    if quality_head is not None:
        if empty:
            loss = _empty_match_zero(empty_match_anchor, quality_head)
        else:
            iou = mask_iou_targets(mask_logits.detach(), gt_masks.to(mask_logits.dtype), quality_cfg.mask_threshold)
            loss = quality_loss(quality_scores(), iou, num_masks)
        losses["loss_quality"] = loss * quality_cfg.loss_weight
    return losses
