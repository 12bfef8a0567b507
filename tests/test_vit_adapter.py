"""DINOv2 ViT trunk + injector-free ViT-Adapter (DVIS backbone): sizes, checkpoint loading, freezing."""

from __future__ import annotations

import pytest
import torch

from vis_core.modeling.backbones import BACKBONES, build_backbone
from vis_core.modeling.backbones.vit import build_vit, load_dinov2_weights
from vis_core.modeling.backbones.vit_adapter import build_vit_adapter


def _vit_large_count(patch: int, grid: int, dim: int = 1024, depth: int = 24, mlp: int = 4096) -> int:
    """Parameters of DINOv2 ViT-L counted by hand: tokens, patch conv, blocks, final norm."""
    tokens = dim + (1 + grid * grid) * dim + dim  # cls_token, pos_embed, mask_token
    patch_embed = 3 * patch * patch * dim + dim
    block = (
        2 * dim  # norm1
        + dim * 3 * dim
        + 3 * dim  # attn.qkv
        + dim * dim
        + dim  # attn.proj
        + dim  # ls1.gamma
        + 2 * dim  # norm2
        + dim * mlp
        + mlp  # mlp.fc1
        + mlp * dim
        + dim  # mlp.fc2
        + dim  # ls2.gamma
    )
    return tokens + patch_embed + depth * block + 2 * dim


def _dinov2_state(model: torch.nn.Module, patch: int = 14) -> dict[str, torch.Tensor]:
    """A state dict with DINOv2's names and official shapes (14x14 patch kernel), random values."""
    state = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    dim = state["cls_token"].shape[-1]
    state["patch_embed.proj.weight"] = torch.randn(dim, 3, patch, patch)
    return state


def test_vit_large_official_parameter_count_on_meta():
    with torch.device("meta"):
        vit = build_vit("vit_large")
    count = sum(p.numel() for p in vit.parameters())
    # DVIS: img_size 592 / patch 16 -> 37x37 grid, the same grid as DINOv2 ViT-L/14 at 518
    assert count == _vit_large_count(patch=16, grid=37)
    # the published DINOv2 ViT-L/14 size (304.4M) differs only by the 14x14 vs 16x16 patch kernel
    assert _vit_large_count(patch=14, grid=37) == pytest.approx(304.4e6, rel=1e-3)
    assert count == pytest.approx(304.4e6, rel=0.01)
    assert len(vit.blocks) == 24 and vit.pos_embed.shape == (1, 1 + 37 * 37, 1024)
    assert vit.blocks[0].ls1.gamma.shape == (1024,)


def test_vit_large_adapter_builds_on_meta():
    with torch.device("meta"):
        model = build_vit_adapter("vit_adapter_large")
    assert model.out_channels == {k: 1024 for k in ("res2", "res3", "res4", "res5")}
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert model.interaction_indexes == [(0, 5), (6, 11), (12, 17), (18, 23)]
    assert [blk.extra_extractors is not None for blk in model.interactions] == [False, False, False, True]
    assert model.interactions[0].extractor.attn.value_dim == 512  # deform ratio 0.5
    assert all(not p.requires_grad for p in model.vit_module.parameters())


def test_dinov2_state_dict_loads_strictly_with_resized_kernel(tmp_path):
    vit = build_vit("vit_tiny")
    state = _dinov2_state(vit)
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    load_dinov2_weights(vit, path)
    kernel = vit.patch_embed.proj.weight
    assert kernel.shape == (64, 3, 16, 16)
    # bilinear with align_corners=True keeps the corner taps of the 14x14 kernel
    assert torch.allclose(kernel[..., 0, 0], state["patch_embed.proj.weight"][..., 0, 0])
    assert torch.allclose(kernel[..., -1, -1], state["patch_embed.proj.weight"][..., -1, -1])
    assert torch.equal(vit.blocks[2].attn.qkv.weight, state["blocks.2.attn.qkv.weight"])
    assert torch.equal(vit.pos_embed, state["pos_embed"])


def test_dinov2_pos_embed_resized_to_model_grid(tmp_path):
    vit = build_vit("vit_tiny")  # 8x8 grid
    state = _dinov2_state(vit)
    state["pos_embed"] = torch.randn(1, 1 + 37 * 37, 64)  # a 518/14 checkpoint grid
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    load_dinov2_weights(vit, path)
    assert vit.pos_embed.shape == (1, 1 + 8 * 8, 64)
    assert torch.equal(vit.pos_embed[:, 0], state["pos_embed"][:, 0])  # cls position kept


def test_dinov2_loader_names_file_and_missing_key(tmp_path):
    vit = build_vit("vit_tiny")
    state = _dinov2_state(vit)
    del state["blocks.1.ls2.gamma"]
    state["blocks.1.mlp.w12.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_dinov2_weights(vit, path)
    msg = str(err.value)
    assert "broken.pth" in msg and "blocks.1.ls2.gamma" in msg and "blocks.1.mlp.w12.weight" in msg


def test_raw_dinov2_file_as_backbone_weights(tmp_path):
    vit = build_vit("vit_tiny")
    state = _dinov2_state(vit)
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    model = build_backbone({"name": "vit_adapter_tiny", "weights": str(path)})
    report = model.load_report
    assert not report.unexpected and not report.mismatched
    assert not [k for k in report.missing if k.startswith("vit_module.")]
    assert torch.equal(model.vit_module.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_tiny_adapter_outputs_strides_and_channels(norm):
    assert {"vit_adapter_tiny", "vit_adapter_large"} <= set(BACKBONES)
    torch.manual_seed(0)
    model = build_backbone({"name": "vit_adapter_tiny", "norm": norm})
    out = model(torch.randn(2, 3, 96, 160))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        stride = model.out_strides[name]
        assert feat.shape == (2, model.out_channels[name], 96 // stride, 160 // stride)
        assert torch.isfinite(feat).all()


def test_tiny_adapter_rejects_sizes_not_multiple_of_32():
    model = build_backbone("vit_adapter_tiny")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 80, 160))


def test_vit_frozen_adapter_trains_and_vit_stays_in_eval():
    torch.manual_seed(0)
    model = build_backbone({"name": "vit_adapter_tiny", "norm": "GN"})
    model.train()
    assert model.training and model.spm.training
    assert not model.vit_module.training and not any(m.training for m in model.vit_module.modules())
    out = model(torch.randn(1, 3, 96, 160))
    sum(f.square().mean() for f in out.values()).backward()
    assert all(p.grad is None for p in model.vit_module.parameters())
    adapter = [(n, p) for n, p in model.named_parameters() if not n.startswith("vit_module.")]
    assert all(p.requires_grad for _, p in adapter)
    assert not [n for n, p in adapter if p.grad is None]
    # at the official init the sampling-offset / attention-weight projections are zero, so only the
    # query LayerNorm of each extractor gets an exactly zero gradient on the first step
    zero = [n for n, p in adapter if not p.grad.abs().sum() > 0]
    assert all(".query_norm." in n for n in zero), zero
    model.eval()
    model.train(True)
    assert not model.vit_module.training
