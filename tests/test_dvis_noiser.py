"""DVIS++ Noiser (vis_core.tracking.noiser): eqs. 1-3 of report 002, the identity rule, the per-frame draw."""

from __future__ import annotations

import pytest
import torch

from vis_core.tracking.minvis_matching import match_from_embeds
from vis_core.tracking.noiser import NoiseConfig, Noiser

Q, C = 6, 8


def _embeds(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference (Q, C) and the current frame = the reference in another order plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(Q, C, generator=g)
    cur = ref[torch.randperm(Q, generator=g)] + 0.01 * torch.randn(Q, C, generator=g)
    return ref, cur


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_frame_zero_is_never_noised():
    _, cur = _embeds()
    for mode in ("rs", "wa", "cc"):
        idx, out = Noiser(NoiseConfig(mode, ratio=1.0))(None, cur, activate=True, generator=_gen())
        assert torch.equal(idx, torch.arange(Q)) and torch.equal(out, cur)


@pytest.mark.parametrize("mode", ["none", "rs", "wa", "cc"])
def test_without_noise_the_identity_is_the_hungarian_match(mode):
    ref, cur = _embeds()
    matched = match_from_embeds(ref, cur)
    for noiser, activate in ((Noiser(NoiseConfig(mode, ratio=0.0)), True),  # never fires
                             (Noiser(NoiseConfig(mode, ratio=1.0)), False)):  # eval: not active
        idx, out = noiser(ref, cur, activate=activate, generator=_gen())
        assert torch.equal(idx, matched) and torch.equal(out, cur[matched])
    torch.testing.assert_close(cur[matched], ref, atol=0.05, rtol=0)  # the match undoes the shuffle


def test_rs_replaces_the_match_by_a_random_permutation():
    ref, cur = _embeds()
    idx, out = Noiser(NoiseConfig("rs", ratio=1.0))(ref, cur, activate=True, generator=_gen())
    g = _gen()
    g_fire = torch.rand((), generator=g)  # the frame's Bernoulli draw comes first
    perm = torch.randperm(Q, generator=g)
    assert g_fire < 1.0 and torch.equal(idx, perm) and torch.equal(out, cur[perm])
    assert not torch.equal(idx, match_from_embeds(ref, cur))


def test_wa_weighted_average_and_identity_rule():
    ref, cur = _embeds()
    idx, out = Noiser(NoiseConfig("wa", ratio=1.0))(ref, cur, activate=True, generator=_gen())
    g = _gen()
    torch.rand((), generator=g)
    perm = torch.randperm(Q, generator=g)
    alpha = torch.rand(Q, generator=g)
    for i in range(Q):  # eq. 2, query by query
        torch.testing.assert_close(out[i], alpha[i] * cur[i] + (1 - alpha[i]) * cur[perm[i]])
        assert int(idx[i]) == (int(perm[i]) if alpha[i] < 0.5 else i)
    assert (alpha < 0.5).any() and (alpha >= 0.5).any()  # both branches of the rule are exercised


def test_cc_channel_cut_and_identity_rule():
    ref, cur = _embeds()
    idx, out = Noiser(NoiseConfig("cc", ratio=1.0))(ref, cur, activate=True, generator=_gen(5))
    g = _gen(5)
    torch.rand((), generator=g)
    perm = torch.randperm(Q, generator=g)
    k = torch.randint(0, C, (Q,), generator=g)
    for i in range(Q):  # eq. 3: channels [:k] from Q_i, the rest from the partner
        ki = int(k[i])
        expected = torch.cat([cur[i, :ki], cur[perm[i], ki:]])
        assert torch.equal(out[i], expected)
        assert int(idx[i]) == (int(perm[i]) if ki < C // 2 else i)
    assert (k < C // 2).any() and (k >= C // 2).any()


def test_hand_computed_two_queries():
    """Q = 2, C = 2 with the partner forced to the swap: every formula by hand."""
    cur = torch.tensor([[1.0, 2.0], [3.0, 4.0]])

    class Swap(Noiser):
        def partners(self, q, generator=None, device=None):
            return torch.tensor([1, 0])

    idx, out = Swap(NoiseConfig("rs")).noise(cur)
    assert idx.tolist() == [1, 0] and out.tolist() == [[3.0, 4.0], [1.0, 2.0]]

    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(2, generator=torch.Generator().manual_seed(0))  # what wa will draw
    idx, out = Swap(NoiseConfig("wa")).noise(cur, g)
    a0, a1 = float(alpha[0]), float(alpha[1])
    want = [[a0 * 1 + (1 - a0) * 3, a0 * 2 + (1 - a0) * 4], [a1 * 3 + (1 - a1) * 1, a1 * 4 + (1 - a1) * 2]]
    torch.testing.assert_close(out, torch.tensor(want))
    assert idx.tolist() == [1 if a0 < 0.5 else 0, 0 if a1 < 0.5 else 1]

    k = torch.randint(0, 2, (2,), generator=torch.Generator().manual_seed(1))
    idx, out = Swap(NoiseConfig("cc")).noise(cur, torch.Generator().manual_seed(1))
    rows = [[1.0, 2.0] if int(k[0]) == 2 else ([1.0, 4.0] if int(k[0]) == 1 else [3.0, 4.0]),
            [3.0, 4.0] if int(k[1]) == 2 else ([3.0, 2.0] if int(k[1]) == 1 else [1.0, 2.0])]
    assert out.tolist() == rows
    assert idx.tolist() == [1 if int(k[0]) < 1 else 0, 0 if int(k[1]) < 1 else 1]


def test_randint_partner_option_follows_eq1():
    ref, cur = _embeds()
    idx, out = Noiser(NoiseConfig("rs", ratio=1.0, partner="randint"))(ref, cur, activate=True,
                                                                       generator=_gen(11))
    g = _gen(11)
    torch.rand((), generator=g)
    partner = torch.randint(0, Q, (Q,), generator=g)
    assert torch.equal(idx, partner) and torch.equal(out, cur[partner])


def test_one_bernoulli_draw_per_frame_at_the_ratio():
    ref, cur = _embeds()
    matched = match_from_embeds(ref, cur)
    noiser, g = Noiser(NoiseConfig("rs", ratio=0.3)), _gen(7)
    fired = [not torch.equal(noiser(ref, cur, activate=True, generator=g)[0], matched) for _ in range(400)]
    # a fired frame's permutation may equal the match by chance (1/720): the rate is about the ratio
    assert 0.22 < sum(fired) / len(fired) < 0.38


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        NoiseConfig("shuffle")
    with pytest.raises(ValueError, match="ratio"):
        NoiseConfig("rs", ratio=1.5)
    with pytest.raises(ValueError, match="partner"):
        NoiseConfig("rs", partner="roll")
