"""Backbones: strides/channels of each variant, frozen BN, Swin windows, checkpoint loading and its report."""

from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from vis_core.modeling.backbones import BackboneConfig, build_backbone, load_backbone_weights, read_checkpoint
from vis_core.modeling.backbones import build as build_module
from vis_core.modeling.backbones.swin import BasicLayer, window_partition, window_reverse
from vis_core.modeling.frozen_bn import FrozenBatchNorm2d, convert_frozen_batchnorm


@pytest.fixture(autouse=True)
def one_thread():
    # small tensors on a shared 2-core machine: OpenMP start-up and contention dominate with 2 threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EXPECTED_CHANNELS = {
    "resnet_tiny": (16, 32, 64, 128),
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "swin_t": (96, 192, 384, 768),
    "swin_s": (96, 192, 384, 768),
    "swin_b": (128, 256, 512, 1024),
    "swin_l": (192, 384, 768, 1536),
}
NAMES = ("res2", "res3", "res4", "res5")


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_strides_and_channels(name):
    # the deep Swin variants keep their widths, heads and window but get 2 blocks per stage to stay fast
    overrides = {"depths": (2, 2, 2, 2)} if name in ("swin_s", "swin_b", "swin_l") else {}
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(name=name, overrides=overrides)).eval()
    assert model.out_channels == dict(zip(NAMES, EXPECTED_CHANNELS[name], strict=True))
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    # a size that is not a multiple of 32: every level rounds up
    h, w = 70, 100
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert list(out) == list(NAMES)
    for key, feat in out.items():
        s = model.out_strides[key]
        assert feat.shape == (1, model.out_channels[key], math.ceil(h / s), math.ceil(w / s)), key
        assert torch.isfinite(feat).all()


def test_full_depth_swin_variants_on_meta_device():
    # full depths (2-2-18-2 for S/B/L) exist with the documented widths; the meta device allocates nothing
    with torch.device("meta"):
        model = build_backbone("swin_l")
    assert [len(layer.blocks) for layer in model.layers] == [2, 2, 18, 2]
    assert model.layers[2].blocks[0].attn.num_heads == 24 and model.layers[3].blocks[0].attn.num_heads == 48
    assert model.layers[0].window_size == 12
    # Swin-L is "197M" in the paper with its 1.5M-parameter 1000-class head; the backbone alone is ~195M
    assert 194e6 < sum(p.numel() for p in model.parameters()) < 196.5e6


def test_out_features_subset():
    model = build_backbone(BackboneConfig(name="resnet_tiny", out_features=("res3", "res5")))
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res3", "res5"] and set(model.out_channels) == {"res3", "res5"}


def test_frozen_batchnorm_matches_batchnorm_eval():
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 3)
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(2, 5, 4, 4)
    expected = (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(frozen(x), expected)
    torch.testing.assert_close(frozen(x), bn(x))
    # a fresh FrozenBatchNorm2d is the identity (detectron2 initialises running_var to 1 - eps)
    torch.testing.assert_close(FrozenBatchNorm2d(5)(x), x)


def test_frozen_stages_really_frozen():
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(name="resnet_tiny", norm="BN", freeze_at=2)).train()
    frozen_parts = [model.stem, model.res2]
    for part in frozen_parts:
        assert all(not p.requires_grad for p in part.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in part.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(torch.randn(2, 3, 64, 64) * 3 + 1)
    sum(o.mean() for o in out.values()).backward()
    after = model.state_dict()
    for key in before:
        if key.startswith(("stem.", "res2.")):
            assert torch.equal(before[key], after[key]), f"frozen {key} changed in train mode"
    # control: the trainable BatchNorm of res3 did update its running statistics in train mode
    assert not torch.equal(before["res3.0.conv1.norm.running_mean"], after["res3.0.conv1.norm.running_mean"])
    assert all(p.grad is None for part in frozen_parts for p in part.parameters())
    assert all(p.grad is not None for p in model.res3.parameters())


def test_default_frozen_bn_has_no_trainable_norm():
    model = build_backbone("resnet18").train()  # detectron2 default norm: FrozenBN, freeze_at 0
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 20  # stem + 8 blocks x 2 convs + 3 shortcuts
    assert all(p.requires_grad for p in model.parameters())  # freeze_at=0: every conv trains
    assert not any(name.endswith(("norm.weight", "norm.bias")) for name, _ in model.named_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items() if "norm" in k}
    model(torch.randn(2, 3, 64, 64)).get("res5").mean().backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_swin_freeze_keeps_frozen_stages_in_eval():
    model = build_backbone(BackboneConfig(name="swin_t", freeze_at=2, overrides={"depths": (2, 2, 2, 2)}))
    model.train()
    assert not model.patch_embed.training and not model.layers[0].training and model.layers[1].training
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    assert all(not p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())


def test_swin_window_partition_round_trip_and_shift_mask():
    x = torch.randn(2, 14, 21, 3)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 2 * 3, 7, 7, 3)
    torch.testing.assert_close(windows[1], x[0, 0:7, 7:14])  # second window of the first image
    torch.testing.assert_close(window_reverse(windows, 7, 14, 21), x)
    # hand-checked shift mask on a map of exactly one 4x4 window shifted by 2: the cyclic roll brings the
    # last two rows/columns next to the first two, and those groups must not attend to each other
    layer = BasicLayer(8, 2, 2, window_size=4, mlp_ratio=2.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                       drop_path=[0.0, 0.0], downsample=False)
    mask = layer.shift_mask(4, 4, torch.device("cpu"))
    assert mask.shape == (1, 16, 16)
    region = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).flatten()
    expected = torch.where(region[:, None] == region[None, :], 0.0, -100.0)
    torch.testing.assert_close(mask[0], expected)


