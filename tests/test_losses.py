"""Hand-computed values of the shared losses, point sampling and the Mask2Former criterion."""

import math

import torch
import torch.nn.functional as F

from vis_core.modeling.criterion import build_criterion
from vis_core.modeling.losses import (
    batch_dice_cost,
    batch_focal_cost,
    batch_sigmoid_ce_cost,
    dice_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    softmax_ce_loss,
)
from vis_core.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

LN2 = math.log(2.0)


def test_dice_loss_hand_computed():
    # p = 0.5 everywhere, target [1, 1, 0, 0]: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    logits = torch.zeros(1, 4)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert torch.isclose(dice_loss(logits, target, 1), torch.tensor(0.4))
    # a confident perfect mask has (almost) zero loss; normalisation divides the sum of masks
    perfect = torch.tensor([[20.0, 20.0, -20.0, -20.0]])
    two = dice_loss(torch.cat([logits, perfect]), target.repeat(2, 1), 2)
    assert torch.isclose(two, torch.tensor(0.2), atol=1e-6)


def test_sigmoid_ce_loss_hand_computed():
    logits = torch.zeros(2, 5)
    targets = torch.randint(0, 2, (2, 5)).float()
    assert torch.isclose(sigmoid_ce_loss(logits, targets, 2), torch.tensor(LN2))
    # mean over points, sum over masks: one mask at logit 2 with target 1 -> log(1 + e^-2)
    value = sigmoid_ce_loss(torch.full((1, 3), 2.0), torch.ones(1, 3), 0.5)
    assert torch.isclose(value, torch.tensor(math.log1p(math.exp(-2.0)) / 0.5))


def test_sigmoid_focal_loss_hand_computed():
    # logit 0 -> p = 0.5, (1 - p_t)^2 = 0.25; positive weighted 0.25, negative 0.75
    logits = torch.zeros(1, 2, 1)
    targets = torch.tensor([[[1.0], [0.0]]])
    expected = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2  # mean over the 2 queries, / num_boxes = 1
    assert torch.isclose(sigmoid_focal_loss(logits, targets, 1), torch.tensor(expected))
    # gamma = 0 and alpha < 0 reduce to plain BCE, averaged over dim 1
    x = torch.randn(3, 4, 5)
    t = torch.randint(0, 2, (3, 4, 5)).float()
    plain = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1).sum() / 2
    assert torch.isclose(sigmoid_focal_loss(x, t, 2, alpha=-1, gamma=0), plain)


def test_softmax_ce_no_object_weight():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # K = 2, index 2 = no object
    classes = torch.tensor([[0, 2]])
    ce0 = -torch.log_softmax(logits[0, 0], -1)[0]
    ce1 = -torch.log_softmax(logits[0, 1], -1)[2]
    expected = (1.0 * ce0 + 0.1 * ce1) / 1.1
    assert torch.isclose(softmax_ce_loss(logits, classes, 0.1), expected)


def test_pairwise_costs_match_per_mask_losses():
    torch.manual_seed(0)
    x = torch.randn(3, 40)
    t = (torch.rand(4, 40) > 0.5).float()
    dice = batch_dice_cost(x, t)
    bce = batch_sigmoid_ce_cost(x, t)
    assert dice.shape == (3, 4)
    for n in range(3):
        for m in range(4):
            assert torch.isclose(dice[n, m], dice_loss(x[n : n + 1], t[m : m + 1], 1), atol=1e-6)
            assert torch.isclose(bce[n, m], sigmoid_ce_loss(x[n : n + 1], t[m : m + 1], 1), atol=1e-6)


def test_batch_focal_cost_hand_computed():
    logits = torch.tensor([[0.0, 3.0]])
    cost = batch_focal_cost(logits, torch.tensor([0, 1, 0]))
    assert torch.allclose(cost[0, 0], torch.tensor(-0.125 * LN2), atol=1e-6)
    assert torch.equal(cost[0, 0], cost[0, 2])
    assert cost[0, 1] < cost[0, 0]  # a confident correct class costs less


