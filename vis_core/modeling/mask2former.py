"""Mask2Former (Cheng et al. 2022) as a per-frame segmenter: backbone -> pixel decoder -> masked-attention
transformer decoder.

The decoder follows ``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py``:

* learnable query features and query positional embeddings (``num_queries``: 100, 200 for Swin-L);
* ``dec_layers`` (9) layers, each cross-attention -> self-attention -> FFN (post-norm, dropout 0), reading the
  three pixel-decoder levels round-robin (1/32, 1/16, 1/8, 1/32, ...);
* before every layer, and once on the initial queries, the prediction heads run on the ``decoder_norm``-ed
  queries: a linear classifier (K + 1 logits) and a 3-layer ``mask_embed`` MLP whose dot product with the
  stride-4 ``mask_features`` gives mask logits. The mask, resized to the next layer's level, becomes its
  attention mask (``sigmoid < 0.5`` is masked out; a query whose mask is empty everywhere attends everywhere);
* deep supervision: the official ``DEC_LAYERS: 10`` means 9 transformer layers plus the prediction on the
  initial queries, so ``aux_outputs`` has ``dec_layers`` (9) entries and the final prediction is the 10th.

MinVIS / DVIS / VITA consume the per-frame query embeddings: ``pred_embds`` is the final ``decoder_norm``-ed
query tensor (MinVIS's ``pred_embds``), and every ``aux_outputs`` entry carries its layer's embeddings too.
For VITA the forward also returns ``pred_queries``, the normalised queries of the last ``num_query_layers``
predictions (VITA's ``frame_queries``: all layers in training, the last at test), and ``pixel_features``, the
stride-4 pixel-decoder map before the ``mask_features`` projection.

Encoder hooks: ``encoder_hooks`` (``{depth: module}``) go to the pixel decoder's deformable encoder
(:class:`~vis_core.modeling.deformable_transformer.EncoderHooks`; MinVIS's BatchFormerV2 blocks, see
:func:`vis_core.modeling.batchformer.batchformer_hooks`). A hook may return ``k * B`` samples (training
streams, ``cat([x, f(x)])``); the pixel decoder's outputs then have ``k * B`` samples, the transformer decoder
simply runs on all of them, and every output has batch ``k * B`` (the caller repeats its targets ``k`` times).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.modeling.backbones.build import BackboneConfig, LoadReport, build_backbone, load_weights
from vis_core.modeling.frozen_bn import Conv2d
from vis_core.modeling.pixel_decoder import MSDeformAttnPixelDecoder, c2_xavier_fill
from vis_core.modeling.position_encoding import PositionEmbeddingSine

__all__ = [
    "Mask2FormerConfig",
    "Mask2Former",
    "MultiScaleMaskedTransformerDecoder",
    "build_mask2former",
    "load_mask2former_weights",
    "masked_attention_mask",
    "unmask_empty_rows",
    "PIXEL_MEAN",
    "PIXEL_STD",
]

# detectron2's ImageNet statistics for RGB input in 0..255 (the official Mask2Former PIXEL_MEAN / PIXEL_STD)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def masked_attention_mask(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Attention mask of masked attention from mask logits.

    Args:
        mask_logits: ``(B, Q, H, W)`` mask logits (at stride 4).
        size: ``(h, w)`` of the feature level the next layer attends to.
    Returns:
        ``(B, Q, h * w)`` bool, True where the query may NOT attend (``sigmoid(logit) < 0.5`` after bilinear
        resizing); detached. Rows that are all True still need :func:`unmask_empty_rows`.
    """
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    return (resized.sigmoid().flatten(2) < 0.5).detach()


def unmask_empty_rows(attn_mask: torch.Tensor) -> torch.Tensor:
    """The "all masked -> unmask" rule: a query whose predicted mask is empty at this level attends everywhere
    (otherwise its softmax would have no support and produce NaN). ``(..., S)`` bool in, same shape out."""
    empty = attn_mask.all(dim=-1, keepdim=True)
    return attn_mask & ~empty


