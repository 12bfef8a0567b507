"""``minvis``: MinVIS (Huang et al. 2022) plus the add-ons of the OVIS 2022 2nd place (report 001).

MinVIS is image-level Mask2Former trained frame by frame (no video-based training); the video comes only at
test time, where the query embeddings of consecutive frames are matched (Hungarian on 1 - cosine of the
L2-normalised embeddings), every query slot is a track, the video score is the softmax of the slot's averaged
logits (top-10 (slot, class) pairs) and the mask is ``logit > 0``. So the method is a small diff over
:class:`~vis_core.methods.frame_segmenter.Mask2FormerFrame`:

* training: the same segmenter and set criterion, plus three optional report-001 add-ons, each a config
  sub-dict (an ablation row is a params entry, not a code path)::

      model: {preset: tiny, num_queries: 10,
              boundary: {enabled: true},      # boundary branch, Sec. 2.1.4
              quality: {enabled: true},       # quality assessment, Sec. 2.1.5 (training only)
              batchformer: {enabled: true}}   # BatchFormerV2 in the pixel decoder, Sec. 2.1.3

  - ``boundary``: a kernel MLP on the final-layer query embeddings dotted with the mask features predicts a
    boundary map for every *matched* query; loss = squared dice + BCE against the inner edge
    ``Laplacian(GT).clamp(min=0) > T_b``,
    both at the stride-4 resolution of the mask predictions (GT masks are area-downsampled and binarised
    first so the boundary band keeps its width). Training only.
  - ``quality``: two FFN layers on the matched queries' embeddings predict ``S``; the target ``V`` is the IoU
    of the query's predicted (stride-4) mask with its GT; loss ``mean (S - V)^2``. Training only unless
    ``use_at_test`` (then the video score is multiplied by the slot's mean ``S``).
  - ``batchformer``: BatchFormerV2 on the dense tokens of the pixel decoder's deformable (MSDeformAttn)
    encoder, after the encoder layers in ``insert_idx`` (default ``[-1]``: after the last one), as the official
    code places it in Deformable-DETR's encoder (``placement: before`` is the report's "takes the same input
    as the Transformer block"; the object queries are not mixed: at the first decoder layer they are the same
    learned vectors for every frame). It mixes all ``B * T`` frames of the batch: MinVIS trains image-level,
    each frame is an independent sample of the segmenter, as the images of the official Deformable-DETR
    batch. Training runs two streams (plain and BatchFormer): the FPN step, the transformer decoder and the
    heads see ``2 B T`` samples, both supervised; at test the module is the identity.

  The add-on losses use the final layer's Hungarian matching, the criterion's own (``SetCriterion`` returns
  the matching it used; :class:`Mask2FormerFrame` hands its final layer to :meth:`MinVIS.addon_losses`), and
  are computed by :func:`vis_core.modeling.heads.addon_losses.addon_losses`, the helper IDOL uses too. Nothing
  extra draws random numbers, so the base losses are the same as without the add-ons.

* inference (the online-method protocol of :mod:`vis_core.engine.infer`): ``segment_frame`` returns the
  frame's class logits, stride-4 mask logits, query embeddings and valid input size; the associator
  (:class:`MinVISTracker`) upsamples the masks to the output size and feeds
  :class:`~vis_core.tracking.minvis_matching.MinVISAssociator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vis_core.io.config import from_dict as dataclass_from_dict
from vis_core.methods.frame_segmenter import FrameMask2FormerConfig, Mask2FormerFrame
from vis_core.methods.registry import register_method
from vis_core.modeling.batchformer import BatchFormerConfig, batchformer_hooks
from vis_core.modeling.criterion import average_over_processes
from vis_core.modeling.heads.addon_losses import addon_losses
from vis_core.modeling.heads.boundary import BoundaryConfig, build_boundary_head
from vis_core.modeling.heads.quality import QualityConfig, build_quality_head, rescore
from vis_core.tracking.minvis_matching import MinVISAssociator, softmax_drop_no_object

__all__ = ["MinVISConfig", "MinVIS", "MinVISTracker", "upsample_mask_logits", "matched_targets_at"]

_SUB_CONFIGS = {"boundary": BoundaryConfig, "quality": QualityConfig, "batchformer": BatchFormerConfig}


@dataclass
class MinVISConfig(FrameMask2FormerConfig):
    """:class:`FrameMask2FormerConfig` (segmenter + criterion keys, flat) plus the report-001 add-ons and the
    MinVIS test-time keys (``topk`` video instances, ``mask_threshold`` on mask logits)."""

    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    batchformer: BatchFormerConfig = field(default_factory=lambda: BatchFormerConfig(insert_idx=[-1]))
    topk: int = 10
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.quality.use_at_test and not self.quality.enabled:
            raise ValueError("quality.use_at_test needs quality.enabled (the head is trained with it)")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")

    @classmethod
    def from_dict(cls, values: Mapping) -> MinVISConfig:
        """Flat keys as :meth:`FrameMask2FormerConfig.from_dict`; ``boundary`` / ``quality`` / ``batchformer``
        are sub-dicts of their configs. A ``batchformer`` dict without ``insert_idx`` inserts the block after
        the last pixel-decoder encoder layer (``[-1]``)."""
        values = dict(values)
        subs = {}
        for key, sub_cls in _SUB_CONFIGS.items():
            given = values.pop(key, None)
            if isinstance(given, sub_cls):
                subs[key] = given
                continue
            given = dict(given or {})
            if key == "batchformer":
                given.setdefault("insert_idx", [-1])  # after the last pixel-decoder encoder layer
            subs[key] = dataclass_from_dict(sub_cls, given, key)
        cfg = super().from_dict(values)  # FrameMask2FormerConfig's checks of the flat keys
        return dataclasses.replace(cfg, **subs)


def upsample_mask_logits(
    mask_logits: Tensor, image_size: Sequence[int], output_size: Sequence[int], stride: int = 4
) -> Tensor:
    """Mask2Former / MinVIS post-processing of one frame's mask logits.

    Args:
        mask_logits: ``(Q, h4, w4)`` at ``stride`` of the (padded) segmenter input.
        image_size: ``(h, w)`` valid (unpadded) input region. output_size: ``(H, W)``.
    Returns:
        ``(Q, H, W)`` float logits: bilinear to the stride canvas, crop to ``(h, w)``, bilinear to the output.
    """
    h, w = (int(s) for s in image_size)
    canvas = (mask_logits.shape[-2] * stride, mask_logits.shape[-1] * stride)
    x = F.interpolate(mask_logits[None].float(), size=canvas, mode="bilinear", align_corners=False)
    x = x[..., :h, :w]
    if tuple(output_size) != (h, w):
        x = F.interpolate(x, size=tuple(int(s) for s in output_size), mode="bilinear", align_corners=False)
    return x[0]


def matched_targets_at(
    targets: list[dict], indices: list[tuple[Tensor, Tensor]], size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Matched (image, query) pairs and their GT masks at ``size``.

    Args:
        targets: per-image dicts with ``masks (N_b, H, W)`` bool, H and W multiples of ``size``'s stride.
        indices: per image ``(query_idx, target_idx)`` from the matcher.
        size: ``(h4, w4)`` of the mask predictions.
    Returns:
        ``batch_idx (N,)``, ``query_idx (N,)`` int64 and ``gt (N, h4, w4)`` float 0/1: the GT mask
        area-downsampled and binarised at 0.5 (a stride-4 cell is foreground when mostly covered).
    """
    device = targets[0]["masks"].device if targets else torch.device("cpu")
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([src for src, _ in indices]).to(device)
    gts = [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices, strict=True)]
    gt = torch.cat(gts) if gts else torch.zeros(0, *size, device=device)
    if gt.shape[0] == 0:
        return batch_idx, query_idx, gt.new_zeros((0, *size), dtype=torch.float32)
    gt = F.interpolate(gt[:, None].float(), size=size, mode="area")[:, 0]
    return batch_idx, query_idx, (gt >= 0.5).float()


