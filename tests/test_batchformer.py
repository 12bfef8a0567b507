import pytest
import torch

from vis_core.modeling.batchformer import (
    BatchFormerConfig,
    BatchFormerHook,
    BatchFormerV2,
    batchformer_hooks,
    build_batchformer,
    tile_batch,
)
from vis_core.modeling.mask2former import Mask2FormerConfig, build_mask2former


@pytest.mark.parametrize("batch_dim", [0, 1])
def test_eval_mode_is_exact_identity(batch_dim):
    torch.manual_seed(0)
    bf = BatchFormerV2(16, batch_dim=batch_dim).eval()
    x = torch.randn(3, 5, 16)
    out = bf(x)
    assert out is x
    assert bf(x, tiled=True) is x


@pytest.mark.parametrize("batch_dim", [0, 1])
def test_training_doubles_batch_first_half_is_input(batch_dim):
    torch.manual_seed(0)
    bf = BatchFormerV2(16, batch_dim=batch_dim).train()
    x = torch.randn(3, 4, 16)
    out = bf(x)
    b = x.shape[batch_dim]
    assert out.shape[batch_dim] == 2 * b
    plain, mixed = out.split(b, dim=batch_dim)
    assert torch.equal(plain, x)
    assert not torch.allclose(mixed, x)


@pytest.mark.parametrize("batch_dim", [0, 1])
def test_gradient_flows_across_samples(batch_dim):
    torch.manual_seed(0)
    bf = BatchFormerV2(16, batch_dim=batch_dim).train()
    x = torch.randn(2, 6, 16, requires_grad=True)
    out = bf(x)
    b = x.shape[batch_dim]
    sample0_bf = out.select(batch_dim, b + 0)  # BF stream of sample 0
    sample0_bf.pow(2).sum().backward()
    grad_sample1 = x.grad.select(batch_dim, 1)
    assert grad_sample1.abs().sum() > 0
    # without BatchFormer the other sample would get nothing: the plain stream is per-sample
    x.grad = None
    bf(x).select(batch_dim, 0).pow(2).sum().backward()
    assert x.grad.select(batch_dim, 1).abs().sum() == 0


def test_layouts_agree():
    """(B, L, C) with batch_dim=0 and its transpose with batch_dim=1 compute the same thing."""
    torch.manual_seed(0)
    a = BatchFormerV2(8, batch_dim=0, dropout=0.0).train()
    b = BatchFormerV2(8, batch_dim=1, dropout=0.0).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(a(x).transpose(0, 1), b(x.transpose(0, 1)))


def test_mixing_is_across_batch_not_positions():
    """Each position's output depends only on the same position of the other samples."""
    torch.manual_seed(0)
    bf = BatchFormerV2(8, batch_dim=0, dropout=0.0).train()
    x = torch.randn(3, 5, 8)
    y = x.clone()
    y[:, 4] += 1.0  # change position 4 only, in every sample
    torch.testing.assert_close(bf.mix(x)[:, :4], bf.mix(y)[:, :4])
    z = x.clone()
    z[2] += 1.0  # change sample 2 only
    assert not torch.allclose(bf.mix(x)[0], bf.mix(z)[0])


def test_tiled_input_keeps_plain_stream_and_remixes_bf_stream():
    torch.manual_seed(0)
    bf = BatchFormerV2(8, batch_dim=1, dropout=0.0).train()
    x = torch.randn(5, 4, 8)  # (L, 2B, C): already two streams
    out = bf(x, tiled=True)
    assert out.shape == x.shape
    assert torch.equal(out[:, :2], x[:, :2])
    torch.testing.assert_close(out[:, 2:], bf.mix(x[:, 2:]))
    with pytest.raises(ValueError, match="even batch"):
        bf(torch.randn(5, 3, 8), tiled=True)


def test_tile_batch():
    t = torch.arange(6).reshape(2, 3)
    assert torch.equal(tile_batch(t), torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]))
    assert torch.equal(tile_batch(t, dim=1), torch.tensor([[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5]]))
    targets = [{"id": 0}, {"id": 1}]
    tiled = tile_batch(targets)
    assert [d["id"] for d in tiled] == [0, 1, 0, 1] and tiled[2] is targets[0]
    assert tile_batch((1, 2), n=3) == (1, 2, 1, 2, 1, 2)
    assert tile_batch(None) is None
    with pytest.raises(TypeError, match="tile_batch"):
        tile_batch({"a": 1})


def test_defaults_and_build():
    bf = BatchFormerV2(32)
    assert bf.layer.self_attn.num_heads == 4
    assert bf.layer.dropout.p == 0.5
    assert bf.layer.linear1.out_features == 32  # official code: FFN width = model width
    assert build_batchformer(BatchFormerConfig(), 32) is None
    shared = build_batchformer(BatchFormerConfig(enabled=True, insert_idx=[0, 2]), 32)
    assert len(shared) == 2 and shared[0] is shared[1]
    sep = build_batchformer(BatchFormerConfig(enabled=True, insert_idx=[0, 2], shared=False), 32, batch_dim=1)
    assert sep[0] is not sep[1] and sep[1].batch_dim == 1
    with pytest.raises(ValueError, match="batch_dim"):
        BatchFormerV2(8, batch_dim=2)


def test_hooks_first_point_starts_the_streams_later_ones_remix_the_second():
    assert batchformer_hooks(BatchFormerConfig(), 8) is None
    cfg = BatchFormerConfig(enabled=True, insert_idx=[2, 0], shared=False, dropout=0.0)
    torch.manual_seed(0)
    hooks = batchformer_hooks(cfg, 8)
    assert list(hooks) == [2, 0] and all(isinstance(h, BatchFormerHook) for h in hooks.values())
    assert hooks[0].first and not hooks[2].first  # the first point in layer order, whatever the config order
    for hook in hooks.values():
        hook.train()
    x = torch.randn(3, 5, 8)
    doubled = hooks[0](x, pos=None, padding_mask=None)  # the deformable encoder's keyword context is ignored
    assert doubled.shape == (6, 5, 8) and torch.equal(doubled[:3], x)
    later = hooks[2](doubled)
    assert torch.equal(later[:3], x)
    torch.testing.assert_close(later[3:], hooks[2].block.mix(doubled[3:]))
    with pytest.raises(ValueError, match="repeated layers"):
        batchformer_hooks(BatchFormerConfig(enabled=True, insert_idx=[1, 1]), 8)


def test_two_streams_through_the_mask2former_decoder():
    """BatchFormer before decoder layers 1 and 2 (shared block): stream one is the plain model, stream two is
    the BatchFormer one; at test the hooks are the identity."""
    torch.manual_seed(0)
    model = build_mask2former(Mask2FormerConfig.tiny(num_classes=4))
    hooks = batchformer_hooks(BatchFormerConfig(enabled=True, insert_idx=[1, 2], dropout=0.0), 32)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    model.eval()
    with torch.no_grad():
        plain = model(images)
    model.predictor.set_pre_layer_hooks(hooks)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images)["pred_logits"], plain["pred_logits"])  # eval: identity
        model.train()
        out = model(images)
    assert out["pred_logits"].shape[0] == 4
    torch.testing.assert_close(out["pred_logits"][:2], plain["pred_logits"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out["pred_logits"][2:], plain["pred_logits"], rtol=1e-3, atol=1e-3)
