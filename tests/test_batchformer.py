"""BatchFormerV2: the block (two streams, identity at test, which samples attend to each other), its config
(insertion depths, placement) and the hooks through a whole Mask2Former (pixel-decoder placement)."""

import pytest
import torch

from vis_core.modeling.batchformer import (
    BatchFormerConfig,
    BatchFormerHook,
    BatchFormerV2,
    batchformer_hooks,
    build_batchformer,
    insertion_depths,
    tile_batch,
)
from vis_core.modeling.mask2former import Mask2FormerConfig, build_mask2former


def test_eval_mode_is_exact_identity():
    torch.manual_seed(0)
    bf = BatchFormerV2(16).eval()
    x = torch.randn(3, 5, 16)
    assert bf(x) is x
    assert bf(x, tiled=True) is x


def test_training_doubles_batch_first_half_is_input():
    torch.manual_seed(0)
    bf = BatchFormerV2(16).train()
    x = torch.randn(3, 4, 16)
    out = bf(x)
    assert out.shape == (6, 4, 16)
    assert torch.equal(out[:3], x)
    assert not torch.allclose(out[3:], x)


def test_gradient_flows_across_samples():
    torch.manual_seed(0)
    bf = BatchFormerV2(16).train()
    x = torch.randn(2, 6, 16, requires_grad=True)
    bf(x)[2 + 0].pow(2).sum().backward()  # BF stream of sample 0
    assert x.grad[1].abs().sum() > 0
    # without BatchFormer the other sample would get nothing: the plain stream is per-sample
    x.grad = None
    bf(x)[0].pow(2).sum().backward()
    assert x.grad[1].abs().sum() == 0


def test_mixing_is_across_batch_not_positions():
    """Each position's output depends only on the same position of the other samples."""
    torch.manual_seed(0)
    bf = BatchFormerV2(8, dropout=0.0).train()
    x = torch.randn(3, 5, 8)
    y = x.clone()
    y[:, 4] += 1.0  # change position 4 only, in every sample
    torch.testing.assert_close(bf.mix(x)[:, :4], bf.mix(y)[:, :4])
    z = x.clone()
    z[2] += 1.0  # change sample 2 only
    assert not torch.allclose(bf.mix(x)[0], bf.mix(z)[0])


def test_frames_of_one_clip_never_attend_to_each_other():
    """``frames_per_clip = 2`` (IDOL's key/reference pairs, clip-major): frame t mixes with frame t of the other
    clips only, exactly as the official code's separate forward passes of the key and the reference frames."""
    torch.manual_seed(0)
    pairs = BatchFormerV2(8, dropout=0.0, frames_per_clip=2).train()
    every = BatchFormerV2(8, dropout=0.0).train()
    every.load_state_dict(pairs.state_dict())
    x = torch.randn(6, 5, 8)  # 3 clips x (key, ref)
    mixed = pairs.mix(x)
    torch.testing.assert_close(mixed[0::2], every.mix(x[0::2]))  # the key frames' pass
    torch.testing.assert_close(mixed[1::2], every.mix(x[1::2]))  # the reference frames' pass
    y = x.clone()
    y[1] += 1.0  # the reference frame of clip 0
    changed = pairs.mix(y)
    torch.testing.assert_close(changed[0::2], mixed[0::2])  # no key frame sees it, its own key frame neither
    assert not torch.allclose(changed[3], mixed[3])  # the other clips' reference frames do
    assert not torch.allclose(every.mix(y)[0], every.mix(x)[0])  # frames_per_clip=1 mixes everything
    with pytest.raises(ValueError, match="clips of 2 frames"):
        pairs.mix(torch.randn(3, 5, 8))


