"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

The official implementations ship a compiled CUDA op (``MultiScaleDeformableAttention``); its pure-PyTorch
fallback, built on ``F.grid_sample``, computes the same thing and is what we use everywhere: it runs on CPU and
GPU, needs no build step, and autograd gives its backward pass.

Shapes (N batch, Lq queries, L levels, P points, M heads, D = C / M channels per head):
    value:              (N, S, M, D) with S = sum_l H_l * W_l, levels flattened in order
    spatial_shapes:     (L, 2) long, (H_l, W_l)
    sampling_locations: (N, Lq, M, L, P, 2) in [0, 1], (x, y) normalised to each level's size
    attention_weights:  (N, Lq, M, L, P), softmax-normalised over (L, P)
    output:             (N, Lq, M * D)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear sampling of each level at the given locations, weighted sum over levels and points."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_levels = value.split(sizes, dim=1)
    # grid_sample wants coordinates in [-1, 1]; align_corners=False matches the CUDA op's pixel convention.
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, int(h), int(w))
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # (N*M, D, Lq, P)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_naive(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Loop-by-loop reference of :func:`ms_deform_attn_core` (explicit bilinear interpolation), for tests only.

    A sample at normalised (x, y) on a level of size (H, W) reads pixel coordinates (x*W - 0.5, y*H - 0.5);
    neighbours outside the map contribute zero (grid_sample's ``zeros`` padding, ``align_corners=False``).
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    out = value.new_zeros(n, lq, m, d)
    starts = [0]
    for h, w in spatial_shapes.tolist()[:-1]:
        starts.append(starts[-1] + int(h) * int(w))
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
                    for p in range(num_points):
                        x = sampling_locations[b, q, head, lvl, p, 0] * w - 0.5
                        y = sampling_locations[b, q, head, lvl, p, 1] * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = value.new_zeros(d)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                wgt = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                acc = acc + wgt * value[b, starts[lvl] + yy * w + xx, head]
                        out[b, q, head] += attention_weights[b, q, head, lvl, p] * acc
    return out.flatten(2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Zhu et al., Deformable DETR), default init as the official.

    Args:
        d_model: channels C. n_levels: feature levels L. n_heads: heads M. n_points: sampling points P per
        head and level. ratio: values live in ``int(C * ratio)`` channels (ViT-Adapter's extractor: 0.5).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0):
        super().__init__()
        self.value_dim = int(d_model * ratio)
        if d_model % n_heads != 0 or self.value_dim % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) and d_model * ratio ({self.value_dim}) must be divisible by "
                             f"n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # Initial offsets point in M evenly spaced directions, the k-th point k steps out (official init).
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor | None = None,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1], or (N, Lq, L, 4) boxes (cx, cy, w, h),
                in which case offsets are scaled by half the box size (box refinement in Deformable DETR/IDOL).
            input_flatten: (N, S, C), levels flattened in order.
            input_spatial_shapes: (L, 2) long.
            input_level_start_index: (L,) unused by the pure-torch path (kept for API parity with the CUDA op).
            input_padding_mask: (N, S) bool, True at padded positions (their values are zeroed).
        Returns:
            (N, Lq, C).
        """
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        expected = int((input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum())
        if expected != s:
            raise ValueError(f"input_flatten has {s} positions, spatial shapes give {expected}")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :].to(offsets.dtype)
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")
        out = ms_deform_attn_core(value, input_spatial_shapes, locations, weights)
        return self.output_proj(out)
