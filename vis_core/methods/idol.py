"""``idol``: IDOL (Wu et al., ECCV 2022): the per-frame Deformable-DETR segmenter of
``deformable_detr_frame`` plus a contrastive embedding trained on key/reference frame pairs, and the official
memory-bank tracker at test time.

Training (``data.sampling: pair``, two frames at most ``data.frame_range`` = 10 apart, key first): both
frames go through the shared segmenter; the key frame gets the detection losses (SimOTA; class 2, L1 5,
GIoU 2, mask focal 2, dice 5 on every decoder layer) and the reid head's embeddings of both frames get the
contrastive losses of :mod:`vis_core.modeling.heads.contrastive` (``loss_reid`` 2, ``loss_reid_aux`` 3). As
in the official code, the reference frame only provides embeddings: it has no detection loss.

Add-ons of the challenge reports, each a config sub-dict (an ablation row is a params entry):

* ``boundary``: :class:`BoundaryConfig` (default kind ``dynamic_conv``: built like IDOL's CondInst mask head,
  a controller MLP on the matched queries' embeddings -> dynamic 1x1 convs on [relative coords, mask
  features]); loss = squared dice + BCE against Laplacian boundaries of the matched GT masks at stride 4.
  Training only.
* ``quality``: :class:`QualityConfig`: two FFN layers on the matched queries' embeddings predict the IoU of
  their mask with its GT; loss ``mean (S - V)^2``. Training only unless ``use_at_test`` (class probs x S).
* ``batchformer``: :class:`BatchFormerConfig`: BatchFormerV2 on the output of the chosen Deformable-DETR encoder
  layers (``insert_idx``, default ``[0]``: after the first, the official recipe; ``-1``: after the last;
  ``placement: before`` for the report's reading), two-stream in training (every stream gets all losses, heads
  shared), the identity at test. It mixes only across clips: the key frames with each other and the reference
  frames with each other, never a key frame with its own reference frame (the official IDOL code runs the
  key and the reference frames through the transformer as two separate forward passes).

The boundary and quality losses come from :func:`vis_core.modeling.heads.addon_losses.addon_losses`, shared
with MinVIS (IDOL's own GT sampling, normaliser and empty-match zero are its parameters); the BatchFormer
blocks are the encoder hooks of :func:`vis_core.modeling.batchformer.batchformer_hooks`.

Config (``model:`` in params.yaml), flat::

    model: {preset: tiny, num_classes: 10, num_queries: 30, dataset: ovis, tracker: {memory_len: 3},
            boundary: {enabled: true}, quality: {enabled: true},
            batchformer: {enabled: true, insert_idx: [0]}}

Any :class:`DeformableDETRConfig` field may be given at the top level (or under ``overrides``); ``tracker``
holds :class:`IDOLTrackerConfig` fields overriding the defaults of ``dataset`` (``ovis``: mask NMS 0.3, births
0.3).

Inference follows :mod:`vis_core.engine.infer`: :meth:`IDOL.segment_frame` returns one frame's low-resolution
outputs (its reid embeddings as ``pred_reid``, not to be confused with the queries' ``pred_embds``) and
:meth:`IDOL.new_associator` an :class:`IDOLAssociator` that upsamples the masks of the candidate queries to the
output size and runs :class:`~vis_core.tracking.memory_bank.IDOLTracker`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from vis_core.io.config import from_dict
from vis_core.methods.detr_segmenter import DeformableDETRFrame, flatten_clip_batch
from vis_core.methods.registry import register_method
from vis_core.modeling.batchformer import BatchFormerConfig, batchformer_hooks
from vis_core.modeling.box_ops import box_cxcywh_to_xyxy
from vis_core.modeling.deformable_detr import DeformableDETRConfig, postprocess_frames
from vis_core.modeling.dynamic_mask_head import aligned_bilinear, compute_locations
from vis_core.modeling.heads.addon_losses import addon_losses
from vis_core.modeling.heads.boundary import BoundaryConfig, build_boundary_head
from vis_core.modeling.heads.contrastive import ContrastiveEmbedHead, IDOLContrastiveLoss
from vis_core.modeling.heads.quality import QualityConfig, build_quality_head, rescore
from vis_core.modeling.idol_criterion import downsample_target_masks
from vis_core.tracking.memory_bank import IDOLTracker, IDOLTrackerConfig

__all__ = ["IDOLConfig", "IDOL", "IDOLAssociator"]


def _idol_boundary() -> BoundaryConfig:
    return BoundaryConfig(kind="dynamic_conv")


@dataclass
class IDOLConfig:
    """Segmenter (``preset`` + ``num_classes`` + ``overrides``), reid loss, tracker and add-on settings."""

    preset: str = "tiny"
    num_classes: int | None = None
    overrides: dict = field(default_factory=dict)
    # contrastive embedding (official: MLP(C, C, C, 3), weights 2 and 1.5 x 2)
    reid_dim: int | None = None  # embedding width; None -> hidden_dim
    reid_weight: float = 2.0
    reid_aux_weight: float = 3.0
    pos_candidates: int = 10  # SimOTA n_candidate_k of the positives
    neg_candidates: int = 100  # negatives: outside the dynamic-k set of the top-N candidates (clamped to Q)
    aux_neg_ratio: int = 10  # negatives per positive in the auxiliary cosine loss
    # inference
    dataset: str = "ytvis"  # "ytvis" or "ovis": official tracker defaults
    tracker: dict = field(default_factory=dict)  # IDOLTrackerConfig fields overriding the dataset defaults
    # add-ons (reports 000 / 001)
    boundary: BoundaryConfig = field(default_factory=_idol_boundary)
    quality: QualityConfig = field(default_factory=QualityConfig)
    batchformer: BatchFormerConfig = field(default_factory=BatchFormerConfig)

    def __post_init__(self):
        if not self.dataset.lower().startswith(("ovis", "ytvis")):
            raise ValueError(f"dataset must be 'ovis' or 'ytvis', got {self.dataset!r}")
        known = {f.name for f in dataclasses.fields(IDOLTrackerConfig)}
        unknown = sorted(set(self.tracker) - known)
        if unknown:
            raise ValueError(f"tracker: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for name in ("pos_candidates", "neg_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping) -> IDOLConfig:
        """Own keys (typed, sub-dicts included) stay; any other key must be a :class:`DeformableDETRConfig`
        field and goes to ``overrides``. A ``boundary`` dict without ``kind`` gets IDOL's ``dynamic_conv``."""
        own = {f.name for f in dataclasses.fields(cls)}
        segmenter = {f.name for f in dataclasses.fields(DeformableDETRConfig)}
        values = dict(values)
        overrides = dict(values.pop("overrides", None) or {})
        for key in [k for k in values if k not in own]:
            if key not in segmenter:
                raise ValueError(f"unknown key {key!r} (IDOL keys: {sorted(own)}; "
                                 f"Deformable-DETR keys: {sorted(segmenter)})")
            overrides[key] = values.pop(key)
        if isinstance(values.get("boundary"), Mapping):
            values["boundary"] = {"kind": "dynamic_conv", **values["boundary"]}
        return from_dict(cls, {**values, "overrides": overrides}, "model")

    def model_config(self) -> DeformableDETRConfig:
        extra = dict(self.overrides)
        if self.num_classes is not None:
            extra["num_classes"] = self.num_classes
        return DeformableDETRConfig.preset(self.preset, **extra)

    def tracker_config(self) -> IDOLTrackerConfig:
        return IDOLTrackerConfig.for_dataset(self.dataset, **self.tracker)


