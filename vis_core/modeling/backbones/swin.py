"""Swin Transformer backbone (Liu et al. 2021) as Mask2Former uses it (``D2SwinTransformer``).

Parameter and buffer names follow the official implementation (``patch_embed.proj``,
``layers.0.blocks.1.attn.qkv``, ``layers.0.downsample.reduction``, ``norm0``..``norm3``), so the Swin ImageNet
checkpoints and Mask2Former's ``model_final_*.pkl`` load without renaming (after the ``backbone.`` prefix is
stripped).

Inputs of any size work: the patch embedding pads to a multiple of the patch size, every block pads its map to
a multiple of the window, and patch merging pads odd sizes. Output: ``dict(res2=(N, C, H/4, W/4),
res3=(N, 2C, H/8, W/8), res4=(N, 4C, ..), res5=(N, 8C, H/32, W/32))`` (sizes rounded up), each normalised by
its ``norm{i}``.

Variants (ImageNet checkpoints Mask2Former starts from): ``swin_t`` (C=96, depths 2-2-6-2, window 7),
``swin_s`` (96, 2-2-18-2, 7), ``swin_b`` (128, 2-2-18-2, 12, 384 pretraining), ``swin_l`` (192, 2-2-18-2,
heads 6-12-24-48, window 12, 384 pretraining). Stochastic depth 0.3 as in the Mask2Former Swin configs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwinTransformer", "SWIN_SPECS", "build_swin", "window_partition", "window_reverse"]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` with H, W multiples of the window -> ``(B * nW, window_size, window_size, C)``."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws, ws, C)`` -> ``(B, H, W, C)``."""
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on ``(..., C)``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias.

    Args:
        dim: channels C. window_size: side of the square window. num_heads: heads.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.attn_drop = attn_drop
        # one bias per head for each of the (2w-1)^2 possible (dy, dx) offsets
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        )
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        # persistent, as in the official module, so official checkpoints load without unexpected keys
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window_size - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(B * nW, N, C)`` with N = window_size ** 2.
            mask: ``(nW, N, N)`` additive mask (0 or -100) of the shifted windows, or None.
        Returns:
            ``(B * nW, N, C)``.
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).to(q.dtype)  # (heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = bias[None, None] + mask[None, :, None].to(q.dtype)  # (1, nW, heads, N, N)
            bias = bias.expand(bw // num_windows, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        else:
            bias = bias.unsqueeze(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual, on ``(B, H*W, C)`` tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} / {window_size}")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"token count {length} does not match the map size {h}x{w}")
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, ws).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=shift_mask if self.shift_size > 0 else None)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat + linear: ``(B, H*W, C)`` -> ``(B, ceil(H/2)*ceil(W/2), 2C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # the official order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular / shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        downsample: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else window_size // 2,
                mlp_ratio,
                qkv_bias,
                drop,
                attn_drop,
                drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """``(nW, ws*ws, ws*ws)`` additive mask: -100 between tokens the cyclic shift brought together."""
        ws, shift = self.window_size, self.shift_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        region = torch.zeros((1, hp, wp, 1), device=device)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                region[:, hs, wsl, :] = cnt
                cnt += 1
        ids = window_partition(region, ws).reshape(-1, ws * ws)
        diff = ids[:, None, :] - ids[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Returns (stage output ``(B, h*w, C)``, input of the next stage, its height, its width)."""
        mask = self.shift_mask(h, w, x.device) if len(self.blocks) > 1 else None
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection ``(N, 3, H, W)`` -> ``(N, C, ceil(H/p), ceil(W/p))`` (+ LayerNorm)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
        x = self.proj(x)
        if self.norm is not None:
            h, w = x.shape[-2:]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(-1, x.shape[1], h, w)
        return x


class SwinTransformer(nn.Module):
    """Hierarchical Swin backbone returning res2..res5.

    Args:
        embed_dim: channels C of stage 1 (C, 2C, 4C, 8C for res2..res5).
        depths, num_heads: per stage. window_size: attention window side.
        mlp_ratio, qkv_bias, drop_rate, attn_drop_rate: as the official.
        drop_path_rate: stochastic-depth rate, linearly increased over all blocks.
        ape: absolute position embedding (unused by Mask2Former), sized for ``pretrain_img_size``.
        patch_norm: LayerNorm after the patch embedding.
        freeze_at: 0 trains everything (the Mask2Former default); 1 freezes the patch embedding (and the
            absolute position embedding); k >= 2 also stages res2..res{k}. Frozen parts stay in eval mode.
        out_features: which of res2..res5 to return.
    """

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        freeze_at: int = 0,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages; got depths={depths}, num_heads={num_heads}")
        unknown = set(out_features) - {"res2", "res3", "res4", "res5"}
        if unknown:
            raise ValueError(f"unknown out_features {sorted(unknown)}; Swin provides res2..res5")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        self.num_layers = len(depths)
        self.out_features = tuple(out_features)
        self.freeze_at = freeze_at
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth grows linearly over all blocks (plain floats: also builds on the meta device)
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            start = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    self.num_features[i],
                    depths[i],
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    dpr[start : start + depths[i]],
                    downsample=i < self.num_layers - 1,
                )
            )
        names = ("res2", "res3", "res4", "res5")
        self.out_channels = {n: self.num_features[i] for i, n in enumerate(names) if n in self.out_features}
        self.out_strides = {n: 4 * 2**i for i, n in enumerate(names) if n in self.out_features}
        for i, n in enumerate(names):
            if n in self.out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.size_divisibility = 32
        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # the init the official ``init_weights`` describes (truncated normal linears, unit LayerNorms)
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if self.freeze_at >= 1:
            modules.append(self.patch_embed)
        if self.freeze_at >= 2:
            modules.extend(self.layers[i] for i in range(min(self.freeze_at - 1, self.num_layers)))
        return modules

    def _freeze_stages(self) -> None:
        if self.freeze_at >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad_(False)
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> SwinTransformer:
        """Switch mode but keep frozen stages in eval (no stochastic depth / dropout there)."""
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 3, H, W)`` normalised image -> dict of ``(N, out_channels[k], ceil(H/s), ceil(W/s))``."""
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs = {}
        for i, layer in enumerate(self.layers):
            name = f"res{i + 2}"
            out, x, next_h, next_w = layer(x, h, w)
            if name in self.out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            if len(outputs) == len(self.out_features):
                break
            h, w = next_h, next_w
        return outputs


# name -> constructor arguments of the ImageNet checkpoints Mask2Former starts from
SWIN_SPECS: dict[str, dict] = {
    "swin_t": dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, pretrain_img_size=224
    ),
    "swin_s": dict(
        embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, pretrain_img_size=224
    ),
    "swin_b": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, pretrain_img_size=384
    ),
    "swin_l": dict(
        embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, pretrain_img_size=384
    ),
}


def build_swin(
    name: str = "swin_l",
    freeze_at: int = 0,
    drop_path_rate: float = 0.3,
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
    **overrides,
) -> SwinTransformer:
    """Swin variant by name (see ``SWIN_SPECS``); ``overrides`` replace any constructor argument."""
    if name not in SWIN_SPECS:
        raise KeyError(f"unknown Swin variant {name!r}; known: {sorted(SWIN_SPECS)}")
    kwargs = dict(
        SWIN_SPECS[name], freeze_at=freeze_at, drop_path_rate=drop_path_rate, out_features=tuple(out_features)
    )
    kwargs.update(overrides)
    return SwinTransformer(**kwargs)
