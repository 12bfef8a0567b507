"""Box utilities: hand-computed IoU / GIoU, round trips, symmetry, masks_to_boxes."""

import pytest
import torch

from vis_core.modeling.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    masks_to_boxes,
)


def test_format_round_trip_and_hand_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.allclose(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.8, 0.2, 1.0]]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh)
    # any leading shape
    boxes = torch.rand(3, 5, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    iou, union = box_iou(a, b)
    # overlap 1, union 4 + 4 - 1 = 7
    assert iou[0, 0].item() == pytest.approx(1 / 7)
    assert union[0, 0].item() == pytest.approx(7.0)
    assert iou[0, 1].item() == pytest.approx(1.0)
    assert iou[0, 2].item() == pytest.approx(0.0)
    giou = generalized_box_iou(a, b)
    # enclosing box of a and b0 is 3x3 = 9: giou = 1/7 - (9 - 7) / 9
    assert giou[0, 0].item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)
    assert giou[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    # disjoint: enclosing 4x2 = 8, union 4 + 1 = 5 -> 0 - 3/8
    assert giou[0, 2].item() == pytest.approx(-3 / 8, abs=1e-6)
    assert torch.allclose(box_area(b), torch.tensor([4.0, 4.0, 1.0]))


def test_giou_symmetry_range_and_elementwise_diagonal():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 4, generator=g)
    y = torch.rand(5, 4, generator=g)
    bx = box_cxcywh_to_xyxy(torch.cat([x[:, :2], x[:, 2:] * 0.5 + 0.01], 1))
    by = box_cxcywh_to_xyxy(torch.cat([y[:, :2], y[:, 2:] * 0.5 + 0.01], 1))
    giou = generalized_box_iou(bx, by)
    assert torch.allclose(giou, generalized_box_iou(by, bx).T, atol=1e-6)
    assert (giou <= 1 + 1e-6).all() and (giou >= -1 - 1e-6).all()
    # GIoU <= IoU, equality iff the union fills the enclosing box
    assert (giou <= box_iou(bx, by)[0] + 1e-6).all()
    diag = elementwise_generalized_box_iou(bx[:5], by)
    assert torch.allclose(diag, torch.diagonal(giou[:5, :5]), atol=1e-6)


def test_giou_rejects_inverted_boxes():
    bad = torch.tensor([[0.5, 0.5, 0.1, 0.9]])
    with pytest.raises(ValueError, match="boxes1"):
        generalized_box_iou(bad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_masks_to_boxes():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5, 0] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[2.0, 1.0, 6.0, 3.0], [0.0, 5.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    edges = masks_to_boxes(masks, exclusive=True)
    assert edges.tolist() == [[2.0, 1.0, 7.0, 4.0], [0.0, 5.0, 1.0, 6.0], [0.0, 0.0, 0.0, 0.0]]
    assert masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)
