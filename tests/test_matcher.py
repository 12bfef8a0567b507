"""DETR-style invariance tests of the Mask2Former Hungarian matcher."""

import torch

from vis_core.modeling.matcher import HungarianMatcher


def _random_problem(seed, num_queries=7, num_targets=4, num_classes=5, size=24):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(1, num_queries, num_classes + 1, generator=g),
        "pred_masks": torch.randn(1, num_queries, size // 4, size // 4, generator=g) * 3,
    }
    targets = [{
        "labels": torch.randint(0, num_classes, (num_targets,), generator=g),
        "masks": torch.rand(num_targets, size, size, generator=g) > 0.6,
    }]
    return outputs, targets


def _match(matcher, outputs, targets, seed=123):
    torch.manual_seed(seed)  # the sampled points are random: same seed -> same points
    return matcher(outputs, targets)


def _as_pairs(indices):
    q, t = indices
    return {int(j): int(i) for i, j in zip(q, t, strict=True)}


def test_permuting_predictions_permutes_the_assignment():
    matcher = HungarianMatcher(num_points=200)
    for seed in range(5):
        outputs, targets = _random_problem(seed)
        base = _as_pairs(_match(matcher, outputs, targets)[0])
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(100 + seed))
        permuted = {k: v[:, perm] for k, v in outputs.items()}
        moved = _as_pairs(_match(matcher, permuted, targets)[0])
        # query perm[i] of the original is query i of the permuted outputs
        assert {t: int(perm[q]) for t, q in moved.items()} == base


def test_permuting_targets_permutes_the_assignment():
    matcher = HungarianMatcher(num_points=200)
    outputs, targets = _random_problem(3)
    base = _as_pairs(_match(matcher, outputs, targets)[0])
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = [{"labels": targets[0]["labels"][perm], "masks": targets[0]["masks"][perm]}]
    moved = _as_pairs(_match(matcher, outputs, shuffled)[0])
    assert {int(perm[t]): q for t, q in moved.items()} == base


def test_perfect_prediction_costs_least_and_is_matched():
    matcher = HungarianMatcher(num_points=500)
    outputs, targets = _random_problem(11, num_queries=8, num_targets=3, size=32)
    labels, masks = targets[0]["labels"], targets[0]["masks"]
    chosen = [5, 1, 6]  # query chosen[t] is a perfect copy of target t (masks at 1/4 resolution)
    small = torch.nn.functional.interpolate(masks[:, None].float(), size=(8, 8), mode="area")[:, 0]
    for t, q in enumerate(chosen):
        outputs["pred_logits"][0, q] = -10.0
        outputs["pred_logits"][0, q, labels[t]] = 10.0
        outputs["pred_masks"][0, q] = torch.logit(small[t].clamp(1e-4, 1 - 1e-4))
    torch.manual_seed(0)
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], labels, masks)
    for t, q in enumerate(chosen):
        assert int(cost[:, t].argmin()) == q
    q_idx, t_idx = _match(matcher, outputs, targets)[0]
    assert {int(t): int(q) for q, t in zip(q_idx, t_idx, strict=True)} == dict(enumerate(chosen))


def test_batch_with_empty_image_and_more_targets_than_queries():
    matcher = HungarianMatcher(num_points=50)
    outputs, targets = _random_problem(2, num_queries=3, num_targets=5)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 24, 24, dtype=torch.bool)}
    outputs = {k: torch.cat([v, v]) for k, v in outputs.items()}
    indices = _match(matcher, outputs, [targets[0], empty])
    q, t = indices[0]
    assert len(q) == 3 and len(set(t.tolist())) == 3 and q.tolist() == sorted(q.tolist())
    assert len(indices[1][0]) == 0 and indices[1][0].dtype == torch.int64


def test_class_cost_alone_picks_the_most_confident_query():
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=10)
    logits = torch.zeros(1, 4, 3)
    logits[0, 2, 1] = 5.0
    outputs = {"pred_logits": logits, "pred_masks": torch.zeros(1, 4, 4, 4)}
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8, dtype=torch.bool)}]
    q, t = matcher(outputs, targets)[0]
    assert q.tolist() == [2] and t.tolist() == [0]
