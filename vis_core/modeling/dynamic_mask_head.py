"""CondInst-style dynamic mask head of IDOL (``segmentation_condInst.py``).

Two parts:

* :class:`MaskBranch` (IDOL's ``MaskHeadSmallConv`` with ``fpns=None``): fuses the encoder memory of the first
  three levels (strides 8, 16, 32) top-down (3x3 conv + ReLU, nearest upsampling, add) into a stride-8 map and
  reduces it to a few channels (8 at ``d_model`` 256).
* :class:`DynamicMaskHead`: a controller MLP turns each decoder query into the weights of a tiny per-instance
  network (three 1x1 convs, 8 channels, ReLU), which runs on ``[relative coordinates (2), mask features]`` at
  stride 8; the logits are upsampled x2 with CondInst's ``aligned_bilinear`` to stride 4.

Relative coordinates are in input pixels, as IDOL: the instance's reference point (normalised to the unpadded image,
times its width/height) minus each stride-8 cell centre ``(8 j + 4, 8 i + 4)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deformable_transformer import MLP

__all__ = ["aligned_bilinear", "compute_locations", "MaskBranch", "DynamicMaskHead"]


def aligned_bilinear(tensor: Tensor, factor: int) -> Tensor:
    """Upsample ``(N, C, H, W)`` by an integer ``factor`` keeping pixel centres aligned (CondInst).

    Output ``(N, C, factor * H, factor * W)``: input pixel ``i`` (centre at ``factor * i + factor // 2``) keeps
    its value at output pixel ``factor * i + factor // 2``; values in between are bilinear.
    """
    if tensor.dim() != 4 or factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear needs a 4-d tensor and an integer factor >= 1, got {factor}")
    if factor == 1:
        return tensor
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    tensor = F.interpolate(tensor, size=(oh, ow), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, : oh - 1, : ow - 1]


def compute_locations(h: int, w: int, stride: int, device=None) -> Tensor:
    """Centres of the cells of an ``(h, w)`` map of the given stride, in input pixels: ``(h * w, 2)`` (x, y)."""
    xs = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1) + stride // 2


class MaskBranch(nn.Module):
    """Top-down fusion of three memory levels into stride-8 mask features.

    Args:
        dim: memory channels C. out_channels: mask feature channels (IDOL: ``C // 32``).
    """

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.lay3 = nn.Conv2d(dim, dim, 3, padding=1)
        self.lay4 = nn.Conv2d(dim, dim, 3, padding=1)
        self.fuse = nn.Conv2d(dim, dim, 3, padding=1)  # IDOL's ``dcn`` (a plain conv there too)
        self.lay1 = nn.Conv2d(dim, max(dim // 4, out_channels), 3, padding=1)
        self.lay2 = nn.Conv2d(max(dim // 4, out_channels), out_channels, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """feats: ``[stride 8, stride 16, stride 32]`` maps ``(N, C, H_l, W_l)`` -> ``(N, out, H_8, W_8)``."""
        x = F.relu(self.lay3(feats[2]))
        x = feats[1] + F.interpolate(x, size=feats[1].shape[-2:], mode="nearest")
        x = F.relu(self.lay4(x))
        x = feats[0] + F.interpolate(x, size=feats[0].shape[-2:], mode="nearest")
        x = F.relu(self.fuse(x))
        x = F.relu(self.lay1(x))
        return F.relu(self.lay2(x))


class DynamicMaskHead(nn.Module):
    """Controller + mask branch + dynamic convolutions.

    Args:
        hidden_dim: decoder / memory channels C.
        mask_channels: mask feature channels (IDOL: C // 32 = 8).
        dynamic_channels: width of the per-instance network (8).
        num_layers: 1x1 convs of the per-instance network (3).
        rel_coord: prepend relative coordinates to the mask features (True in IDOL).
        feat_stride: stride of the mask features (8). out_stride: stride of the output logits (4).
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        mask_channels: int = 8,
        dynamic_channels: int = 8,
        num_layers: int = 3,
        rel_coord: bool = True,
        feat_stride: int = 8,
        out_stride: int = 4,
    ):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"the dynamic mask network needs >= 2 layers, got {num_layers}")
        if feat_stride % out_stride != 0:
            raise ValueError(f"feat_stride {feat_stride} must be a multiple of out_stride {out_stride}")
        self.mask_channels, self.dynamic_channels, self.num_layers = mask_channels, dynamic_channels, num_layers
        self.rel_coord, self.feat_stride, self.out_stride = rel_coord, feat_stride, out_stride
        in_ch = mask_channels + (2 if rel_coord else 0)
        self.weight_shapes = [(dynamic_channels, in_ch)]
        self.weight_shapes += [(dynamic_channels, dynamic_channels)] * (num_layers - 2)
        self.weight_shapes += [(1, dynamic_channels)]
        weight_nums = [o * i for o, i in self.weight_shapes]
        bias_nums = [o for o, _ in self.weight_shapes]
        self.split_sizes = weight_nums + bias_nums
        self.num_gen_params = sum(self.split_sizes)
        self.controller = MLP(hidden_dim, hidden_dim, self.num_gen_params, 3)
        for layer in self.controller.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.mask_branch = MaskBranch(hidden_dim, mask_channels)

    def mask_features(self, feats: list[Tensor]) -> Tensor:
        """Encoder memory maps at strides 8/16/32 -> ``(N, mask_channels, H/8, W/8)``."""
        return self.mask_branch(feats)

    def params(self, hs: Tensor) -> Tensor:
        """Decoder outputs ``(..., C)`` -> generated parameters ``(..., num_gen_params)``."""
        return self.controller(hs)

    def forward(self, mask_feats: Tensor, params: Tensor, ref_points: Tensor) -> Tensor:
        """Masks of instances that all look at one image.

        Args:
            mask_feats: ``(Cm, h, w)`` one image's stride-``feat_stride`` features.
            params: ``(n, num_gen_params)``. ref_points: ``(n, 2)`` (x, y) in input pixels.
        Returns:
            ``(n, out_factor * h, out_factor * w)`` mask logits at ``out_stride``.
        """
        n = params.shape[0]
        cm, h, w = mask_feats.shape
        chunks = list(torch.split(params, self.split_sizes, dim=1))
        weights = [c.reshape(n, o, i) for c, (o, i) in zip(chunks[: self.num_layers], self.weight_shapes, strict=True)]
        biases = chunks[self.num_layers :]
        feats = mask_feats.reshape(cm, h * w)
        # first layer: the features are shared by all instances, only the coordinates differ, so apply the
        # feature part of the generated weights as one matmul instead of materialising (n, 2 + Cm, h*w)
        w0 = weights[0]
        if self.rel_coord:
            locations = compute_locations(h, w, self.feat_stride, device=mask_feats.device)  # (hw, 2)
            rel = (ref_points[:, None, :] - locations[None]).transpose(1, 2).to(feats.dtype)  # (n, 2, hw)
            x = torch.einsum("noc,cp->nop", w0[:, :, 2:], feats) + torch.bmm(w0[:, :, :2], rel)
        else:
            x = torch.einsum("noc,cp->nop", w0, feats)
        x = x + biases[0][:, :, None]
        for layer in range(1, self.num_layers):
            x = torch.bmm(weights[layer], F.relu(x)) + biases[layer][:, :, None]
        logits = x.reshape(n, 1, h, w)
        logits = aligned_bilinear(logits, self.feat_stride // self.out_stride)
        return logits[:, 0]

    def batched(self, mask_feats: Tensor, params: Tensor, ref_points: Tensor) -> Tensor:
        """``(N, Cm, h, w)``, ``(N, Q, P)``, ``(N, Q, 2)`` -> ``(N, Q, f h, f w)`` (every query of every image)."""
        return torch.stack([self(mask_feats[i], params[i], ref_points[i]) for i in range(mask_feats.shape[0])])
