"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder over res3..res5 plus an FPN step to
res2.

Follows ``mask2former/modeling/pixel_decoder/msdeformattn.py`` (``MSDeformAttnPixelDecoder``):

1. res3, res4, res5 are projected to ``conv_dim`` (1x1 conv + GroupNorm(32)), get sine positional encodings
   plus a learned level embedding, and go through ``enc_layers`` (6) deformable encoder layers (post-norm,
   FFN 1024, ``enc_n_points`` 4 points per head and level, no padding mask: the official model ignores padding
   here);
2. the encoded maps are split back into levels (low to high resolution: 1/32, 1/16, 1/8);
3. FPN levels down to ``common_stride`` (4): lateral 1x1 conv of res2 + bilinear upsampling of the finest
   encoded map, then a 3x3 conv (GN, ReLU);
4. ``mask_features`` = 1x1 conv of the stride-4 map (:meth:`~MSDeformAttnPixelDecoder.encode` stops before it).

The encoder takes the same depth-keyed hooks as IDOL's Deformable-DETR encoder
(:class:`~vis_core.modeling.deformable_transformer.EncoderHooks`; MinVIS's BatchFormerV2 blocks): a hook that
multiplies the batch by ``k`` (two-stream training) makes every output of the pixel decoder ``k * N`` samples
(the res2 lateral of the FPN step is shared by the streams and tiled).

Submodule names match the official ones (``input_proj``, ``transformer.encoder.layers.i``, ``adapter_1``,
``layer_1``, ``mask_features``), so official checkpoints load after stripping ``sem_seg_head.pixel_decoder.``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.modeling.deformable_transformer import DeformableTransformerEncoderLayer, EncoderHooks
from vis_core.modeling.frozen_bn import Conv2d, get_norm, group_norm_groups
from vis_core.modeling.ms_deform_attn import MSDeformAttn
from vis_core.modeling.position_encoding import PositionEmbeddingSine

__all__ = [
    "MSDeformAttnPixelDecoder",
    "MSDeformAttnEncoderLayer",
    "c2_xavier_fill",
    "encoder_reference_points",
]


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill``: Kaiming-uniform with ``a=1`` (Caffe2 "XavierFill"), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def encoder_reference_points(spatial_shapes: torch.Tensor, batch: int, num_levels: int) -> torch.Tensor:
    """Pixel centres of every level, normalised to ``[0, 1]``: ``(batch, S, num_levels, 2)`` as ``(x, y)``.

    With no padding (all valid ratios 1) a pixel's query refers to the same relative position on every level.
    """
    points = []
    for h, w in spatial_shapes.tolist():
        ys = (torch.arange(h, dtype=torch.float32, device=spatial_shapes.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=spatial_shapes.device) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    ref = torch.cat(points, 0)
    return ref[None, :, None, :].expand(batch, -1, num_levels, -1)


# Mask2Former's pixel-decoder layer is exactly Deformable DETR's encoder layer (same names, same post-norm order).
MSDeformAttnEncoderLayer = DeformableTransformerEncoderLayer


class MSDeformAttnEncoder(nn.Module):
    """Encoder layers plus the level embedding (``transformer.level_embed`` in the official names), with optional
    :class:`EncoderHooks` ``{depth: module}`` (``hooks``, not in official checkpoints)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_levels: int,
        n_points: int,
        hooks: Mapping[int, nn.Module] | None = None,
    ):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_levels, nhead, n_points)
            for _ in range(num_layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()  # the deformable-attention init survives the blanket xavier pass
        nn.init.normal_(self.level_embed)
        self.set_hooks(hooks)  # after the init: it must not overwrite the hooks' own

    def set_hooks(self, hooks: Mapping[int, nn.Module] | None) -> None:
        """Install (or clear, with None) ``{depth: module}`` run on the tokens after the first ``depth`` layers."""
        self.hooks = EncoderHooks(len(self.encoder.layers), hooks)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]):
        """
        Args:
            srcs / pos_embeds: per level ``(N, C, H_l, W_l)``.
        Returns:
            memory ``(k N, S, C)`` (``k``: the hooks' batch multiplier), spatial_shapes ``(L, 2)`` long,
            level_start_index ``(L,)`` long.
        """
        flat, flat_pos, shapes = [], [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds, strict=True)):
            shapes.append(src.shape[-2:])
            flat.append(src.flatten(2).transpose(1, 2))
            flat_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(flat, 1)
        pos_flatten = torch.cat(flat_pos, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        reference_points = encoder_reference_points(spatial_shapes, src_flatten.shape[0], len(srcs))
        ctx = {"pos": pos_flatten, "reference_points": reference_points}
        out, ctx = self.hooks.run(0, src_flatten, ctx)
        for depth, layer in enumerate(self.encoder.layers, start=1):
            out = layer(out, ctx["pos"], ctx["reference_points"], spatial_shapes, level_start_index)
            out, ctx = self.hooks.run(depth, out, ctx)
        return out, spatial_shapes, level_start_index


class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale pixel decoder of Mask2Former.

    Args:
        input_shapes: ``{name: (channels, stride)}`` of the backbone features, e.g. res2..res5.
        conv_dim: channels of the encoder / FPN maps (256). mask_dim: channels of ``mask_features`` (256).
        norm: norm of the FPN convs (``"GN"``).
        transformer_in_features: levels fed to the deformable encoder (res3, res4, res5).
        enc_layers, enc_heads, enc_dim_feedforward, enc_n_points, dropout: encoder (6, 8, 1024, 4, 0.0).
        common_stride: stride of ``mask_features`` (4).
        encoder_hooks: optional ``{depth: module}`` run between encoder layers (MinVIS's BatchFormerV2).
    """

    def __init__(
        self,
        input_shapes: dict[str, tuple[int, int]],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5"),
        enc_layers: int = 6,
        enc_heads: int = 8,
        enc_dim_feedforward: int = 1024,
        enc_n_points: int = 4,
        dropout: float = 0.0,
        common_stride: int = 4,
        encoder_hooks: Mapping[int, nn.Module] | None = None,
    ):
        super().__init__()
        missing = set(transformer_in_features) - set(input_shapes)
        if missing:
            raise ValueError(
                f"transformer_in_features {sorted(missing)} are not among the inputs {sorted(input_shapes)}"
            )
        ordered = sorted(input_shapes.items(), key=lambda kv: kv[1][1])  # by stride, res2 first
        self.in_features = [k for k, _ in ordered]
        feature_channels = [c for _, (c, _) in ordered]
        tr = sorted(((k, input_shapes[k]) for k in transformer_in_features), key=lambda kv: kv[1][1])
        self.transformer_in_features = [k for k, _ in tr]
        tr_channels = [c for _, (c, _) in tr]
        tr_strides = [s for _, (_, s) in tr]
        self.transformer_num_feature_levels = len(tr)
        # from low to high resolution (res5 first), the order of the encoder's levels
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(group_norm_groups(conv_dim), conv_dim)
            )
            for c in tr_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnEncoder(
            conv_dim,
            enc_heads,
            enc_layers,
            enc_dim_feedforward,
            dropout,
            self.transformer_num_feature_levels,
            enc_n_points,
            hooks=encoder_hooks,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # the transformer decoder always reads 3 scales
        self.common_stride = common_stride
        self.num_fpn_levels = int(math.log2(min(tr_strides)) - math.log2(common_stride))
        lateral_convs, output_convs = [], []
        use_bias = norm == ""
        for idx, in_channels in enumerate(feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # top-down order (low to high resolution); plain lists: the modules are registered above
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    def forward(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: backbone maps ``{name: (N, C_name, H/s, W/s)}``.
        Returns:
            mask_features ``(N', mask_dim, H/4, W/4)``,
            the coarsest encoded map ``(N', conv_dim, H/32, W/32)``,
            multi_scale_features: 3 maps ``(N', conv_dim, H/s, W/s)`` for s = 32, 16, 8;
            ``N' = k N``, ``k`` the batch multiplier of the encoder hooks (1 without them, and at test).
        """
        pixel_features, coarsest, multi_scale_features = self.encode(features)
        return self.project_mask_features(pixel_features), coarsest, multi_scale_features

    def encode(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward` without the last step: returns the stride-4 map *before* the ``mask_features``
        projection, ``(N, conv_dim, H/4, W/4)`` (VITA's object decoder reads it), then the coarsest encoded
        map and the 3 multi-scale maps as :meth:`forward`."""
        # deformable attention runs in float32 under autocast, as the official (no half precision there)
        with torch.autocast(device_type=next(iter(features.values())).device.type, enabled=False):
            srcs, pos = [], []
            for idx, name in enumerate(self.transformer_in_features[::-1]):
                x = features[name].float()
                srcs.append(self.input_proj[idx](x))
                pos.append(self.pe_layer(x))
            memory, spatial_shapes, level_start_index = self.transformer(srcs, pos)
            n = memory.shape[0]
            sizes = spatial_shapes.prod(1).tolist()
            out = [
                z.transpose(1, 2).reshape(n, -1, int(h), int(w))
                for z, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes.tolist(), strict=True)
            ]
            for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
                lateral = self.lateral_convs[idx](features[name].float())
                # the backbone map is the same for every stream of a batch-multiplying hook: convolve once
                lateral = lateral.repeat(n // lateral.shape[0], 1, 1, 1)
                # FPN step; bilinear (not nearest) upsampling as in the official decoder
                y = lateral + F.interpolate(
                    out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )
                out.append(self.output_convs[idx](y))
            return out[-1], out[0], out[: self.maskformer_num_feature_levels]

    def project_mask_features(self, pixel_features: torch.Tensor) -> torch.Tensor:
        """The 1x1 ``mask_features`` conv: ``(N, conv_dim, h, w)`` -> ``(N, mask_dim, h, w)``, in float32 under
        autocast too (the official runs it inside the float32 region)."""
        with torch.autocast(device_type=pixel_features.device.type, enabled=False):
            return self.mask_features(pixel_features)
