"""Plain DINOv2-style Vision Transformer (the frozen trunk of DVIS's ViT-Adapter backbone).

Parameter names equal DINOv2's ``DinoVisionTransformer`` (facebookresearch/dinov2 ``vision_transformer.py``,
copied into DVIS as ``mask2former/modeling/backbones_vitAdapter/backbones.py``) so an official checkpoint
loads with ``strict=True``:

    cls_token (1, 1, D), pos_embed (1, 1 + G*G, D), mask_token (1, D),
    patch_embed.proj.{weight (D, 3, p, p), bias},
    blocks.{i}.norm1, blocks.{i}.attn.qkv, blocks.{i}.attn.proj, blocks.{i}.ls1.gamma,
    blocks.{i}.norm2, blocks.{i}.mlp.fc1, blocks.{i}.mlp.fc2, blocks.{i}.ls2.gamma, norm.

DVIS builds ViT-L with ``img_size=592, patch_size=16, init_values=1e-5, block_chunks=0`` and loads the
DINOv2 ViT-L/14 weights after bilinearly resizing the 14x14 patch kernel to 16x16 (``align_corners=True``).
592 / 16 = 37 = 518 / 14, so the 37x37 position grid of the checkpoint fits without resizing;
:func:`load_dinov2_weights` also resizes ``pos_embed`` (bicubic) when the grids differ (e.g. ``vit_tiny``).

Deviations from DINOv2:
* attention is ``F.scaled_dot_product_attention`` (same math as xformers' MemEffAttention, no dropout);
* the position grid is interpolated with ``size=`` instead of ``scale_factor=(g+0.1)/G`` (same output size;
  values differ slightly from the ``scale_factor`` path, which older DINOv2 code used);
* no stochastic depth (the trunk is frozen: DVIS uses drop_path_rate 0), no SwiGLU / register tokens.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.io.weights import load_torch_file

__all__ = ["VIT_SPECS", "VisionTransformer", "build_vit", "dinov2_state_to_model", "load_dinov2_weights"]

# DVIS ``get_models``: img_size 592, patch 16, LayerScale 1e-5; the tiny variant is for the smoke profile.
VIT_SPECS: dict[str, dict] = {
    "vit_large": dict(img_size=592, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vit_base": dict(img_size=592, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit_tiny": dict(img_size=128, patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0),
}


class PatchEmbed(nn.Module):
    """``(B, 3, H, W)`` -> tokens ``(B, H/p * W/p, D)`` via a stride-p convolution (name ``proj`` as DINOv2)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)  # (B, D, H/p, W/p)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), h, w


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, D)`` with a fused ``qkv`` projection (DINOv2 names)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, D/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    """Per-channel residual scaling ``x * gamma`` (gamma initialised to ``init_values``)."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on ``(..., D)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches; ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2 ViT trunk.

    Args:
        img_size: pretraining size; sets the ``pos_embed`` grid ``G = img_size // patch_size``.
        patch_size, embed_dim D, depth, num_heads, mlp_ratio: architecture.
        init_values: LayerScale initial value (1e-5 as DVIS).
    """

    def __init__(
        self,
        img_size: int = 592,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 1e-5,
    ):
        super().__init__()
        self.patch_size, self.embed_dim, self.num_heads = patch_size, embed_dim, num_heads
        self.grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # unused by the adapter (no masked tokens at fine-tuning) but part of the checkpoint
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2 init (trunc-normal 0.02 linears / pos_embed, cls 1e-6); replaced by pretrained weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """``pos_embed`` resized to an ``h x w`` token grid: ``(1, 1 + h*w, D)`` (bicubic, cls entry kept)."""
        if h == self.grid and w == self.grid:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, (h, w))

    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Image ``(B, 3, H, W)`` -> tokens ``(B, 1 + h*w, D)`` with cls first and positions added; h, w."""
        tokens, h, w = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.interpolate_pos_encoding(h, w).to(tokens.dtype), h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> normalised tokens ``(B, 1 + H/p * W/p, D)`` (cls first)."""
        tokens, _, _ = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)


def resize_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + G*G, D)`` -> ``(1, 1 + h*w, D)``: bicubic resize of the square patch grid, cls entry kept."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    g = int(round(patch_pos.shape[1] ** 0.5))
    if g * g != patch_pos.shape[1]:
        raise ValueError(f"pos_embed has {patch_pos.shape[1]} patch positions, not a square grid")
    grid = patch_pos.float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def build_vit(name: str = "vit_large", **overrides) -> VisionTransformer:
    """ViT variant by name (see ``VIT_SPECS``); ``overrides`` replace any constructor argument."""
    if name not in VIT_SPECS:
        raise KeyError(f"unknown ViT variant {name!r}; known: {sorted(VIT_SPECS)}")
    return VisionTransformer(**{**VIT_SPECS[name], **overrides})


def dinov2_state_to_model(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Adapt a DINOv2 state dict to ``model``: patch kernel resized to the model's patch size (bilinear,
    ``align_corners=True`` as DVIS's ``load_pretrained_weights``) and ``pos_embed`` to its grid (bicubic).

    Other keys are passed through unchanged, so a key-name mismatch still shows up in a strict load.
    """
    state = dict(state)
    kernel = state.get("patch_embed.proj.weight")
    p = model.patch_size
    if kernel is not None and tuple(kernel.shape[-2:]) != (p, p):
        resized = F.interpolate(kernel.float(), size=(p, p), mode="bilinear", align_corners=True)
        state["patch_embed.proj.weight"] = resized.to(kernel.dtype)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape[1] != model.pos_embed.shape[1]:
        state["pos_embed"] = resize_pos_embed(pos, (model.grid, model.grid))
    return state


def load_dinov2_weights(model: VisionTransformer, path: str | os.PathLike) -> VisionTransformer:
    """Load a DINOv2 checkpoint file into ``model`` strictly (after :func:`dinov2_state_to_model`).

    Accepts a bare state dict or one under ``model`` / ``state_dict`` / ``teacher`` with an optional
    ``backbone.`` / ``module.`` prefix. Raises ``ValueError`` naming the file and the missing / unexpected /
    mis-shaped keys otherwise.
    """
    obj = load_torch_file(path)  # data only: never torch.load with arbitrary pickles
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{os.fspath(path)}: expected a state dict, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "backbone."):
            key = key[len(prefix) :] if key.startswith(prefix) else key
        state[key] = value
    state = dinov2_state_to_model(state, model)
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{os.fspath(path)}: not a DINOv2 checkpoint for this ViT; missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {mismatched}"
        )
    model.load_state_dict(state, strict=True)
    return model
