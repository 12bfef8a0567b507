"""IDOL's per-frame segmenter: Deformable DETR with iterative box refinement and a CondInst dynamic mask head.

``model(images)`` with ``images (B, 3, H, W)`` float RGB in ``0..255`` (normalised and zero-padded to a multiple of
32 inside) returns::

    pred_logits  (B, Q, K)          sigmoid class logits (focal loss; no "no object" class)
    pred_boxes   (B, Q, 4)          cxcywh, normalised by each image's unpadded size
    pred_masks   (B, Q, H/4, W/4)   mask logits at stride 4 (rounded up)
    pred_embds   (B, Q, C)          last decoder layer's query embeddings (input of IDOL's contrastive MLP)
    aux_outputs  list of D-1 dicts  pred_logits / pred_boxes (+ pred_masks when ``cfg.aux_masks``) per earlier layer
    mask_features (B, Cm, H/8, W/8), mask_params (B, Q, P), mask_refs (B, Q, 2): what the dynamic head needs to
                 predict masks for selected queries only (each aux dict carries its own params / refs too)

Architecture (as ``VNext/projects/IDOL``): backbone res3-res5 projected by 1x1 conv + GroupNorm, plus one extra
stride-64 level from a 3x3 stride-2 conv on res5 (4 levels); sine positions + a learned level embedding; 6+6
deformable layers (FFN 1024, 8 heads, 4 points); 300 queries; per-layer class / box heads (box heads refine the
reference boxes). The mask branch fuses the *encoder memory* at strides 8/16/32 into a stride-8 map (IDOL's
``MaskHeadSmallConv`` with ``fpns=None``), the dynamic head predicts at stride 8 with relative coordinates and
upsamples x2 to stride 4. Each layer's masks use that layer's *input* reference point as the instance location.

With ``encoder_hooks={d: module}`` a BatchFormerV2-style module runs on the encoder tokens after the first ``d``
encoder layers (:class:`~vis_core.modeling.deformable_transformer.EncoderHooks`); if it multiplies the batch by
``k`` the outputs have batch ``k * B`` (stream order: ``cat([x, bf(x)])``), and the targets must be tiled the same
way by the caller.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deformable_transformer import MLP, DeformableTransformer, PositionEmbeddingSine
from .dynamic_mask_head import DynamicMaskHead, aligned_bilinear

__all__ = [
    "DeformableDETRConfig",
    "DeformableDETR",
    "build_deformable_detr",
    "build_detr_backbone",
    "postprocess_frames",
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class DeformableDETRConfig:
    """Model, loss and input recipe of the IDOL segmenter. Defaults are the official ones (``idol/config.py`` and
    ``configs/*_swinL.yaml``); ``tiny()`` is the CPU smoke model, ``full(dataset)`` the challenge model."""

    num_classes: int = 40
    # backbone: a ``vis_core.modeling.backbones.build`` registry name plus further ``BackboneConfig`` fields
    # (weights, norm, freeze_at, drop_path_rate, overrides); Swin-L with drop path 0.3 as IDOL's Swin configs
    backbone: str = "swin_l"
    backbone_kwargs: dict = field(default_factory=dict)
    # transformer
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    num_queries: int = 300
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    # dynamic mask head
    mask_channels: int = 8  # IDOL: hidden_dim // 32
    dynamic_mask_channels: int = 8
    dynamic_mask_layers: int = 3
    rel_coord: bool = True
    mask_out_stride: int = 4
    aux_loss: bool = True  # deep supervision of every decoder layer
    aux_masks: bool = False  # dense aux-layer masks; False (IDOL): the criterion predicts matched queries only
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    # losses (IDOL: cfg.MODEL.IDOL.*_WEIGHT) and focal alpha
    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    mask_weight: float = 2.0
    dice_weight: float = 5.0
    focal_alpha: float = 0.25
    # input recipe, consumed by the data pipeline (shorter side choices, caps, crop range (min, max) or None)
    min_size_train: tuple[int, ...] = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)
    max_size_train: int = 768
    min_size_test: int = 480
    max_size_test: int = 1333
    crop_size: tuple[int, int] | None = (384, 600)
    sampling_frame_num: int = 2

    def __post_init__(self):
        if self.hidden_dim % self.nheads != 0:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by nheads {self.nheads}")
        if self.hidden_dim % min(32, self.hidden_dim) != 0 or self.hidden_dim < 2:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be a multiple of 32 (GroupNorm(32)) or below it")
        if self.num_feature_levels < 3:
            raise ValueError(f"num_feature_levels must be >= 3 (res3-res5 feed the mask branch), "
                             f"got {self.num_feature_levels}")
        if self.size_divisibility % 32 != 0:
            raise ValueError(f"size_divisibility must be a multiple of 32, got {self.size_divisibility}")

    def replace(self, **overrides) -> DeformableDETRConfig:
        """A copy with ``overrides``; an unknown key raises naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"DeformableDETRConfig: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def tiny(cls, **overrides) -> DeformableDETRConfig:
        """CPU smoke model for 96x160 synthetic frames (10 shape categories): tiny ResNet, hidden 32, 1 encoder +
        2 decoder layers, 20 queries, no dropout (smoke runs are a few hundred steps; dropout only slows them)."""
        base = cls(
            num_classes=10,
            backbone="resnet_tiny",
            hidden_dim=32,
            nheads=4,
            enc_layers=1,
            dec_layers=2,
            dim_feedforward=64,
            dropout=0.0,
            num_queries=20,
            enc_n_points=2,
            dec_n_points=2,
            min_size_train=(96,),
            max_size_train=160,
            min_size_test=96,
            max_size_test=160,
            crop_size=None,
        )
        return base.replace(**overrides)

    @classmethod
    def full(cls, dataset: str = "ovis", **overrides) -> DeformableDETRConfig:
        """The official Swin-L IDOL model of ``configs/{ovis,ytvis19,ytvis21}_swin*.yaml``.

        ``dataset``: ``"ovis"`` (25 classes, shorter side 480-800 with detectron2's default cap of 1333, test 720)
        or ``"ytvis19"`` / ``"ytvis21"`` (40 classes, 320-640 capped at 768, test 480).
        """
        if dataset == "ovis":
            base = cls(num_classes=25, min_size_train=tuple(range(480, 801, 32)), max_size_train=1333,
                       min_size_test=720)
        elif dataset in ("ytvis19", "ytvis21", "ytvis22"):
            base = cls(num_classes=40)
        else:
            raise ValueError(f"unknown dataset {dataset!r}; choose 'ovis', 'ytvis19', 'ytvis21' or 'ytvis22'")
        return base.replace(**overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> DeformableDETRConfig:
        """``"tiny"`` or ``"full"`` / ``"full_<dataset>"`` by name (for configs read from yaml)."""
        if name == "tiny":
            return cls.tiny(**overrides)
        if name == "full":
            return cls.full(**overrides)
        if name.startswith("full_"):
            return cls.full(name[len("full_"):], **overrides)
        raise ValueError(f"unknown DeformableDETRConfig preset {name!r}; use 'tiny', 'full' or 'full_<dataset>'")


def build_detr_backbone(cfg: DeformableDETRConfig) -> nn.Module:
    """The backbone named by ``cfg.backbone`` from the shared registry, returning res3-res5 only (IDOL feeds
    res3-res5 to the transformer; ``cfg.backbone_kwargs`` are further ``BackboneConfig`` fields)."""
    from .backbones.build import build_backbone

    values = {"name": cfg.backbone, "out_features": ("res3", "res4", "res5")}
    values.update(cfg.backbone_kwargs)
    return build_backbone(values)


class DeformableDETR(nn.Module):
    """IDOL's Deformable-DETR segmenter (see the module docstring for the output contract).

    Args:
        cfg: :class:`DeformableDETRConfig`.
        backbone: optional module ``(N, 3, H, W) -> {"res3", "res4", "res5": (N, C_l, H/s, W/s)}`` exposing
            ``out_channels`` (a dict); built from ``cfg.backbone`` when omitted.
        encoder_hooks: optional ``{encoder depth: module}`` (BatchFormerV2 insertion points).
    """

    def __init__(self, cfg: DeformableDETRConfig, backbone: nn.Module | None = None,
                 encoder_hooks: Mapping[int, nn.Module] | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_detr_backbone(cfg)
        self.in_features = ("res3", "res4", "res5")
        missing = [f for f in self.in_features if f not in self.backbone.out_channels]
        if missing:
            raise ValueError(f"backbone {cfg.backbone!r} does not provide {missing} (out_channels: "
                             f"{self.backbone.out_channels})")
        c = cfg.hidden_dim
        groups = min(32, c)
        in_chs = [self.backbone.out_channels[f] for f in self.in_features]
        projs = [nn.Sequential(nn.Conv2d(ch, c, kernel_size=1), nn.GroupNorm(groups, c)) for ch in in_chs]
        ch = in_chs[-1]
        for _ in range(cfg.num_feature_levels - len(in_chs)):
            projs.append(nn.Sequential(nn.Conv2d(ch, c, kernel_size=3, stride=2, padding=1), nn.GroupNorm(groups, c)))
            ch = c
        self.input_proj = nn.ModuleList(projs)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.position_embedding = PositionEmbeddingSine(c // 2)
        self.query_embed = nn.Embedding(cfg.num_queries, 2 * c)

        # one class head and one box head per decoder layer (box refinement clones them; IDOL)
        prior_bias = -math.log((1 - 0.01) / 0.01)
        self.class_embed = nn.ModuleList(nn.Linear(c, cfg.num_classes) for _ in range(cfg.dec_layers))
        for head in self.class_embed:
            nn.init.constant_(head.bias, prior_bias)
        self.bbox_embed = nn.ModuleList(MLP(c, c, 4, 3) for _ in range(cfg.dec_layers))
        for head in self.bbox_embed:
            nn.init.constant_(head.layers[-1].weight, 0)
            nn.init.constant_(head.layers[-1].bias, 0)
        # the first layer starts from points: bias its size towards small boxes (sigmoid(-2) = 0.12)
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)

        self.transformer = DeformableTransformer(
            d_model=c,
            nhead=cfg.nheads,
            num_encoder_layers=cfg.enc_layers,
            num_decoder_layers=cfg.dec_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            num_feature_levels=cfg.num_feature_levels,
            enc_n_points=cfg.enc_n_points,
            dec_n_points=cfg.dec_n_points,
            bbox_embed=self.bbox_embed,
            encoder_hooks=encoder_hooks,
        )
        self.mask_head = DynamicMaskHead(
            hidden_dim=c,
            mask_channels=cfg.mask_channels,
            dynamic_channels=cfg.dynamic_mask_channels,
            num_layers=cfg.dynamic_mask_layers,
            rel_coord=cfg.rel_coord,
            feat_stride=8,
            out_stride=cfg.mask_out_stride,
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def encoder(self) -> nn.Module:
        """The deformable encoder (``encoder.set_hooks({depth: module})`` installs BatchFormerV2 modules)."""
        return self.transformer.encoder

    def preprocess(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None):
        """Normalise, zero the area outside each image, pad to ``size_divisibility``.

        Returns ``(x (B, 3, Hp, Wp), padding_mask (B, Hp, Wp) bool, sizes (B, 2) long as (h, w))``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        if image_sizes is None:
            image_sizes = [(h, w)] * b
        if len(image_sizes) != b:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for a batch of {b}")
        d = self.cfg.size_divisibility
        hp, wp = math.ceil(h / d) * d, math.ceil(w / d) * d
        x = (images - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, wp - w, 0, hp - h))
        mask = torch.ones(b, hp, wp, dtype=torch.bool, device=images.device)
        for i, (ih, iw) in enumerate(image_sizes):
            if not (0 < ih <= h and 0 < iw <= w):
                raise ValueError(f"image_sizes[{i}] = {(ih, iw)} is outside the batch tensor size {(h, w)}")
            mask[i, :ih, :iw] = False
        # detectron2 pads *normalised* images with zeros: the same holds inside a collated batch
        x = x.masked_fill(mask[:, None], 0.0)
        sizes = torch.as_tensor(image_sizes, dtype=torch.long, device=images.device)
        return x, mask, sizes

    def _levels(self, feats: dict[str, Tensor], mask: Tensor):
        srcs, masks, poses = [], [], []
        for lvl in range(self.cfg.num_feature_levels):
            if lvl < len(self.in_features):
                src = self.input_proj[lvl](feats[self.in_features[lvl]])
            elif lvl == len(self.in_features):
                src = self.input_proj[lvl](feats[self.in_features[-1]])
            else:
                src = self.input_proj[lvl](srcs[-1])
            m = F.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(m)
            poses.append(self.position_embedding(m).to(src.dtype))
        return srcs, masks, poses

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> dict:
        """images: ``(B, 3, H, W)`` float 0..255 RGB; image_sizes: optional per-image valid ``(h, w)``."""
        x, pad_mask, sizes = self.preprocess(images, image_sizes)
        feats = self.backbone(x)
        srcs, masks, poses = self._levels(feats, pad_mask)
        tr = self.transformer(srcs, masks, poses, self.query_embed.weight)
        k = tr["batch_multiplier"]
        if k > 1:
            sizes = sizes.repeat(k, 1)
        hs, boxes = tr["hs"], tr["boxes"]
        logits = torch.stack([self.class_embed[lvl](hs[lvl]) for lvl in range(hs.shape[0])])

        # encoder memory of the stride-8/16/32 levels, back to maps, feeds the mask branch
        memory, shapes = tr["memory"], tr["spatial_shapes"].tolist()
        n, _, c = memory.shape
        maps, start = [], 0
        for h_l, w_l in shapes[:3]:
            maps.append(memory[:, start:start + h_l * w_l].transpose(1, 2).reshape(n, c, h_l, w_l))
            start += h_l * w_l
        mask_feats = self.mask_head.mask_features(maps)
        scale = sizes.flip(-1).to(memory.dtype)  # (w, h) per image: refs are normalised to the unpadded image
        out_h = math.ceil(images.shape[-2] / self.cfg.mask_out_stride)
        out_w = math.ceil(images.shape[-1] / self.cfg.mask_out_stride)

        layers = []
        num_layers = hs.shape[0]
        for lvl in range(num_layers):
            params = self.mask_head.params(hs[lvl])
            refs = tr["references"][lvl][..., :2] * scale[:, None, :]
            layer = {"pred_logits": logits[lvl], "pred_boxes": boxes[lvl], "mask_params": params,
                     "mask_refs": refs, "mask_features": mask_feats, "mask_size": (out_h, out_w)}
            if lvl == num_layers - 1 or self.cfg.aux_masks:
                layer["pred_masks"] = self.mask_head.batched(mask_feats, params, refs)[..., :out_h, :out_w]
            layers.append(layer)
        out = dict(layers[-1])
        out["pred_embds"] = hs[-1]
        if self.cfg.aux_loss:
            out["aux_outputs"] = layers[:-1]
        return out


def build_deformable_detr(cfg: DeformableDETRConfig | str = "tiny", backbone: nn.Module | None = None,
                          encoder_hooks: Mapping[int, nn.Module] | None = None, **overrides) -> DeformableDETR:
    """Build the segmenter from a config or a preset name (``"tiny"``, ``"full"``, ``"full_ovis"``...)."""
    if isinstance(cfg, str):
        cfg = DeformableDETRConfig.preset(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    return DeformableDETR(cfg, backbone=backbone, encoder_hooks=encoder_hooks)


@torch.no_grad()
def postprocess_frames(outputs: dict, image_sizes: list[tuple[int, int]], topk: int = 100,
                       mask_threshold: float = 0.5, mask_stride: int = 4) -> list[dict]:
    """Per-image instance predictions (IDOL's ``coco_inference``): the ``topk`` best (query, class) pairs by
    sigmoid score, each with its query's mask upsampled to the input size and thresholded.

    Args:
        outputs: the segmenter's outputs (batch B). image_sizes: B valid ``(h, w)`` of the inputs.
    Returns:
        B dicts with ``scores (n,)``, ``labels (n,)`` int64 0..K-1, ``boxes (n, 4)`` cxcywh normalised,
        ``masks (n, h, w)`` bool, ``query_idx (n,)``.
    """
    logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
    b, q, k = logits.shape
    stride = mask_stride
    results = []
    for i in range(b):
        prob = logits[i].sigmoid().flatten()
        scores, idx = prob.topk(min(topk, q * k))
        query = torch.div(idx, k, rounding_mode="floor")
        labels = idx % k
        h, w = image_sizes[i]
        # logit j sits at pixel stride * j + stride // 2 (where the targets are sampled): aligned_bilinear keeps
        # that alignment; the logits cover the padded input from its top-left corner, so crop the valid area
        m = aligned_bilinear(masks[i, query][None], stride)[0]
        m = m[:, :h, :w].sigmoid() > mask_threshold
        results.append({"scores": scores, "labels": labels, "boxes": boxes[i, query], "masks": m,
                        "query_idx": query})
    return results
