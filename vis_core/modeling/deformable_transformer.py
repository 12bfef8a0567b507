"""Deformable DETR transformer as used by IDOL: encoder, decoder with iterative box refinement, sine positions.

Single-stage only (IDOL trains with ``two_stage=False``): decoder queries come from a learned embedding whose first
half is the query position and second half the initial content; the first reference point is a linear projection
of the query position. After every decoder layer a box head refines the reference box (``sigmoid(delta +
inverse_sigmoid(ref))``), which is detached before it becomes the next layer's reference (Zhu et al., Sec. 4.1).

Shapes: N batch, L feature levels, S = sum_l H_l W_l flattened positions, Q queries, C channels.

The encoder accepts hooks keyed by depth (:class:`EncoderHooks`, ``{depth: module}``): a module run on the token
sequence after the first ``depth`` encoder layers (``0``: the encoder input; ``num_layers``: its output), for
BatchFormerV2-style batch attention. Such a module is called as ``module(src, pos=pos, reference_points=ref,
padding_mask=mask)`` with ``src, pos`` of shape ``(N, S, C)``, ``ref`` ``(N, S, L, 2)`` and ``mask`` ``(N, S)``,
and returns ``(k * N, S, C)``; when ``k > 1`` (two-stream training, ``cat([x, bf(x)])``) every per-sample tensor
downstream (reference points, positions, masks, valid ratios) is tiled ``k`` times in the same order, so the rest
of the model runs at ``k * N``. Mask2Former's pixel-decoder encoder takes the same hooks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import MSDeformAttn

__all__ = [
    "inverse_sigmoid",
    "MLP",
    "PositionEmbeddingSine",
    "DeformableTransformerEncoderLayer",
    "EncoderHooks",
    "DeformableTransformerEncoder",
    "DeformableTransformerDecoderLayer",
    "DeformableTransformerDecoder",
    "DeformableTransformer",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with both terms clamped at ``eps`` (Deformable DETR ``util/misc.py``)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box / controller head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine position embedding of a padded feature map.

    Coordinates are cumulative counts of valid (non-padded) pixels, shifted by half a pixel and normalised to
    ``[0, 2 pi]`` by the valid extent (Deformable DETR's ``normalize=True`` variant).

    Args:
        num_pos_feats: channels per axis (C / 2).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats, self.temperature, self.scale = num_pos_feats, temperature, scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask: ``(N, H, W)`` bool, True at padding -> ``(N, 2 * num_pos_feats, H, W)`` (y channels first)."""
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        eps = 1e-6
        y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
        x = (x - 0.5) / (x[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention over all levels + FFN, post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        """src, pos: ``(N, S, C)``; reference_points: ``(N, S, L, 2)``; padding_mask: ``(N, S)``."""
        src2 = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class EncoderHooks(nn.ModuleDict):
    """Modules run on an encoder's tokens between its layers, keyed by depth (BatchFormerV2 insertion points).

    ``hooks[str(d)]`` runs on the tokens after the first ``d`` of ``num_layers`` encoder layers (``0 <= d <=
    num_layers``) as ``module(tokens, **context)``: ``tokens (N, S, C)``, ``context`` the encoder's other
    per-sample tensors (batch first; None entries allowed). It returns ``(k * N, S, C)``, and when ``k > 1``
    :meth:`run` tiles the context ``k`` times (``[c0..cN-1, c0..cN-1, ...]``, the order of ``cat([x, f(x)])``)
    so that the next layers run on ``k * N`` samples.
    """

    def __init__(self, num_layers: int, hooks: Mapping[int, nn.Module] | None = None):
        super().__init__()
        self.num_layers = num_layers
        for depth, module in (hooks or {}).items():
            if not 0 <= int(depth) <= num_layers:
                raise ValueError(f"encoder hook depth {depth} out of range 0..{num_layers} ({num_layers} layers)")
            self[str(int(depth))] = module

    def run(self, depth: int, tokens: Tensor, context: dict[str, Tensor | None]):
        """The hook at ``depth`` (if any) on ``tokens (N, S, C)`` -> ``(tokens (k N, S, C), context tiled k x)``."""
        key = str(depth)
        if key not in self:
            return tokens, context
        out = self[key](tokens, **context)
        n = tokens.shape[0]
        if out.dim() != 3 or out.shape[1:] != tokens.shape[1:] or out.shape[0] % n or out.shape[0] == 0:
            raise ValueError(f"encoder hook at depth {depth} returned shape {tuple(out.shape)}; "
                             f"expected (k * {n}, {tokens.shape[1]}, {tokens.shape[2]})")
        k = out.shape[0] // n
        if k > 1:
            context = {name: None if v is None else v.repeat(k, *[1] * (v.dim() - 1)) for name, v in context.items()}
        return out, context


class DeformableTransformerEncoder(nn.Module):
    """A stack of encoder layers, with optional :class:`EncoderHooks` (see the module docstring)."""

    def __init__(self, layer: nn.Module, num_layers: int, hooks: Mapping[int, nn.Module] | None = None):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.num_layers = num_layers
        self.set_hooks(hooks)

    def set_hooks(self, hooks: Mapping[int, nn.Module] | None) -> None:
        """Install (or clear, with None) ``{depth: module}``: each module runs on the tokens after the first
        ``depth`` encoder layers (``0 <= depth <= num_layers``)."""
        self.hooks = EncoderHooks(self.num_layers, hooks)

    @staticmethod
    def get_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor, device) -> Tensor:
        """Pixel centres of every level, in the valid-area-normalised frame, projected onto every level.

        Returns ``(N, S, L, 2)`` (x, y).
        """
        refs = []
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(refs, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos, padding_mask):
        """Returns ``(memory (k*N, S, C), k)`` where ``k`` is the batch multiplier of the hooks."""
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, device=src.device)
        ctx = {"pos": pos, "reference_points": reference_points, "padding_mask": padding_mask}
        output, ctx = self.hooks.run(0, src, ctx)
        for depth, layer in enumerate(self.layers, start=1):
            output = layer(output, ctx["pos"], ctx["reference_points"], spatial_shapes, level_start_index,
                           ctx["padding_mask"])
            output, ctx = self.hooks.run(depth, output, ctx)
        return output, output.shape[0] // src.shape[0]


class DeformableTransformerDecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention to the memory, FFN; post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask):
        """tgt, query_pos: ``(N, Q, C)``; reference_points: ``(N, Q, L, 2 or 4)``; src: ``(N, S, C)``."""
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn(
            tgt + query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class DeformableTransformerDecoder(nn.Module):
    """Decoder with iterative box refinement.

    Args:
        layer: a decoder layer (cloned ``num_layers`` times).
        bbox_embed: ``num_layers`` box heads (``MLP(C, C, 4, 3)``) mapping a layer's output to a box delta in
            inverse-sigmoid space; ``None`` disables refinement (reference points stay the initial ones).
    """

    def __init__(self, layer: nn.Module, num_layers: int, bbox_embed: nn.ModuleList | None = None):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.num_layers = num_layers
        if bbox_embed is not None and len(bbox_embed) != num_layers:
            raise ValueError(f"bbox_embed has {len(bbox_embed)} heads for {num_layers} decoder layers")
        self.bbox_embed = bbox_embed

    def forward(self, tgt, reference_points, src, spatial_shapes, level_start_index, valid_ratios, query_pos,
                padding_mask):
        """
        Args:
            tgt, query_pos: ``(N, Q, C)``. reference_points: ``(N, Q, 2)`` initial (x, y) in ``[0, 1]``.
            src: ``(N, S, C)`` memory. valid_ratios: ``(N, L, 2)``. padding_mask: ``(N, S)``.
        Returns:
            hs: ``(D, N, Q, C)`` every layer's output.
            references: ``(D, N, Q, 2 or 4)`` the reference each layer *received* (layer 0: the initial points).
            boxes: ``(D, N, Q, 4)`` cxcywh boxes predicted by each layer (with gradient), or ``None`` when
                refinement is off.
        """
        output = tgt
        hs, references, boxes = [], [], []
        for lid, layer in enumerate(self.layers):
            references.append(reference_points)
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]
            output = layer(output, query_pos, ref_input, src, spatial_shapes, level_start_index, padding_mask)
            hs.append(output)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    box = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    box = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                    box = box.sigmoid()
                boxes.append(box)
                # the next layer refines a detached box: gradients do not flow through the reference chain
                reference_points = box.detach()
        # references have different last dims (2 for layer 0, 4 after refinement): keep the (x, y) part stacked
        return torch.stack(hs), references, (torch.stack(boxes) if boxes else None)