@register_method("minvis", config=MinVISConfig)
class MinVIS(Mask2FormerFrame):
    """MinVIS: per-frame Mask2Former training (+ report-001 add-ons), query-matching inference.

    Kind ``online``: per-frame segmenter + query matching to the previous frame (vis_core.methods.base).

    Args:
        cfg: :class:`MinVISConfig`.

    Train mode: ``method(batch)`` -> the criterion's weighted losses plus ``loss_boundary`` / ``loss_quality``
    when enabled. Eval mode: the segmenter's outputs for the ``B * T`` frames (as ``mask2former_frame``).
    """

    kind = "online"

    def __init__(self, cfg: MinVISConfig):
        seg = cfg.segmenter_config()
        # BatchFormerV2 on the pixel-decoder tokens; every frame of the batch is a sample (frames_per_clip=1)
        super().__init__(cfg, encoder_hooks=batchformer_hooks(cfg.batchformer, seg.conv_dim, seg.enc_layers))
        self.boundary_head = build_boundary_head(cfg.boundary, seg.hidden_dim, seg.mask_dim)
        self.quality_head = build_quality_head(cfg.quality, seg.hidden_dim)

    # ------------------------------------------------------------------ training
    def addon_losses(self, outputs: dict, targets: list[dict], indices: list) -> dict[str, Tensor]:
        """Weighted ``loss_boundary`` / ``loss_quality`` on the matched queries of the final layer (the training
        step is :meth:`Mask2FormerFrame.forward`, which passes the criterion's final-layer matching).

        Args:
            outputs: segmenter outputs (``pred_masks (B', Q, h4, w4)``, ``pred_embds (B', Q, C)``,
                ``mask_features (B', C_m, h4, w4)`` with ``B' = k * B`` under BatchFormer: each stream's own).
            targets: ``B'`` per-frame targets. indices: final-layer matching, one pair per frame.
        """
        if self.boundary_head is None and self.quality_head is None:
            return {}  # no GT resizing, no normaliser all-reduce
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx, gt = matched_targets_at(targets, indices, tuple(pred_masks.shape[-2:]))
        embeds = outputs["pred_embds"][batch_idx, query_idx]  # (N, C)

        def boundary_logits() -> Tensor:  # (N, h4, w4): the query kernels dotted with the mask features
            return self.boundary_head(embeds, outputs["mask_features"], batch_index=batch_idx)

        return addon_losses(
            pred_masks[batch_idx, query_idx], gt,
            boundary_head=self.boundary_head, boundary_logits=boundary_logits, boundary_cfg=self.cfg.boundary,
            quality_head=self.quality_head, quality_scores=lambda: self.quality_head(embeds),
            quality_cfg=self.cfg.quality,
            num_masks=average_over_processes(sum(len(t["labels"]) for t in targets), pred_masks.device),
        )

    # ------------------------------------------------------------------ inference
    @property
    def quality_at_test(self) -> bool:
        return self.quality_head is not None and self.cfg.quality.use_at_test

    @torch.no_grad()
    def segment_frame(self, image: Tensor) -> dict[str, Tensor]:
        """One frame ``(3, h, w)`` float 0..255 -> low-resolution outputs: ``pred_logits (Q, K+1)``,
        ``pred_masks (Q, h4, w4)`` (stride-4 logits), ``pred_embds (Q, C)``, ``image_size (2,)`` = (h, w)
        and, with ``quality.use_at_test``, ``pred_quality (Q,)``."""
        return self.segment_frames(image[None])[0]

    @torch.no_grad()
    def segment_frames(self, images: Tensor) -> list[dict[str, Tensor]]:
        """:meth:`segment_frame` of ``N`` frames ``(N, 3, h, w)`` of one size, in one batched forward pass (the
        segmenter treats frames independently: no batch statistics at test time)."""
        out = self.segmenter(images)
        size = torch.tensor(images.shape[-2:])
        quality = self.quality_head(out["pred_embds"]) if self.quality_at_test else None
        frames = []
        for i in range(images.shape[0]):
            frame = {"pred_logits": out["pred_logits"][i], "pred_masks": out["pred_masks"][i],
                     "pred_embds": out["pred_embds"][i], "image_size": size}
            if quality is not None:
                frame["pred_quality"] = quality[i]
            frames.append(frame)
        return frames

    def new_associator(self, output_size: tuple[int, int]) -> MinVISTracker:
        return MinVISTracker(
            self.segmenter.num_queries, output_size, self.cfg.topk, self.cfg.mask_threshold,
            self.segmenter_cfg.common_stride, use_quality=self.quality_at_test,
        )


