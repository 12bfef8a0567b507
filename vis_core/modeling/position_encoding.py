"""Sine positional encoding of a 2-D feature map (DETR; the normalised variant used by Mask2Former).

Channel layout of the output: the first ``num_pos_feats`` channels encode y, the next ``num_pos_feats``
encode x; within each half, even channels are ``sin`` and odd channels ``cos`` of the coordinate divided by
``temperature ** (2 * (i // 2) / num_pos_feats)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Args:
    num_pos_feats: channels per axis (output has ``2 * num_pos_feats`` channels; Mask2Former uses C / 2).
    temperature: wavelength base (10000).
    normalize: scale coordinates to ``(0, scale]`` over the valid extent (Mask2Former: True).
    scale: maximum normalised coordinate, ``2 * pi`` by default; only valid with ``normalize``.
    """

    def __init__(
        self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = False, scale=None
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(N, C, H, W)``; only its batch size, spatial size and device are used.
            mask: optional ``(N, H, W)`` bool, True at padded pixels (they do not advance the coordinate).
        Returns:
            ``(N, 2 * num_pos_feats, H, W)`` float32.
        """
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        # 1-based pixel index along each axis, so the last valid pixel sits at exactly `scale`
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale:.4f}"
        )
