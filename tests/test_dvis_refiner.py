"""DVIS temporal refiner: shapes, what mixes along which axis, the class head, padding, deep supervision,
learnability and the offline score fusion."""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from vis_core.modeling.dvis_refiner import TemporalRefiner, TemporalRefinerConfig, refined_scores

B, T, Q, QF, H, W, K = 2, 5, 4, 6, 6, 7, 5


def _refiner(**overrides) -> TemporalRefiner:
    torch.manual_seed(0)
    return TemporalRefiner(TemporalRefinerConfig.tiny(num_classes=K, mask_dim=8, **overrides)).eval()


def _inputs(c: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, c, T, Q, generator=g),
        torch.randn(B, c, T, QF, generator=g),
        torch.randn(B, T, 8, H, W, generator=g),
    )


def test_output_shapes():
    out = _refiner()(*_inputs())
    assert out["pred_logits"].shape == (B, Q, K + 1)
    assert out["pred_masks"].shape == (B, Q, T, H, W)
    assert out["pred_embds"].shape == (B, 32, T, Q)
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (B, Q, K + 1)
        assert aux["pred_masks"].shape == (B, Q, T, H, W)


def test_bad_config_and_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="odd"):
        TemporalRefinerConfig(conv_kernel_sizes=(4, 3))
    inst, frame, feats = _inputs()
    with pytest.raises(ValueError, match="frame_embeds"):
        _refiner()(inst, frame[:, :, :-1], feats)


def test_deep_supervision_predicts_every_layer_with_shared_heads():
    deep = _refiner(num_layers=3)
    inst, frame, feats = _inputs()
    out = deep(inst, frame, feats)
    assert len(out["aux_outputs"]) + 1 == 3
    # a 2-layer refiner with the first two layers (and the heads) of the 3-layer one must reproduce aux[-1]
    shallow = _refiner(num_layers=2)
    missing, unexpected = shallow.load_state_dict(deep.state_dict(), strict=False)
    assert not missing and all(".2." in k for k in unexpected)
    ref = shallow(inst, frame, feats)
    torch.testing.assert_close(out["aux_outputs"][-1]["pred_logits"], ref["pred_logits"])
    torch.testing.assert_close(out["aux_outputs"][-1]["pred_masks"], ref["pred_masks"])
    assert not torch.allclose(out["pred_logits"], ref["pred_logits"])


def test_temporal_mix_keeps_objects_apart():
    """Time attention + conv run per (video, object): changing one object changes no other object."""
    refiner = _refiner()
    x = torch.randn(B, Q, T, 32)
    y = x.clone()
    y[:, 1] += torch.randn(B, T, 32)
    a, b = refiner.temporal_mix(0, x), refiner.temporal_mix(0, y)
    keep = [0, 2, 3]
    torch.testing.assert_close(a[:, keep], b[:, keep])
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_object_permutation_equivariance():
    refiner = _refiner()
    inst, frame, feats = _inputs()
    out = refiner(inst, frame, feats)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = refiner(inst[..., perm], frame, feats)
    torch.testing.assert_close(permuted["pred_logits"], out["pred_logits"][:, perm])
    torch.testing.assert_close(permuted["pred_masks"], out["pred_masks"][:, perm])
    torch.testing.assert_close(permuted["pred_embds"], out["pred_embds"][..., perm])
    # the frame queries are a set (no positional encoding in the cross-attention): their order is irrelevant
    shuffled = refiner(inst, frame[..., torch.randperm(QF)], feats)
    torch.testing.assert_close(shuffled["pred_logits"], out["pred_logits"])
    torch.testing.assert_close(shuffled["pred_masks"], out["pred_masks"])


def _reverse_time(inst, frame, feats):
    return inst.flip(2), frame.flip(2), feats.flip(1)


def test_time_reversal_equivariance_needs_symmetric_kernels():
    """No temporal positional encoding and symmetric replicate padding: with palindromic conv kernels,
    reversing the video reverses the masks and leaves the video-level logits unchanged."""
    refiner = _refiner()
    inputs = _inputs()
    asym = refiner(*_reverse_time(*inputs))
    with torch.no_grad():
        for seq in refiner.conv_short_aggregate_layers:
            for conv in (seq[0], seq[2]):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    out = refiner(*inputs)
    rev = refiner(*_reverse_time(*inputs))
    torch.testing.assert_close(rev["pred_logits"], out["pred_logits"])
    torch.testing.assert_close(rev["pred_masks"], out["pred_masks"].flip(2))
    # the learned (asymmetric) kernels do see the direction of time
    assert not torch.allclose(asym["pred_masks"], out["pred_masks"].flip(2), atol=1e-3)


