"""Point sampling of mask logits (PointRend), as used by Mask2Former's matcher and criterion.

Points are given in normalised ``[0, 1] x [0, 1]`` coordinates ``(x, y)`` so that predictions at ``H/4`` and
targets at full resolution can be sampled at the same physical locations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["point_sample", "calculate_uncertainty", "get_uncertain_point_coords_with_randomness"]


def point_sample(input: Tensor, point_coords: Tensor, align_corners: bool = False, **kwargs) -> Tensor:
    """Bilinearly sample ``input`` at normalised points (wrapper of ``F.grid_sample``).

    Args:
        input: ``(N, C, H, W)``.
        point_coords: ``(N, P, 2)`` or ``(N, Hg, Wg, 2)`` in ``[0, 1]``, last dim ``(x, y)``.
        align_corners: passed to ``grid_sample`` (Mask2Former uses False: pixel centres at ``(i + 0.5) / W``).
    Returns:
        ``(N, C, P)`` or ``(N, C, Hg, Wg)``.
    """
    add_dim = point_coords.dim() == 3
    if add_dim:
        point_coords = point_coords.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * point_coords - 1.0, align_corners=align_corners, **kwargs)
    if add_dim:
        output = output.squeeze(3)
    return output


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of class-agnostic mask logits ``(N, 1, ...)``: ``-|logit|`` (highest near the boundary)."""
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty expects one channel, got shape {tuple(logits.shape)}")
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_func: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float = 3,
    importance_sample_ratio: float = 0.75,
) -> Tensor:
    """PointRend training-time point selection: mostly uncertain points plus some uniform ones.

    ``num_points * oversample_ratio`` candidates are drawn uniformly; the
    ``importance_sample_ratio * num_points`` most uncertain of them are kept and the rest of the budget is
    filled with fresh uniform points.

    Args:
        coarse_logits: ``(N, 1, H, W)`` mask logits.
        uncertainty_func: maps ``(N, 1, P)`` sampled logits to ``(N, 1, P)`` uncertainties.
        num_points: points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in ``[0, 1]``.
    Returns:
        ``(N, num_points, 2)`` normalised ``(x, y)`` coordinates.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = coarse_logits.shape[0]
    device = coarse_logits.device
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(num_masks, num_sampled, 2, device=device)
    # sample half-precision (AMP) logits in float32 so that rounding does not change which points are picked
    if coarse_logits.dtype in (torch.float16, torch.bfloat16):
        coarse_logits = coarse_logits.float()
    logits = point_sample(coarse_logits, candidates.to(coarse_logits.dtype), align_corners=False)
    uncertainties = uncertainty_func(logits)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    coords = torch.gather(candidates, 1, idx[:, :, None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(num_masks, num_random, 2, device=device)], dim=1)
    return coords