def test_tiled_input_keeps_plain_stream_and_remixes_bf_stream():
    torch.manual_seed(0)
    bf = BatchFormerV2(8, dropout=0.0).train()
    x = torch.randn(4, 5, 8)  # (2B, L, C): already two streams
    out = bf(x, tiled=True)
    assert out.shape == x.shape
    assert torch.equal(out[:2], x[:2])
    torch.testing.assert_close(out[2:], bf.mix(x[2:]))
    with pytest.raises(ValueError, match="even batch"):
        bf(torch.randn(3, 5, 8), tiled=True)


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
    cfg = BatchFormerConfig()
    assert cfg.insert_idx == [0] and cfg.placement == "after"  # the official README: after encoder layer 0
    assert build_batchformer(cfg, 32) is None
    shared = build_batchformer(BatchFormerConfig(enabled=True, insert_idx=[0, 2]), 32)
    assert len(shared) == 2 and shared[0] is shared[1]
    sep = build_batchformer(BatchFormerConfig(enabled=True, insert_idx=[0, 2], shared=False), 32, frames_per_clip=2)
    assert sep[0] is not sep[1] and sep[1].frames_per_clip == 2
    with pytest.raises(ValueError, match="placement"):
        BatchFormerConfig(placement="between")
    with pytest.raises(ValueError, match="frames_per_clip"):
        BatchFormerV2(8, frames_per_clip=0)


def test_insertion_depths_after_layer_i_is_the_official_placement():
    """Depth = encoder layers run before the block: after layer i (official) is i + 1, -1 is after the last
    layer; the report's "same input as the Transformer block" (placement before) is i."""
    after = BatchFormerConfig(enabled=True, insert_idx=[0, -1])
    assert insertion_depths(after, 6) == [1, 6]
    before = BatchFormerConfig(enabled=True, insert_idx=[0, 3], placement="before")
    assert insertion_depths(before, 6) == [0, 3]
    with pytest.raises(ValueError, match="not a layer"):
        insertion_depths(BatchFormerConfig(enabled=True, insert_idx=[6]), 6)
    with pytest.raises(ValueError, match="repeated layers"):
        insertion_depths(BatchFormerConfig(enabled=True, insert_idx=[5, -1]), 6)


def test_hooks_first_point_starts_the_streams_later_ones_remix_the_second():
    assert batchformer_hooks(BatchFormerConfig(), 8, num_layers=3) is None
    cfg = BatchFormerConfig(enabled=True, insert_idx=[2, 0], shared=False, dropout=0.0)
    torch.manual_seed(0)
    hooks = batchformer_hooks(cfg, 8, num_layers=3)
    assert list(hooks) == [3, 1] and all(isinstance(h, BatchFormerHook) for h in hooks.values())
    assert hooks[1].first and not hooks[3].first  # the first point in layer order, whatever the config order
    for hook in hooks.values():
        hook.train()
    x = torch.randn(3, 5, 8)
    doubled = hooks[1](x, pos=None, padding_mask=None)  # the encoder's keyword context is ignored
    assert doubled.shape == (6, 5, 8) and torch.equal(doubled[:3], x)
    later = hooks[3](doubled)
    assert torch.equal(later[:3], x)
    torch.testing.assert_close(later[3:], hooks[3].block.mix(doubled[3:]))


def test_two_streams_through_the_mask2former_pixel_decoder():
    """BatchFormer after the pixel decoder's encoder layer: stream one is the plain model, stream two gets
    mixed dense tokens, so even the decoder's first prediction (the shared learned queries against the
    stream's own mask features) differs; at test the hooks are the identity."""
    torch.manual_seed(0)
    cfg = Mask2FormerConfig.tiny(num_classes=4)
    model = build_mask2former(cfg)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    model.eval()
    with torch.no_grad():
        plain = model(images)
    bf = BatchFormerConfig(enabled=True, insert_idx=[-1], dropout=0.0)
    model.pixel_decoder.transformer.set_hooks(batchformer_hooks(bf, cfg.conv_dim, cfg.enc_layers))
    model.eval()  # new modules start in train mode
    with torch.no_grad():
        assert torch.equal(model(images)["pred_logits"], plain["pred_logits"])  # eval: identity
        model.train()
        out = model(images)
    for key in ("pred_logits", "pred_masks", "mask_features", "pixel_features"):
        assert out[key].shape[0] == 4, key
        torch.testing.assert_close(out[key][:2], plain[key], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out["pred_logits"][2:], plain["pred_logits"], rtol=1e-3, atol=1e-3)
    first = out["aux_outputs"][0]["pred_masks"]
    assert not torch.allclose(first[2:], first[:2], rtol=1e-3, atol=1e-3)
