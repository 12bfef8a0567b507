"""The shared add-on losses: the formulas, the normaliser and the two empty-match conventions."""

from __future__ import annotations

import pytest
import torch

from vis_core.modeling.heads.addon_losses import addon_losses
from vis_core.modeling.heads.boundary import BoundaryConfig, BoundaryHead, boundary_loss, boundary_targets
from vis_core.modeling.heads.quality import QualityConfig, QualityHead

BOUNDARY = BoundaryConfig(enabled=True, loss_weight=2.0)
QUALITY = QualityConfig(enabled=True, loss_weight=3.0)


def _case(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = BoundaryHead(8, 4), QualityHead(8)
    embeds = torch.randn(n, 8, generator=g, requires_grad=True)
    features = torch.randn(n, 4, 6, 6, generator=g)
    masks = torch.randn(n, 6, 6, generator=g) * 4
    gt = torch.zeros(n, 6, 6)
    gt[:, 1:4, 1:5] = 1.0
    return heads, embeds, features, masks, gt


def _losses(heads, embeds, features, masks, gt, calls=None, **kwargs):
    boundary_head, quality_head = heads
    calls = [] if calls is None else calls

    def boundary_logits():
        calls.append("boundary")
        return boundary_head(embeds, features)

    def quality_scores():
        calls.append("quality")
        return quality_head(embeds)

    return addon_losses(masks, gt, boundary_head=boundary_head, boundary_logits=boundary_logits,
                        boundary_cfg=BOUNDARY, quality_head=quality_head, quality_scores=quality_scores,
                        quality_cfg=QUALITY, **kwargs)


def test_weighted_formulas_and_normaliser():
    heads, embeds, features, masks, gt = _case()
    losses = _losses(heads, embeds, features, masks, gt, num_masks=5.0)
    logits = heads[0](embeds, features)
    expected_b = boundary_loss(logits, boundary_targets(gt, BOUNDARY.threshold), 5.0) * 2.0
    torch.testing.assert_close(losses["loss_boundary"], expected_b, rtol=0, atol=0)
    pred = masks.sigmoid() > 0.5
    iou = (pred & (gt > 0.5)).flatten(1).sum(1) / (pred | (gt > 0.5)).flatten(1).sum(1)
    expected_q = ((heads[1](embeds) - iou) ** 2).sum() / 5.0 * 3.0
    torch.testing.assert_close(losses["loss_quality"], expected_q)
    # None: the local count of matched queries (IDOL)
    local = _losses(heads, embeds, features, masks, gt)
    for key in losses:
        torch.testing.assert_close(local[key], losses[key] * 5.0 / 3)


def test_branches_that_are_off_give_no_loss_and_run_nothing():
    heads, embeds, features, masks, gt = _case()
    calls = []
    only_quality = _losses((None, heads[1]), embeds, features, masks, gt, calls=calls)
    assert set(only_quality) == {"loss_quality"} and calls == ["quality"]
    assert _losses((None, None), embeds, features, masks, gt) == {}


@pytest.mark.parametrize("anchored", [True, False])
def test_empty_match(anchored):
    heads, embeds, features, masks, gt = _case(n=0)
    anchor = torch.randn(2, 5, 8, requires_grad=True)
    calls = []
    losses = _losses(heads, embeds, features, masks, gt, calls=calls,
                     empty_match_anchor=anchor if anchored else None)
    assert set(losses) == {"loss_boundary", "loss_quality"} and all(v.item() == 0 for v in losses.values())
    # IDOL's zero hangs from the anchor and every head parameter, without running the heads; MinVIS's heads run
    assert calls == ([] if anchored else ["boundary", "quality"])
    sum(losses.values()).backward()
    assert (anchor.grad is not None) == anchored
    for head in heads:
        assert all(p.grad is not None and not p.grad.any() for p in head.parameters())