class SelfAttentionLayer(nn.Module):
    """Query self-attention, post-norm residual (``pre_norm=False`` as the official configs)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """``tgt``, ``query_pos``: ``(B, Q, C)`` -> ``(B, Q, C)``."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = x + query_pos
        tgt = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from queries to one feature level, post-norm residual."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.nhead = nhead
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: torch.Tensor | None,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            tgt, query_pos: ``(B, Q, C)``. memory, pos: ``(B, S, C)``.
            attn_mask: ``(B, Q, S)`` bool, True = may not attend (same for every head), or None.
        """
        if attn_mask is not None:
            # nn.MultiheadAttention wants (B * heads, Q, S), batch-major
            attn_mask = attn_mask.repeat_interleave(self.nhead, dim=0)
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.multihead_attn(
            query=x + query_pos, key=memory + pos, value=memory, attn_mask=attn_mask, need_weights=False
        )[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Linear -> ReLU -> Linear with a post-norm residual."""

    def __init__(
        self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MLP(nn.Module):
    """``num_layers`` linears with ReLU in between (DETR's FFN head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's masked-attention transformer decoder.

    Args:
        in_channels: channels of the pixel-decoder levels (``conv_dim``).
        num_classes: K; the classifier has K + 1 outputs (the last is "no object").
        hidden_dim, num_queries, nheads, dim_feedforward: 256, 100, 8, 2048.
        dec_layers: transformer layers (9; the official ``DEC_LAYERS`` is this + 1).
        pre_norm: pre-LayerNorm layers (False). mask_dim: channels of ``mask_features``.
        enforce_input_project: 1x1 input projections even when ``in_channels == hidden_dim``.
    """

    num_feature_levels = 3  # always three scales

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
    ):
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
        self.num_classes = num_classes
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_target_size: tuple[int, int]
    ):
        """Class logits ``(B, Q, K+1)``, mask logits ``(B, Q, H, W)``, the next attention mask ``(B, Q, h*w)``
        and the normalised query embeddings ``(B, Q, C)`` of queries ``output`` ``(B, Q, C)``."""
        decoder_output = self.decoder_norm(output)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = masked_attention_mask(outputs_mask, attn_mask_target_size)
        return outputs_class, outputs_mask, attn_mask, decoder_output

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, num_query_layers: int = 1) -> dict:
        """
        Args:
            x: 3 pixel-decoder levels ``(B, C_in, H_l, W_l)``, low to high resolution (1/32, 1/16, 1/8).
            mask_features: ``(B, mask_dim, H/4, W/4)``.
            num_query_layers: ``L``, how many of the last predictions' normalised queries ``pred_queries``
                holds (1 .. ``dec_layers + 1``; 1, the default, costs nothing: a view of ``pred_embds``).
        Returns:
            dict(pred_logits ``(B, Q, K+1)``, pred_masks ``(B, Q, H/4, W/4)``, pred_embds ``(B, Q, C)``,
            pred_queries ``(L, B, Q, C)`` (oldest first: ``pred_queries[-1]`` is ``pred_embds``),
            aux_outputs: ``dec_layers`` dicts with pred_logits, pred_masks, pred_embds, the initial prediction
            first).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        if not 1 <= num_query_layers <= self.num_layers + 1:
            raise ValueError(f"num_query_layers must be in 1..{self.num_layers + 1}, got {num_query_layers}")
        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(tuple(x[i].shape[-2:]))
            pos.append(self.pe_layer(x[i]).flatten(2).transpose(1, 2).to(x[i].dtype))
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.transpose(1, 2))
        bs = src[0].shape[0]
        query_embed = self.query_embed.weight.unsqueeze(0).repeat(bs, 1, 1)
        output = self.query_feat.weight.unsqueeze(0).repeat(bs, 1, 1)

        predictions = []
        cls, masks, attn_mask, embds = self.forward_prediction_heads(output, mask_features, size_list[0])
        predictions.append((cls, masks, embds))
        for i in range(self.num_layers):
            level_index = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, src[level_index], unmask_empty_rows(attn_mask), pos[level_index], query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            next_size = size_list[(i + 1) % self.num_feature_levels]
            cls, masks, attn_mask, embds = self.forward_prediction_heads(output, mask_features, next_size)
            predictions.append((cls, masks, embds))

        (cls, masks, embds), aux = predictions[-1], predictions[:-1]
        if num_query_layers == 1:  # the default: a view, no copy
            queries = embds.unsqueeze(0)
        else:
            queries = torch.stack([p[2] for p in predictions[-num_query_layers:]])
        return {
            "pred_logits": cls,
            "pred_masks": masks,
            "pred_embds": embds,
            "pred_queries": queries,
            "aux_outputs": [{"pred_logits": a, "pred_masks": b, "pred_embds": c} for a, b, c in aux],
        }


class Mask2Former(nn.Module):
    """Per-frame Mask2Former segmenter.

    Args:
        backbone: returns ``dict(res2..res5)``; needs ``out_channels`` and ``out_strides``.
        pixel_decoder: :class:`MSDeformAttnPixelDecoder`.
        predictor: :class:`MultiScaleMaskedTransformerDecoder`.
        pixel_mean, pixel_std: RGB normalisation of 0..255 input.
        size_divisibility: inputs are zero-padded (after normalisation, as detectron2's ``ImageList``) at the
            bottom/right to a multiple of this; outputs are cropped back.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: MultiScaleMaskedTransformerDecoder,
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.size_divisibility = size_divisibility
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def num_queries(self) -> int:
        return self.predictor.num_queries

    @property
    def num_classes(self) -> int:
        return self.predictor.num_classes

    def forward(self, images: torch.Tensor, num_query_layers: int = 1) -> dict:
        """
        Args:
            images: ``(B, 3, H, W)`` float RGB in 0..255; any H, W.
            num_query_layers: ``L`` of ``pred_queries`` (see :class:`MultiScaleMaskedTransformerDecoder`).
        Returns:
            dict(pred_logits ``(B, Q, K+1)``, pred_masks ``(B, Q, ceil(H/4), ceil(W/4))`` logits,
            pred_embds ``(B, Q, C)`` final ``decoder_norm``-ed query embeddings, pred_queries ``(L, B, Q, C)``
            the normalised queries of the last ``L`` predictions (``[-1]`` is pred_embds), aux_outputs list of
            ``dec_layers`` dicts (pred_logits, pred_masks, pred_embds), mask_features ``(B, mask_dim, h4, w4)``
            and pixel_features ``(B, conv_dim, h4, w4)``, the stride-4 pixel-decoder map that ``mask_features``
            projects, with ``h4, w4 = ceil(H/4), ceil(W/4)``). Mask logits at stride 4 cover ``4 * ceil(H/4)``
            input rows. With batch-multiplying encoder hooks (training) every output has batch ``k * B``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Mask2Former expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = (images - self.pixel_mean) / self.pixel_std
        div = self.size_divisibility
        if div > 1:
            x = F.pad(x, (0, (div - w % div) % div, 0, (div - h % div) % div))
        features = self.backbone(x)
        pixel_features, _, multi_scale = self.pixel_decoder.encode(features)
        mask_features = self.pixel_decoder.project_mask_features(pixel_features)
        out = self.predictor(multi_scale, mask_features, num_query_layers)
        stride = self.pixel_decoder.common_stride
        oh, ow = math.ceil(h / stride), math.ceil(w / stride)
        out["pred_masks"] = out["pred_masks"][..., :oh, :ow]
        for aux in out["aux_outputs"]:
            aux["pred_masks"] = aux["pred_masks"][..., :oh, :ow]
        out["mask_features"] = mask_features[..., :oh, :ow]
        out["pixel_features"] = pixel_features[..., :oh, :ow]
        return out


@dataclass
class Mask2FormerConfig:
    """Everything ``build_mask2former`` needs; defaults are the official R50 video configs.

    ``dec_layers`` counts transformer layers (9); the official yaml says ``DEC_LAYERS: 10`` because it counts
    the prediction on the initial queries. Input sizes (shorter side; longer side capped) are recorded as the
    official configs state them, for the data pipeline.
    """

    backbone: str = "resnet50"
    backbone_weights: str = ""
    backbone_norm: str = "FrozenBN"
    freeze_at: int = 0
    drop_path_rate: float = 0.3
    backbone_overrides: dict = field(default_factory=dict)
    num_classes: int = 40
    num_queries: int = 100
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9
    pre_norm: bool = False
    enforce_input_proj: bool = False
    conv_dim: int = 256
    mask_dim: int = 256
    pixel_decoder_norm: str = "GN"
    transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5")
    enc_layers: int = 6
    enc_dim_feedforward: int = 1024
    enc_n_points: int = 4
    dropout: float = 0.0
    common_stride: int = 4
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    min_size_train: tuple[int, ...] = (360, 480)
    max_size_train: int = 1333
    min_size_test: int = 360
    max_size_test: int = 1333

    @classmethod
    def tiny(cls, num_classes: int = 10, **overrides) -> Mask2FormerConfig:
        """CPU smoke scale: 96x160 frames, width-reduced ResNet (GroupNorm: trained from scratch), hidden 32,
        1 encoder layer, 3 decoder layers, 10 queries, 2 sampling points."""
        cfg = cls(
            backbone="resnet_tiny",
            backbone_norm="GN",
            drop_path_rate=0.0,
            num_classes=num_classes,
            num_queries=10,
            hidden_dim=32,
            nheads=4,
            dim_feedforward=64,
            dec_layers=3,
            conv_dim=32,
            mask_dim=32,
            enc_layers=1,
            enc_dim_feedforward=64,
            enc_n_points=2,
            min_size_train=(96,),
            max_size_train=160,
            min_size_test=96,
            max_size_test=160,
        )
        return replace(cfg, **overrides)

    @classmethod
    def full(cls, dataset: str = "ovis", **overrides) -> Mask2FormerConfig:
        """Challenge scale: Swin-L (IN-21k 384, window 12) with 200 queries, as the official Swin-L video
        configs; OVIS (25 classes, MinVIS/DVIS Swin-L OVIS input sizes) or YouTube-VIS (40 classes)."""
        sizes = {
            # MinVIS Swin-L on OVIS (as in DVIS' configs/ovis/swin/MinVIS_SwinL.yaml)
            "ovis": dict(
                num_classes=25, min_size_train=(360, 480, 600), max_size_train=1024, min_size_test=480
            ),
            # Mask2Former-VIS Swin-L on YouTube-VIS 2019/2021
            # (configs/youtubevis_2019/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml)
            "ytvis": dict(num_classes=40, min_size_train=(360, 480), max_size_train=1333, min_size_test=480),
        }
        if dataset not in sizes:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(sizes)}")
        cfg = cls(backbone="swin_l", drop_path_rate=0.3, num_queries=200, **sizes[dataset])
        return replace(cfg, **overrides)

    @classmethod
    def from_dict(cls, values: Mapping) -> Mask2FormerConfig:
        """Build from a params.yaml mapping; ``preset: tiny | full`` (+ ``dataset`` for full) is the base."""
        values = dict(values)
        preset = values.pop("preset", None)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known - ({"dataset"} if preset == "full" else set())
        if unknown:
            raise ValueError(f"unknown Mask2Former config keys {sorted(unknown)}; known: {sorted(known)}")
        for key in ("transformer_in_features", "min_size_train", "pixel_mean", "pixel_std"):
            if key in values:
                values[key] = tuple(values[key])
        if preset is None:
            return cls(**values)
        if preset == "tiny":
            return cls.tiny(**values)
        if preset == "full":
            return cls.full(values.pop("dataset", "ovis"), **values)
        raise ValueError(f"unknown preset {preset!r}; expected 'tiny' or 'full'")

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(
            name=self.backbone,
            weights=self.backbone_weights,
            norm=self.backbone_norm,
            freeze_at=self.freeze_at,
            drop_path_rate=self.drop_path_rate,
            overrides=dict(self.backbone_overrides),
        )


def build_mask2former(
    cfg: Mask2FormerConfig, encoder_hooks: Mapping[int, nn.Module] | None = None
) -> Mask2Former:
    """Backbone + pixel decoder + transformer decoder from a :class:`Mask2FormerConfig`; ``encoder_hooks``
    (``{depth: module}``) go to the pixel decoder's deformable encoder (:class:`MSDeformAttnPixelDecoder`)."""
    backbone = build_backbone(cfg.backbone_config())
    input_shapes = {k: (backbone.out_channels[k], backbone.out_strides[k]) for k in backbone.out_channels}
    pixel_decoder = MSDeformAttnPixelDecoder(
        input_shapes,
        conv_dim=cfg.conv_dim,
        mask_dim=cfg.mask_dim,
        norm=cfg.pixel_decoder_norm,
        transformer_in_features=cfg.transformer_in_features,
        enc_layers=cfg.enc_layers,
        enc_heads=cfg.nheads,
        enc_dim_feedforward=cfg.enc_dim_feedforward,
        enc_n_points=cfg.enc_n_points,
        dropout=cfg.dropout,
        common_stride=cfg.common_stride,
        encoder_hooks=encoder_hooks,
    )
    predictor = MultiScaleMaskedTransformerDecoder(
        cfg.conv_dim,
        cfg.num_classes,
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        nheads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
        dec_layers=cfg.dec_layers,
        pre_norm=cfg.pre_norm,
        mask_dim=cfg.mask_dim,
        enforce_input_project=cfg.enforce_input_proj,
    )
    return Mask2Former(
        backbone, pixel_decoder, predictor, cfg.pixel_mean, cfg.pixel_std, cfg.size_divisibility
    )


def _official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2's Mask2Former nests both heads under ``sem_seg_head``; ours sit at the top level."""
    return {(k[len("sem_seg_head.") :] if k.startswith("sem_seg_head.") else k): v for k, v in state.items()}


def load_mask2former_weights(model: Mask2Former, path) -> LoadReport:
    """Load a whole-model checkpoint (ours, or an official Mask2Former / MinVIS ``model_final_*.pkl``).

    The backbone's own key renames apply to ``backbone.*`` keys; the report lists missing / unexpected keys
    (e.g. ``criterion.empty_weight`` is unexpected; a class head of another dataset is a shape mismatch).
    """
    rename_backbone = getattr(model.backbone, "remap_checkpoint_keys", None)

    def rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = _official_names(state)
        if rename_backbone is None:
            return state
        inner = rename_backbone(
            {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        )
        rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return {**rest, **{"backbone." + k: v for k, v in inner.items()}}

    return load_weights(model, path, prefixes=("module.",), rename=rename)