def test_point_sample_pixel_centres_and_bilinear():
    image = torch.arange(6.0).reshape(1, 1, 2, 3)
    # pixel (row 1, col 2) has its centre at x = 2.5 / 3, y = 1.5 / 2
    centre = torch.tensor([[[2.5 / 3, 1.5 / 2], [0.5 / 3, 0.5 / 2]]])
    assert torch.allclose(point_sample(image, centre), torch.tensor([[[5.0, 0.0]]]), atol=1e-6)
    # half-way between the centres of columns 0 and 1 of row 0
    mid = torch.tensor([[[1.0 / 3, 0.25]]])
    assert torch.allclose(point_sample(image, mid), torch.tensor([[[0.5]]]))
    grid = torch.rand(1, 4, 5, 2)
    assert point_sample(image, grid).shape == (1, 1, 4, 5)


def test_uncertain_points_are_the_most_uncertain_candidates():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 16, 16) * 5
    num_points = 10
    torch.manual_seed(7)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, 3, 1.0)
    torch.manual_seed(7)
    candidates = torch.rand(2, 30, 2)
    unc = calculate_uncertainty(point_sample(logits, candidates))[:, 0]
    for b in range(2):
        expected = candidates[b, unc[b].topk(num_points).indices]
        assert torch.equal(coords[b], expected)
    # with importance 0.75, 7 points are importance-sampled, the other 3 are fresh uniform draws
    mixed = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, 3, 0.75)
    assert mixed.shape == (2, num_points, 2) and (mixed >= 0).all() and (mixed <= 1).all()


def _perfect_outputs(labels, masks, num_queries, num_classes, scale=20.0):
    """Outputs where query i predicts target i exactly (confident class and mask), other queries no-object."""
    n = len(labels)
    logits = torch.full((1, num_queries, num_classes + 1), -scale)
    logits[0, n:, -1] = scale
    logits[0, torch.arange(n), labels] = scale
    pred = torch.full((1, num_queries) + masks.shape[1:], -scale)
    pred[0, :n] = masks.float() * 2 * scale - scale
    return {"pred_logits": logits, "pred_masks": pred}


def test_criterion_perfect_prediction_is_near_zero_and_beats_a_wrong_one():
    torch.manual_seed(0)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 9:15, 4:12] = True
    labels = torch.tensor([1, 3])
    targets = [{"labels": labels, "masks": masks}]
    criterion = build_criterion(num_classes=4, num_points=64)
    perfect = _perfect_outputs(labels, masks, num_queries=5, num_classes=4)
    wrong = _perfect_outputs(torch.tensor([2, 0]), masks.flip(1), num_queries=5, num_classes=4)
    perfect["aux_outputs"] = [dict(perfect)]
    lp = criterion(perfect, targets)
    lw = criterion(wrong, targets)
    assert set(lp) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    assert lp["loss_ce"] < 1e-3
    # the mask losses of a perfect mask are not 0: importance sampling puts 75% of the points on the border,
    # where bilinear sampling gives soft targets; they are still far below those of a wrong mask
    assert all(lp[k] < lw[k] for k in ("loss_ce", "loss_mask", "loss_dice"))
    # weights: class 2 -> loss_ce is 2 * softmax CE with no-object weight 0.1
    logits = torch.randn(1, 5, 5, requires_grad=True)
    out = {"pred_logits": logits, "pred_masks": torch.randn(1, 5, 4, 4, requires_grad=True)}
    losses = criterion(out, targets)
    sum(losses.values()).backward()
    assert logits.grad is not None and out["pred_masks"].grad.abs().sum() > 0


def test_criterion_without_targets_has_zero_mask_loss_and_full_no_object_ce():
    criterion = build_criterion(num_classes=3, num_points=16)
    logits = torch.zeros(2, 4, 4, requires_grad=True)
    masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, [empty, empty])
    assert torch.isclose(losses["loss_ce"], torch.tensor(2 * math.log(4.0)))
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    sum(losses.values()).backward()
    assert masks.grad is not None
