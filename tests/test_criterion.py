"""SetCriterion takes and returns its matching: given indices replace the matcher, returned ones are its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vis_core.modeling.criterion import build_criterion

B, Q, K, AUX = 2, 6, 4, 2


def _outputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def layer() -> dict:
        return {"pred_logits": torch.randn(B, Q, K + 1, generator=g),
                "pred_masks": torch.randn(B, Q, 8, 8, generator=g)}

    return {**layer(), "aux_outputs": [layer() for _ in range(AUX)]}


def _targets() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    targets = []
    for n in (2, 3):
        masks = torch.rand(n, 32, 32, generator=g) > 0.6
        targets.append({"labels": torch.randint(0, K, (n,), generator=g), "masks": masks})
    return targets


class _RngNeutral(nn.Module):
    """The matcher run under a forked RNG: the criterion's own random points stay those of a given matching."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, outputs, targets):
        self.calls += 1
        with torch.random.fork_rng(devices=[]):
            return self.inner(outputs, targets)


def _same(a: list, b: list) -> bool:
    return all(torch.equal(q0, q1) and torch.equal(t0, t1) for (q0, t0), (q1, t1) in zip(a, b, strict=True))


def test_given_indices_give_the_losses_of_computed_ones_without_the_matcher():
    criterion = build_criterion(K, num_points=64)
    criterion.matcher = _RngNeutral(criterion.matcher)
    outputs, targets = _outputs(), _targets()
    torch.manual_seed(3)
    computed, indices = criterion(outputs, targets, return_indices=True)
    assert criterion.matcher.calls == AUX + 1 and len(indices) == AUX + 1
    torch.manual_seed(3)
    given = criterion(outputs, targets, indices=indices)
    assert criterion.matcher.calls == AUX + 1  # not run again
    assert list(given) == list(computed)  # same keys, same order (final layer first)
    for key, value in computed.items():
        assert torch.equal(given[key], value), key


def test_returned_indices_are_the_matchers_aux_first_final_last():
    criterion = build_criterion(K, num_points=64)
    outputs, targets = _outputs(), _targets()
    final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
    torch.manual_seed(5)
    # the criterion matches the final layer first (the official loop), so from the same RNG state...
    expected_final = criterion.matcher(final, targets)
    torch.manual_seed(5)
    _, indices = criterion(outputs, targets, return_indices=True)
    assert _same(indices[-1], expected_final)
    # one matching per aux layer before it, each a full per-image assignment
    assert len(indices) == AUX + 1
    for matched in indices[:-1]:
        assert [len(q) for q, _ in matched] == [len(t["labels"]) for t in targets]


def test_plain_call_is_unchanged_and_bad_indices_are_refused():
    criterion = build_criterion(K, num_points=64)
    outputs, targets = _outputs(), _targets()
    torch.manual_seed(7)
    plain = criterion(outputs, targets)
    torch.manual_seed(7)
    losses, _ = criterion(outputs, targets, return_indices=True)
    assert list(plain) == list(losses) and all(torch.equal(plain[k], losses[k]) for k in plain)
    with pytest.raises(ValueError, match="2 matchings given for 3 layers"):
        criterion(outputs, targets, indices=[None, None])