class DeformableTransformer(nn.Module):
    """Encoder + decoder of (single-stage) Deformable DETR with IDOL's defaults.

    Args:
        d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout: usual meaning.
        num_feature_levels: L. enc_n_points / dec_n_points: sampling points per head and level.
        bbox_embed: box heads for iterative refinement (one per decoder layer), owned by the decoder.
        encoder_hooks: optional ``{depth: module}`` run between encoder layers (see :class:`EncoderHooks`).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        bbox_embed: nn.ModuleList | None = None,
        encoder_hooks: Mapping[int, nn.Module] | None = None,
    ):
        super().__init__()
        self.d_model, self.nhead, self.num_feature_levels = d_model, nhead, num_feature_levels
        enc_layer = DeformableTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = DeformableTransformerEncoder(enc_layer, num_encoder_layers)
        dec_layer = DeformableTransformerDecoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points
        )
        self.decoder = DeformableTransformerDecoder(dec_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()
        # heads and hooks are attached after the init so that it does not overwrite theirs
        self.decoder.bbox_embed = bbox_embed
        self.encoder.set_hooks(encoder_hooks)

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def get_valid_ratio(mask: Tensor) -> Tensor:
        """``(N, H, W)`` padding mask -> ``(N, 2)`` valid fraction (w, h)."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    def forward(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor], query_embed: Tensor):
        """
        Args:
            srcs: L tensors ``(N, C, H_l, W_l)``. masks: L ``(N, H_l, W_l)`` bool (True = padding).
            pos_embeds: L ``(N, C, H_l, W_l)``. query_embed: ``(Q, 2C)`` (query position | initial content).
        Returns:
            dict with ``hs (D, N', Q, C)``, ``references`` (list of D ``(N', Q, 2|4)``), ``boxes (D, N', Q, 4)``
            or None, ``memory (N', S, C)``, ``spatial_shapes (L, 2)``, ``level_start_index (L,)``,
            ``valid_ratios (N', L, 2)``, ``mask_flatten (N', S)`` and ``batch_multiplier`` k (N' = k N).
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(srcs)}")
        src_flatten, mask_flatten, pos_flatten, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds, strict=True)):
            h, w = src.shape[-2:]
            shapes.append((h, w))
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        mask_flatten = torch.cat(mask_flatten, 1)
        pos_flatten = torch.cat(pos_flatten, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in masks], 1)

        memory, k = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_ratios, pos_flatten,
                                 mask_flatten)
        if k > 1:
            valid_ratios = valid_ratios.repeat(k, 1, 1)
            mask_flatten = mask_flatten.repeat(k, 1)

        n, _, c = memory.shape
        query_pos, tgt = torch.split(query_embed, c, dim=1)
        query_pos = query_pos.unsqueeze(0).expand(n, -1, -1)
        tgt = tgt.unsqueeze(0).expand(n, -1, -1)
        reference_points = self.reference_points(query_pos).sigmoid()
        hs, references, boxes = self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask_flatten
        )
        return {
            "hs": hs,
            "references": references,
            "boxes": boxes,
            "memory": memory,
            "spatial_shapes": spatial_shapes,
            "level_start_index": level_start_index,
            "valid_ratios": valid_ratios,
            "mask_flatten": mask_flatten,
            "batch_multiplier": k,
        }