def _select_frames(outputs: dict, index: slice) -> dict:
    """The segmenter outputs of a subset of the batch (every batch-first tensor, aux layers included)."""
    batch = outputs["pred_logits"].shape[0]
    out = {}
    for key, value in outputs.items():
        if key == "aux_outputs":
            out[key] = [_select_frames(layer, index) for layer in value]
        elif isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
            out[key] = value[index]
        else:
            out[key] = value
    return out


def instance_features(mask_feats: Tensor, refs: Tensor, stride: int) -> Tensor:
    """Per-instance input of a CondInst head: ``[rel coords (2), mask features (Cm)]`` as in the mask head.

    Args:
        mask_feats: ``(Cm, h, w)`` one image's stride-``stride`` features.
        refs: ``(n, 2)`` instance locations (x, y) in input pixels.
    Returns:
        ``(n, 2 + Cm, h, w)``; coordinates are instance location minus cell centre, in input pixels.
    """
    cm, h, w = mask_feats.shape
    locations = compute_locations(h, w, stride, device=mask_feats.device)  # (hw, 2)
    rel = (refs[:, None, :] - locations[None]).transpose(1, 2).reshape(-1, 2, h, w).to(mask_feats.dtype)
    return torch.cat([rel, mask_feats[None].expand(len(refs), cm, h, w)], dim=1)