def test_with_unit_kernels_the_refiner_is_blind_to_frame_order():
    """Only the conv knows the frame order: with 1-frame kernels any permutation of T commutes."""
    refiner = _refiner(conv_kernel_sizes=(1, 1))
    inst, frame, feats = _inputs()
    out = refiner(inst, frame, feats)
    perm = torch.tensor([3, 0, 4, 2, 1])
    permuted = refiner(inst[:, :, perm], frame[:, :, perm], feats[:, perm])
    torch.testing.assert_close(permuted["pred_logits"], out["pred_logits"])
    torch.testing.assert_close(permuted["pred_masks"], out["pred_masks"][:, :, perm])


def test_replicate_padding():
    refiner = _refiner()
    conv = refiner.conv_short_aggregate_layers[0]
    # a constant sequence stays constant: the edge frames see copies of themselves, not zeros
    const = torch.randn(3, 32, 1).expand(3, 32, 7).contiguous()
    y = conv(const)
    torch.testing.assert_close(y, y[..., :1].expand_as(y))
    # and the whole block equals explicit replicate padding followed by unpadded convs
    x = torch.randn(3, 32, 7)
    a = F.conv1d(F.pad(x, (2, 2), mode="replicate"), conv[0].weight, conv[0].bias)
    ref = F.conv1d(F.pad(F.relu(a), (1, 1), mode="replicate"), conv[2].weight, conv[2].bias)
    torch.testing.assert_close(conv(x), ref)


def test_class_logits_follow_the_dominant_frame():
    refiner = _refiner()
    hidden = torch.randn(1, 1, 2, 4, 32)
    with torch.no_grad():
        refiner.activation_proj.weight.zero_()
        refiner.activation_proj.weight[0, 0] = 50.0
        refiner.activation_proj.bias.fill_(3.0)
    hidden[..., 0] = -1.0
    hidden[:, :, :, 2, 0] = 1.0  # frame 2's activation is 100 above the others: softmax weight ~1
    logits = refiner.pred_class(hidden)
    assert logits.shape == (1, 1, 2, K + 1)
    torch.testing.assert_close(logits, refiner.class_embed(hidden[:, :, :, 2]))


def test_uniform_activation_gives_the_mean_over_frames():
    """Through the full forward: a constant activation weights every frame 1/T."""
    refiner = _refiner()
    with torch.no_grad():
        refiner.activation_proj.weight.zero_()
    out = refiner(*_inputs())
    mean = out["pred_embds"].mean(dim=2).transpose(1, 2)  # (B, Q, C)
    torch.testing.assert_close(out["pred_logits"], refiner.class_embed(mean))


def test_tiny_refiner_overfits_a_fixed_target():
    torch.manual_seed(0)
    refiner = TemporalRefiner(TemporalRefinerConfig.tiny(num_classes=K, mask_dim=16)).train()
    inst, frame = torch.randn(1, 32, 4, 3), torch.randn(1, 32, 4, 3)
    feats = torch.randn(1, 4, 16, 8, 8)
    labels = torch.tensor([0, 3, K])  # the third object is "no object"
    # a target the mask head can represent exactly: the sign of a fixed embedding dotted with the features
    masks = (torch.einsum("qc,btchw->bqthw", torch.randn(3, 16), feats) > 0).float()

    def loss_fn():
        out = refiner(inst, frame, feats)
        total = 0.0
        for o in [out, *out["aux_outputs"]]:
            total = total + F.cross_entropy(o["pred_logits"][0], labels)
            total = total + F.binary_cross_entropy_with_logits(o["pred_masks"], masks)
        return total

    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    start = time.perf_counter()
    first = loss_fn().item()
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    last = loss_fn().item()
    assert time.perf_counter() - start < 20
    assert last < 0.05 * first, (first, last)
    out = refiner(inst, frame, feats)
    assert out["pred_logits"][0].argmax(-1).tolist() == labels.tolist()
    assert ((out["pred_masks"] > 0).float() == masks).float().mean() > 0.98


def test_refined_scores_hand_computed():
    ln2, ln3 = math.log(2), math.log(3)
    refiner = torch.tensor([[ln2, 0.0, 0.0], [0.0, 0.0, ln2]])  # softmax [.5 .25 .25], [.25 .25 .5]
    online = torch.tensor([[0.0, 0.0, 0.0], [0.0, ln3, 0.0]])  # softmax [1/3 1/3 1/3], [.2 .6 .2]
    expected = torch.tensor([[0.5, 1 / 3], [0.25, 0.6]])
    torch.testing.assert_close(refined_scores(refiner, online), expected)
    with pytest.raises(ValueError):
        refined_scores(refiner, online[:1])
