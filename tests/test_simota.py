"""SimOTA dynamic-k matcher: hand-computed k, priors, conflicts, DETR-style invariances."""

import torch

from vis_core.modeling.box_ops import box_cxcywh_to_xyxy, box_iou
from vis_core.modeling.simota_matcher import SimOTAMatcher, dynamic_k_matching, in_boxes_info, simota_cost


def _random_predictions(q, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, k, generator=g)
    centres = torch.rand(q, 2, generator=g) * 0.8 + 0.1
    sizes = torch.rand(q, 2, generator=g) * 0.3 + 0.05
    return logits, torch.cat([centres, sizes], 1)


def test_dynamic_k_is_floor_of_top10_iou_sum():
    # GT 0: 12 candidates with IoU 0.3 -> top-10 sum 3.0 -> k = 3; GT 1: tiny IoUs -> k clamped to 1
    q = 16
    ious = torch.zeros(q, 2)
    ious[:12, 0] = 0.3
    ious[12:, 1] = 0.05
    cost = torch.arange(q, dtype=torch.float32)[:, None].repeat(1, 2)
    cost[:, 1] = -cost[:, 1]  # GT 1 prefers the last queries
    m = dynamic_k_matching(cost, ious)
    assert m[:, 0].nonzero()[:, 0].tolist() == [0, 1, 2]
    assert m[:, 1].nonzero()[:, 0].tolist() == [15]


def test_conflicts_go_to_the_cheaper_gt_and_lost_gts_take_a_free_query():
    # both GTs want query 0 (k = 1 each); it is cheaper for GT 1, so GT 0 falls back to its next cheapest
    cost = torch.tensor([[1.0, 0.5], [2.0, 9.0], [3.0, 9.0]])
    ious = torch.zeros(3, 2)
    m = dynamic_k_matching(cost, ious)
    assert m.tolist() == [[False, True], [True, False], [False, False]]
    assert (m.sum(1) <= 1).all() and (m.sum(0) >= 1).all()


def test_centre_prior():
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    preds = torch.tensor([
        [0.5, 0.5, 0.1, 0.1],  # inside the box and the centre region (radius 2.5/32 = 0.078)
        [0.35, 0.5, 0.1, 0.1],  # inside the box only
        [0.9, 0.9, 0.1, 0.1],  # outside both
    ])
    fg, in_both = in_boxes_info(preds, gt)
    assert fg.tolist() == [True, True, False]
    assert in_both[:, 0].tolist() == [True, False, False]
    # the cost adds 100 for "not in both" and 10000 for "not in any"
    logits = torch.zeros(3, 2)
    cost, _ = simota_cost(logits, preds, torch.tensor([1]), gt)
    assert 90 < cost[1, 0] - cost[0, 0] < 110
    assert cost[2, 0] > 10000


def test_perfect_prediction_costs_least_and_is_matched():
    logits, boxes = _random_predictions(30, 5)
    gt_boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]])
    gt_labels = torch.tensor([2, 4])
    boxes[7], boxes[21] = gt_boxes[0], gt_boxes[1]
    logits[7, 2], logits[21, 4] = 8.0, 8.0
    cost, _ = simota_cost(logits, boxes, gt_labels, gt_boxes)
    assert cost[:, 0].argmin().item() == 7 and cost[:, 1].argmin().item() == 21
    matcher = SimOTAMatcher()
    indices, best = matcher({"pred_logits": logits[None], "pred_boxes": boxes[None]},
                            [{"labels": gt_labels, "boxes": gt_boxes}], return_best=True)
    q, g = indices[0]
    assert dict(zip(q.tolist(), g.tolist(), strict=True))[7] == 0
    assert dict(zip(q.tolist(), g.tolist(), strict=True))[21] == 1
    assert best[0].tolist() == [7, 21]
    # each query at most once, every GT at least once, k bounded by the IoU mass
    assert len(set(q.tolist())) == len(q)
    assert set(g.tolist()) == {0, 1}
    ious = box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes))[0]
    k = ious.topk(10, dim=0).values.sum(0).int().clamp(min=1)
    for gi in range(2):
        assert (g == gi).sum() <= k[gi]


def test_permuting_predictions_permutes_the_assignment():
    logits, boxes = _random_predictions(40, 3, seed=1)
    gt_boxes = torch.tensor([[0.3, 0.4, 0.3, 0.3], [0.6, 0.6, 0.4, 0.3], [0.5, 0.2, 0.2, 0.2]])
    gt_labels = torch.tensor([0, 1, 2])
    targets = [{"labels": gt_labels, "boxes": gt_boxes}]
    matcher = SimOTAMatcher()
    (q, g), = matcher({"pred_logits": logits[None], "pred_boxes": boxes[None]}, targets)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    (qp, gp), = matcher({"pred_logits": logits[perm][None], "pred_boxes": boxes[perm][None]}, targets)
    original = dict(zip(q.tolist(), g.tolist(), strict=True))
    permuted = {perm[i].item(): gt for i, gt in zip(qp.tolist(), gp.tolist(), strict=True)}
    assert permuted == original
    assert qp.tolist() == sorted(qp.tolist())


def test_batch_with_empty_image_and_more_gts_than_queries():
    logits, boxes = _random_predictions(3, 2, seed=2)
    big = {"labels": torch.tensor([0, 1, 0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 4)}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    out = {"pred_logits": torch.stack([logits, logits]), "pred_boxes": torch.stack([boxes, boxes])}
    indices, best = SimOTAMatcher()(out, [big, empty], return_best=True)
    q, g = indices[0]
    assert len(q) == 3 and len(set(q.tolist())) == 3  # every query used once, one GT left out
    assert (best[0] >= 0).sum() == 3
    assert len(indices[1][0]) == 0 and best[1].numel() == 0


def test_criterion_match_returns_the_last_layers_best_queries():
    from vis_core.modeling.idol_criterion import IDOLCriterion

    logits, boxes = _random_predictions(12, 3, seed=4)
    boxes[5] = torch.tensor([0.4, 0.4, 0.3, 0.3])
    logits[5, 1] = 9.0
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.3]])}]
    layer = {"pred_logits": logits[None], "pred_boxes": boxes[None]}
    indices, best = IDOLCriterion(3).match({**layer, "aux_outputs": [layer]}, targets, return_best=True)
    assert len(indices) == 2 and best[0].tolist() == [5]
    assert 5 in indices[-1][0][0].tolist()