@register_method("idol", config=IDOLConfig)
class IDOL(DeformableDETRFrame):
    """IDOL = :class:`DeformableDETRFrame` + reid head + contrastive loss (+ add-ons) + memory bank."""

    kind = "online"  # per-frame segmenter + memory-bank associator (vis_core.methods.base)

    def __init__(self, cfg: IDOLConfig):
        model_cfg = cfg.model_config()
        # BatchFormerV2 after the chosen encoder layers; frames_per_clip=2: the (key, ref) frames of a pair are
        # never mixed with each other, as in the official two separate transformer passes
        hooks = batchformer_hooks(cfg.batchformer, model_cfg.hidden_dim, model_cfg.enc_layers, frames_per_clip=2)
        super().__init__(model_cfg, encoder_hooks=hooks)
        self.cfg = cfg
        self.tracker_cfg = cfg.tracker_config()
        c = model_cfg.hidden_dim
        self.reid_head = ContrastiveEmbedHead(c, c, cfg.reid_dim or c)
        self.contrastive = IDOLContrastiveLoss(cfg.pos_candidates, cfg.neg_candidates, cfg.aux_neg_ratio)
        head = self.model.mask_head
        # the boundary head reads what the mask head reads: mask features (+ relative coordinates)
        self._boundary_coords = cfg.boundary.kind == "dynamic_conv" and head.rel_coord
        feat_dim = head.mask_channels + (2 if self._boundary_coords else 0)
        self.boundary_head = build_boundary_head(cfg.boundary, c, feat_dim)
        self.quality_head = build_quality_head(cfg.quality, c)

    def param_groups_key(self, name: str) -> str:
        """Backbone parameters train with ``solver.backbone_multiplier`` (0.1 in IDOL)."""
        return "backbone" if name.startswith("model.backbone.") else "default"

    # ------------------------------------------------------------------ training
    def forward(self, batch: Mapping) -> dict:
        if not self.training:
            return super().forward(batch)
        if batch["images"].dim() != 5 or batch["images"].shape[1] != 2:
            raise ValueError("idol trains on (key, reference) frame pairs (data.sampling: pair, num_frames: "
                             f"2); got batch['images'] of shape {tuple(batch['images'].shape)}")
        device = next(self.model.parameters()).device
        images, image_sizes, targets = flatten_clip_batch(batch, device)
        frames = [tgt for clip in batch["targets"] for tgt in clip]
        for i, (tgt, frame) in enumerate(zip(targets, frames, strict=True)):
            if "instance_ids" not in frame:
                raise KeyError(f"batch['targets'][{i // 2}][{i % 2}] has no field 'instance_ids'")
            tgt["instance_ids"] = frame["instance_ids"].to(device)
        outputs = self.model(images, image_sizes=image_sizes)
        k = outputs["pred_logits"].shape[0] // len(targets)
        targets = targets * k  # BatchFormerV2 two streams: frames stay clip-major (key, ref) pairs in each
        key_out, key_t, ref_t = _select_frames(outputs, slice(0, None, 2)), targets[0::2], targets[1::2]

        # detection losses on the key frames; the last layer's matching also gives the contrastive anchors
        matcher = self.criterion.matcher
        indices = [matcher(layer, key_t) for layer in key_out.get("aux_outputs", [])]
        last, anchors = matcher(key_out, key_t, return_best=True)
        indices.append(last)
        losses = self.criterion.weighted(self.criterion(key_out, key_t, indices))

        embeds = self.reid_head(outputs["pred_embds"])
        reid = self.contrastive(embeds[0::2], embeds[1::2], anchors, key_t, ref_t,
                                outputs["pred_logits"][1::2], outputs["pred_boxes"][1::2])
        losses["loss_reid"] = reid["loss_reid"] * self.cfg.reid_weight
        losses["loss_reid_aux"] = reid["loss_reid_aux"] * self.cfg.reid_aux_weight
        if self.boundary_head is not None or self.quality_head is not None:
            losses.update(self._addon_losses(key_out, key_t, last))
        return losses

    def _addon_losses(self, out: dict, targets: list[dict], indices) -> dict[str, Tensor]:
        """Weighted ``loss_boundary`` / ``loss_quality`` of the last layer's matched key-frame queries, at the
        mask stride (4), with IDOL's conventions (GT sampled as its mask losses do, local normaliser, a zero
        on all query embeddings when nothing is matched): :mod:`vis_core.modeling.heads.addon_losses`."""
        stride = self.model_cfg.mask_out_stride
        gt = torch.cat([downsample_target_masks(targets[b]["masks"][g], stride, tuple(out["mask_size"]))
                        for b, (_, g) in enumerate(indices)])

        def quality_scores() -> Tensor:  # (N,), image by image
            return torch.cat([self.quality_head(out["pred_embds"][b, q]) for b, (q, _) in enumerate(indices)])

        return addon_losses(
            torch.cat([out["pred_masks"][b, q] for b, (q, _) in enumerate(indices)]), gt,
            boundary_head=self.boundary_head, boundary_logits=lambda: self._boundary_logits(out, indices),
            boundary_cfg=self.cfg.boundary,
            quality_head=self.quality_head, quality_scores=quality_scores, quality_cfg=self.cfg.quality,
            num_masks=None, empty_match_anchor=out["pred_embds"],
        )

    def _boundary_logits(self, out: dict, indices) -> Tensor:
        """``(N, h4, w4)`` boundary logits of the matched queries, image by image (at least one matched): the
        head reads what the mask head reads (mask features, + relative coordinates for ``dynamic_conv``) and
        its output is upsampled from the feature stride to the mask stride as the masks are."""
        head = self.model.mask_head
        out_h, out_w = out["mask_size"]
        logits = []
        for b, (q, _) in enumerate(indices):
            if len(q) == 0:
                continue
            emb = out["pred_embds"][b, q]
            if self._boundary_coords:
                x = self.boundary_head(emb, instance_features(out["mask_features"][b], out["mask_refs"][b, q],
                                                              head.feat_stride))
            else:
                x = self.boundary_head(emb, out["mask_features"][b:b + 1].expand(len(q), -1, -1, -1))
            logits.append(aligned_bilinear(x[:, None], head.feat_stride // head.out_stride)[:, 0, :out_h, :out_w])
        return torch.cat(logits)

    # ------------------------------------------------------------------ inference
    def segment_frame(self, image: Tensor) -> dict[str, Tensor]:
        """One frame ``(3, H, W)`` float 0..255 -> low-resolution outputs of its Q queries::

            pred_logits (Q, K), pred_boxes (Q, 4) cxcywh normalised,
            pred_masks (Q, ceil(H/4), ceil(W/4)) logits, pred_reid (Q, D) reid embeddings (the
            contrastive head's output on the queries, which the memory bank matches),
            image_size (2,) long = (H, W) [, pred_quality (Q,) when quality.use_at_test]
        """
        return self.segment_frames(image[None])[0]

    @torch.no_grad()
    def segment_frames(self, images: Tensor) -> list[dict[str, Tensor]]:
        """:meth:`segment_frame` of ``N`` frames ``(N, 3, H, W)`` of one size, in one batched forward pass (the
        segmenter treats frames independently at test time: BatchFormerV2 is the identity there)."""
        n, _, h, w = images.shape
        out = self.model(images, image_sizes=[(h, w)] * n)
        reid = self.reid_head(out["pred_embds"])
        quality = self.quality_head(out["pred_embds"]) \
            if self.quality_head is not None and self.cfg.quality.use_at_test else None
        size = torch.tensor([h, w], dtype=torch.long)
        frames = []
        for i in range(n):
            frame = {"pred_logits": out["pred_logits"][i], "pred_boxes": out["pred_boxes"][i],
                     "pred_masks": out["pred_masks"][i], "pred_reid": reid[i], "image_size": size}
            if quality is not None:
                frame["pred_quality"] = quality[i]
            frames.append(frame)
        return frames

    def new_associator(self, output_size: tuple[int, int]) -> IDOLAssociator:
        return IDOLAssociator(IDOLTracker(self.tracker_cfg), output_size, self.model_cfg.mask_out_stride)

    @torch.no_grad()
    def predict_frames(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None,
                       output_sizes: list[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        """Per-image instances (IDOL's ``coco_inference``, top 100) for frame-level AP: ``N`` dicts of scores
        ``(k,)``, labels ``(k,)`` and bool masks ``(k, H_out, W_out)``."""
        sizes = image_sizes or [tuple(images.shape[-2:])] * images.shape[0]
        outputs = self.model(images, image_sizes=sizes)
        results = postprocess_frames(outputs, sizes, mask_stride=self.model_cfg.mask_out_stride)
        for res, size in zip(results, output_sizes or sizes, strict=True):
            if tuple(res["masks"].shape[-2:]) != tuple(size):
                resized = F.interpolate(res["masks"][None].float(), size=tuple(size), mode="nearest")
                res["masks"] = resized[0] > 0.5
        return results


class IDOLAssociator:
    """One video's association state: turns :meth:`IDOL.segment_frame` outputs into tracker input.

    Only the candidate queries (max class probability above the tracker's ``score_thresh``, or the best one
    if none) get their masks upsampled: stride-4 logits -> input resolution (``aligned_bilinear``, which keeps
    the pixel alignment of the training targets), crop of the valid area, nearest resize to ``output_size``
    (as the official post-processing). The tracker filters by the same threshold first, so the result is that
    of passing every query.
    """

    def __init__(self, tracker: IDOLTracker, output_size: tuple[int, int], mask_stride: int = 4):
        self.tracker, self.mask_stride = tracker, mask_stride
        self.output_size = tuple(int(s) for s in output_size)

    def update(self, frame: dict[str, Tensor]) -> Tensor:
        """Returns the tracker's ids ``(n,)`` of the candidate queries (-1: dropped or untracked)."""
        cfg = self.tracker.cfg
        probs = frame["pred_logits"].float().sigmoid()
        if "pred_quality" in frame:
            probs = rescore(probs, frame["pred_quality"].float(), use_at_test=True)
        scores = probs.max(dim=1).values
        cand = torch.nonzero(scores > cfg.score_thresh).squeeze(1)
        if cand.numel() == 0:
            cand = scores.argmax().view(1)
        h, w = (int(v) for v in frame["image_size"])
        masks = aligned_bilinear(frame["pred_masks"][cand][None].float(), self.mask_stride)[0, :, :h, :w]
        if (h, w) != self.output_size:
            masks = F.interpolate(masks[None], size=self.output_size, mode="nearest")[0]
        if not cfg.masks_are_logits:
            masks = masks.sigmoid()
        boxes = box_cxcywh_to_xyxy(frame["pred_boxes"][cand].float())
        return self.tracker.update(frame["pred_reid"][cand], scores[cand], probs[cand], boxes, masks)

    def record_soft_masks(self, codec) -> None:
        """Optional associator hook (multi-scale test): also keep each mask's soft encoding."""
        self.tracker.record_soft_masks(codec)

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        return self.tracker.finalize(video_id, category_ids)