class MinVISTracker:
    """Runner-side MinVIS associator of one video: upsamples every frame's mask logits to ``output_size`` and
    feeds :class:`MinVISAssociator` (which thresholds and writes RLEs at once).

    Args:
        num_queries: Q (every query slot is a track). output_size: ``(H, W)`` of the results masks.
        topk, mask_threshold: MinVIS test keys (10, 0). stride: mask-logit stride (4).
        use_quality: multiply each slot's video class scores by its mean predicted quality ``S``.
    """

    def __init__(
        self, num_queries: int, output_size: Sequence[int], topk: int = 10, mask_threshold: float = 0.0,
        stride: int = 4, use_quality: bool = False,
    ):
        self.associator = MinVISAssociator(num_queries, topk=topk, mask_threshold=mask_threshold)
        self.output_size = tuple(int(s) for s in output_size)
        self.stride = stride
        self.use_quality = use_quality
        self.quality_sum: Tensor | None = None  # (Q,) per slot, in track order

    def update(self, frame_out: Mapping[str, Tensor]) -> Tensor:
        """Consume one frame of :meth:`MinVIS.segment_frame`; returns the slot permutation."""
        masks = upsample_mask_logits(
            frame_out["pred_masks"], frame_out["image_size"].tolist(), self.output_size, self.stride
        )
        perm = self.associator.update(frame_out["pred_embds"], frame_out["pred_logits"], masks)
        if self.use_quality:
            quality = frame_out["pred_quality"][perm].detach().to("cpu", torch.float64)
            self.quality_sum = quality if self.quality_sum is None else self.quality_sum + quality
        return perm

    def record_soft_masks(self, codec) -> None:
        """Optional associator hook (multi-scale test): also keep each slot's soft mask encoding."""
        self.associator.record_soft_masks(codec)

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        if not self.use_quality or self.quality_sum is None:
            return self.associator.finalize(video_id, category_ids)
        quality = self.quality_sum / self.associator.num_frames

        def video_scores(mean_logits: np.ndarray) -> np.ndarray:
            # tracks are stored in slot order (slot j was created as track j on the first frame)
            probs = torch.from_numpy(softmax_drop_no_object(mean_logits))
            return rescore(probs, quality, use_at_test=True).numpy()

        return self.associator.store.finalize(
            video_id, category_ids, topk=self.associator.topk, transform=video_scores
        )