def _random_bn_stats(model: nn.Module) -> None:
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)


def test_detectron2_pickle_round_trip_with_report(tmp_path):
    torch.manual_seed(0)
    src = build_backbone(BackboneConfig(name="resnet_tiny", norm="BN"))
    _random_bn_stats(src)
    state = {f"backbone.{k}": v.numpy().copy() for k, v in src.state_dict().items()}
    # a whole-model detectron2 checkpoint: other heads, an extra backbone tensor, one tensor missing,
    # one with the wrong shape; the model-zoo pickle also stores metadata next to "model"
    state["sem_seg_head.predictor.class_embed.weight"] = np.zeros((3, 4), np.float32)
    state["backbone.fc.weight"] = np.zeros((10, 128), np.float32)
    del state["backbone.res4.0.conv2.weight"]
    state["backbone.res5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "unit test", "matching_heuristics": True}, f)

    torch.manual_seed(1)
    dst = build_backbone(BackboneConfig(name="resnet_tiny", norm="BN"))
    report = load_backbone_weights(dst, path)
    assert report.prefix == "backbone."
    assert report.unexpected == ["fc.weight"]
    assert report.missing == ["res4.0.conv2.weight"]
    assert [k for k, _, _ in report.mismatched] == ["res5.0.conv1.weight"]
    assert report.mismatched[0][1:] == ((1, 1, 1, 1), (128, 64, 3, 3))
    assert "sem_seg_head.predictor.class_embed.weight" in report.ignored
    text = str(report)
    assert "fc.weight" in text and "res4.0.conv2.weight" in text and "res5.0.conv1.weight" in text
    skipped = {"res4.0.conv2.weight", "res5.0.conv1.weight"}
    for key, value in src.state_dict().items():
        if key in skipped:
            assert not torch.equal(value, dst.state_dict()[key]), key
        else:
            assert torch.equal(value, dst.state_dict()[key]), key
    assert len(report.loaded) == len(src.state_dict()) - 2


def _to_torchvision_names(state: dict) -> dict:
    """detectron2 ResNet names -> torchvision names (the inverse of ResNet.remap_checkpoint_keys)."""
    out = {}
    for key, value in state.items():
        new = key.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
        if m := re.match(r"res(\d)\.(\d+)\.conv(\d)\.norm\.(.+)", key):
            new = f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"
        elif m := re.match(r"res(\d)\.(\d+)\.conv(\d)\.(.+)", key):
            new = f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.{m[4]}"
        elif m := re.match(r"res(\d)\.(\d+)\.shortcut\.norm\.(.+)", key):
            new = f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"
        elif m := re.match(r"res(\d)\.(\d+)\.shortcut\.(.+)", key):
            new = f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.{m[3]}"
        out[new] = value
    return out


def test_torchvision_state_dict_is_remapped(tmp_path):
    torch.manual_seed(0)
    src = build_backbone(BackboneConfig(name="resnet18", norm="BN"))
    _random_bn_stats(src)
    tv = _to_torchvision_names(src.state_dict())
    assert "layer2.0.downsample.1.running_var" in tv and "bn1.weight" in tv
    tv["fc.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(tv, path)
    dst = build_backbone(BackboneConfig(name="resnet18", norm="FrozenBN"))  # frozen copy of a BN checkpoint
    report = load_backbone_weights(dst, path)
    assert report.missing == [] and report.mismatched == [] and report.unexpected == ["fc.weight"]
    assert all(k.endswith("num_batches_tracked") for k in report.ignored) and report.ignored
    src.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for key, feat in src(x).items():
            torch.testing.assert_close(dst(x)[key], feat)


def test_swin_ddp_checkpoint_round_trip(tmp_path):
    small = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 7}
    torch.manual_seed(0)
    src = build_backbone(BackboneConfig(name="swin_t", overrides=small))
    path = tmp_path / "swin.pth"
    state = {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
    torch.save({"model": state, "iteration": 7}, path)
    torch.manual_seed(1)
    dst = build_backbone(BackboneConfig(name="swin_t", weights=str(path), overrides=small))
    report = dst.load_report
    assert report.prefix == "module.backbone."
    assert not (report.missing or report.unexpected or report.mismatched)
    for key, value in src.state_dict().items():
        assert torch.equal(value, dst.state_dict()[key]), key


def test_read_checkpoint_and_build_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        read_checkpoint(tmp_path / "nope.pkl")
    empty = tmp_path / "empty.pkl"
    with open(empty, "wb") as f:
        pickle.dump({"model": {"__author__": "x"}}, f)
    with pytest.raises(ValueError, match="empty.pkl.*no tensors"):
        read_checkpoint(empty)
    with pytest.raises(KeyError, match="resnet_tiny"):
        build_backbone("resnet_huge")
    with pytest.raises(ValueError, match="depth"):
        build_backbone({"name": "resnet18", "depth": 18})
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone(BackboneConfig(name="resnet18", freeze_at=7))


def test_timm_backbone_is_optional():
    if build_module.timm is None:
        with pytest.raises(ImportError, match="timm"):
            build_backbone("timm:resnet18")
    else:
        model = build_backbone("timm:resnet18")
        out = model(torch.randn(1, 3, 64, 64))
        assert model.out_channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
        assert out["res5"].shape == (1, 512, 2, 2)
