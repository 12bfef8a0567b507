"""``dvis_online``: DVIS's online stage (Zhang et al. 2023) with the DVIS++ noiser (report 002), a small diff
over the shared Mask2Former segmenter (:class:`~vis_core.methods.frame_segmenter.Mask2FormerFrame`).

Config (``model:`` in params.yaml): the flat segmenter / criterion keys of ``mask2former_frame`` plus::

    model: {preset: tiny, num_classes: 10, num_queries: 10,
            tracker_layers: 3, tracker_heads: 4,          # official: 6 layers, 8 heads, FFN 2048
            noise: {mode: wa, ratio: 0.5, partner: permutation},   # none | rs | wa | cc
            guidance_iters: 20000}                        # official: MAX_ITER / 2

Training (the online stage of DVIS's three: segmenter -> online -> offline):

* the segmenter is frozen: ``requires_grad_(False)``, always in eval mode, run under ``no_grad``; it starts
  trained from the family's ``mask2former_frame`` pre-training (``init_weights``, :meth:`load_pretrained`);
* the :class:`~vis_core.modeling.dvis_tracker.ReferringTracker` runs frame by frame over the clip, with the
  :class:`~vis_core.tracking.noiser.Noiser` on layer 0 (never on frame 0);
* consistent matching (``VideoHungarianMatcher_Consistent``): each GT instance of the clip is matched once,
  at its first visible frame, among the tracker slots not yet taken, with the Mask2Former cost on that
  frame's predictions; the assignment holds for the whole clip, and on frames where the object is absent
  the slot's target is its class with an empty mask;
* early guidance: while fewer than ``guidance_iters`` training forward calls have run (counted in the
  ``train_iters`` buffer, so the count survives checkpoints) the matching reads the *segmenter's* outputs
  reordered by the tracker's layer-0 indices, the same matching for every tracker layer; afterwards every
  layer is matched on its own outputs (the official ``matcher_outputs`` switch);
* losses: CE 2 / mask BCE 5 / dice 5 (point-sampled), no-object 0.1, on every tracker layer.

Deviation (documented): the official criterion is per video (masks ``(N, T, H, W)``, normaliser = the
number of video instances); here every frame is an image of the project's :class:`SetCriterion` under the
clip's consistent matching (normaliser = the matched (frame, instance) pairs, each absent-frame target
included). The sampled points are drawn per frame rather than per video.

Inference (kind ``online``): ``segment_frame(s)`` = the segmenter's per-frame outputs (plus
``mask_features``); :class:`DVISAssociator` runs the tracker frame by frame (the official ``resume=True``),
keeps slot ``i`` as track ``i``, writes masks ``logit > 0`` (upsampled as MinVIS) as RLE through
:class:`~vis_core.tracking.track_state.TrackStore` at once; video score = softmax of the slot's logits
averaged over T, top-k (slot, class) pairs (as MinVIS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vis_core.io.config import from_dict as dataclass_from_dict
from vis_core.methods.frame_segmenter import FrameMask2FormerConfig, Mask2FormerFrame, clip_batch_to_frames
from vis_core.methods.minvis import upsample_mask_logits
from vis_core.methods.registry import register_method
from vis_core.modeling.dvis_tracker import ReferringTracker, TrackerState
from vis_core.modeling.matcher import HungarianMatcher
from vis_core.tracking.minvis_matching import softmax_drop_no_object, write_slot_frame
from vis_core.tracking.noiser import NoiseConfig, Noiser
from vis_core.tracking.track_state import TrackStore

__all__ = ["DVISOnlineConfig", "DVISOnline", "DVISAssociator", "clip_video_targets", "consistent_match"]


@dataclass
class DVISOnlineConfig(FrameMask2FormerConfig):
    """:class:`FrameMask2FormerConfig` (segmenter + criterion, flat) plus the tracker (``tracker_layers``,
    ``tracker_heads``, ``tracker_ffn``: None = the segmenter's ``dim_feedforward``; C is the segmenter's
    ``hidden_dim``), ``noise`` (:class:`NoiseConfig`), ``guidance_iters`` and the test keys."""

    tracker_layers: int = 3
    tracker_heads: int = 4
    tracker_ffn: int | None = None
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    guidance_iters: int = 0
    topk: int = 10
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.tracker_layers < 1 or self.topk < 1 or self.guidance_iters < 0:
            raise ValueError("tracker_layers and topk must be >= 1, guidance_iters >= 0")

    @classmethod
    def from_dict(cls, values: Mapping) -> DVISOnlineConfig:
        """Flat keys as :meth:`FrameMask2FormerConfig.from_dict`; ``noise`` is a sub-dict."""
        values = dict(values)
        noise = values.pop("noise", None)
        if not isinstance(noise, NoiseConfig):
            noise = dataclass_from_dict(NoiseConfig, dict(noise or {}), "noise")
        return dataclasses.replace(super().from_dict(values), noise=noise)


def clip_video_targets(batch: Mapping, stride: int) -> list[dict[str, Tensor]]:
    """Per video of a ``collate_clips`` batch: every instance of the clip in every frame.

    Returns:
        ``B`` dicts: ``labels (N,)`` int64, ``masks (N, T, H', W')`` bool (empty where the instance is absent;
        padded to the stride canvas as :func:`clip_batch_to_frames`), ``first (N,)`` its first visible frame.
        Instances are identified by the frames' ``instance_ids`` (without them, position ``i`` of every
        frame is instance ``i``) and ordered by first appearance.
    """
    _, frames = clip_batch_to_frames(batch, stride)
    b, t = len(batch["targets"]), len(batch["targets"][0])
    videos = []
    for v in range(b):
        ids, labels, slots = [], [], {}
        per_frame = []
        for f in range(t):
            raw, tgt = batch["targets"][v][f], frames[v * t + f]
            fid = raw.get("instance_ids", torch.arange(len(tgt["labels"])))
            per_frame.append((fid.tolist(), tgt))
            for i, key in enumerate(fid.tolist()):
                if key not in slots:
                    slots[key] = len(ids)
                    ids.append((key, f))
                    labels.append(int(tgt["labels"][i]))
        h, w = frames[v * t]["masks"].shape[-2:]
        masks = torch.zeros(len(ids), t, h, w, dtype=torch.bool, device=batch["images"].device)
        for f, (fid, tgt) in enumerate(per_frame):
            for i, key in enumerate(fid):
                masks[slots[key], f] = tgt["masks"][i]
        videos.append({"labels": torch.tensor(labels, dtype=torch.int64, device=masks.device), "masks": masks,
                       "first": torch.tensor([f for _, f in ids], dtype=torch.int64)})
    return videos


@torch.no_grad()
def consistent_match(
    logits: Tensor, masks: Tensor, video: Mapping[str, Tensor], matcher: HungarianMatcher
) -> tuple[Tensor, Tensor]:
    """First-appearance matching of one video (DVIS ``VideoHungarianMatcher_Consistent``).

    Args:
        logits: ``(T, Q, K+1)``, masks: ``(T, Q, h, w)`` the outputs matched on. video: a
            :func:`clip_video_targets` entry.
    Returns:
        ``(query_idx, target_idx)`` int64 CPU, sorted by query: each instance matched once, at its first
        visible frame, among the slots no earlier instance took (Mask2Former cost on that frame).
    """
    taken = torch.zeros(logits.shape[1], dtype=torch.bool)
    rows, cols = [], []
    for f in range(logits.shape[0]):
        new = (video["first"] == f).nonzero().flatten()
        free = (~taken).nonzero().flatten()
        if len(new) == 0 or len(free) == 0:
            continue
        cost = matcher.cost_matrix(logits[f][free.to(logits.device)], masks[f][free.to(masks.device)],
                                   video["labels"][new.to(video["labels"].device)],
                                   video["masks"][new.to(video["masks"].device), f])
        r, c = linear_sum_assignment(cost.cpu().numpy())
        taken[free[r]] = True
        rows.append(free[r])
        cols.append(new[c])
    if not rows:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone()
    q, g = torch.cat(rows), torch.cat(cols)
    order = q.argsort()
    return q[order], g[order]


@register_method("dvis_online", config=DVISOnlineConfig)
class DVISOnline(Mask2FormerFrame):
    """DVIS online: frozen Mask2Former segmenter + referring tracker (+ DVIS++ noiser).

    Args:
        cfg: :class:`DVISOnlineConfig`.

    Train mode: ``method(batch)`` -> the weighted tracker losses (``loss_ce``, ``loss_mask``, ``loss_dice``
    of the final layer, ``_i`` suffixes for layer ``i``). Eval mode: the final tracker layer's
    ``pred_logits (B*T, Q, K+1)`` and ``pred_masks (B*T, Q, h4, w4)``, clip-major.
    """

    kind = "online"

    def __init__(self, cfg: DVISOnlineConfig):
        super().__init__(cfg)
        seg = self.segmenter_cfg
        self.tracker = ReferringTracker(
            seg.hidden_dim, seg.num_classes, seg.mask_dim, cfg.tracker_layers, cfg.tracker_heads,
            cfg.tracker_ffn or seg.dim_feedforward,
        )
        self.noiser = Noiser(cfg.noise)
        # training forward calls so far (early guidance); a buffer, so it is saved with the model
        self.register_buffer("train_iters", torch.zeros((), dtype=torch.int64))
        self.segmenter.requires_grad_(False)  # the online stage trains the tracker only
        self.segmenter.eval()

    def train(self, mode: bool = True) -> DVISOnline:
        """The segmenter stays in eval mode (frozen, as the official ``segmenter.eval()``)."""
        super().train(mode)
        self.segmenter.eval()
        return self

    def param_groups_key(self, name: str) -> str:
        return "default"  # the frozen backbone has no trainable parameters

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def run_segmenter(self, images: Tensor) -> dict[str, Tensor]:
        """Frozen segmenter on ``(B, T, 3, H, W)`` -> ``pred_logits (B, T, Q, K+1)``, ``pred_masks
        (B, T, Q, h4, w4)``, ``pred_embds (B, T, Q, C)``, ``mask_features (B, T, C_m, h4, w4)``."""
        b, t = images.shape[:2]
        out = self.segmenter(images.flatten(0, 1))
        keys = ("pred_logits", "pred_masks", "pred_embds", "mask_features")
        return {k: out[k].unflatten(0, (b, t)) for k in keys}

    def forward(self, batch: Mapping) -> dict[str, Tensor]:
        seg = self.run_segmenter(batch["images"])
        track = self.tracker(seg["pred_embds"], seg["mask_features"], self.noiser)
        if not self.training:
            return {"pred_logits": track["pred_logits"][-1].flatten(0, 1),
                    "pred_masks": track["pred_masks"][-1].flatten(0, 1)}
        guided = bool(self.train_iters < self.cfg.guidance_iters)
        self.train_iters += 1
        videos = clip_video_targets(batch, self.segmenter_cfg.common_stride)
        return self.tracker_losses(track, seg, videos, guided)

    def layer_indices(self, logits: Tensor, masks: Tensor, videos: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Consistent matching of ``logits (B, T, Q, K+1)`` / ``masks (B, T, Q, h, w)``, repeated for each
        of the ``T`` frames of every video (clip-major: the criterion's ``B * T`` images)."""
        out = []
        for v, video in enumerate(videos):
            pair = consistent_match(logits[v], masks[v], video, self.criterion.matcher)
            out.extend([pair] * logits.shape[1])
        return out

    def tracker_losses(self, track: dict, seg: dict, videos: list[dict], guided: bool) -> dict[str, Tensor]:
        """Weighted losses of every tracker layer under the consistent matching (module docstring)."""
        num_layers, t = track["pred_logits"].shape[0], track["pred_logits"].shape[2]
        targets = [{"labels": v["labels"], "masks": v["masks"][:, f]} for v in videos for f in range(t)]
        layers = [{"pred_logits": track["pred_logits"][j].flatten(0, 1),
                   "pred_masks": track["pred_masks"][j].flatten(0, 1)} for j in range(num_layers)]
        if not self.cfg.deep_supervision:
            layers = layers[-1:]
        if guided:  # the segmenter's outputs in the tracker's slot order, one matching for all layers
            idx = track["indices"]  # (B, T, Q)
            logits = torch.gather(seg["pred_logits"], 2, idx[..., None].expand_as(seg["pred_logits"]))
            masks = torch.gather(seg["pred_masks"], 2, idx[..., None, None].expand_as(seg["pred_masks"]))
            indices = [self.layer_indices(logits, masks, videos)] * len(layers)
        else:
            shape = track["pred_logits"].shape[1:3]
            indices = [self.layer_indices(lay["pred_logits"].detach().unflatten(0, shape),
                                          lay["pred_masks"].detach().unflatten(0, shape), videos)
                       for lay in layers]
        outputs = {**layers[-1], "aux_outputs": layers[:-1]}
        return self.criterion(outputs, targets, indices=indices)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def segment_frame(self, image: Tensor) -> dict[str, Tensor]:
        """One frame ``(3, h, w)`` -> ``pred_logits (Q, K+1)``, ``pred_masks (Q, h4, w4)``, ``pred_embds
        (Q, C)``, ``mask_features (C_m, h4, w4)``, ``image_size (2,)``."""
        return self.segment_frames(image[None])[0]

    @torch.no_grad()
    def segment_frames(self, images: Tensor) -> list[dict[str, Tensor]]:
        """:meth:`segment_frame` of ``N`` frames ``(N, 3, h, w)`` in one batched pass."""
        out = self.segmenter(images)
        size = torch.tensor(images.shape[-2:])
        keys = ("pred_logits", "pred_masks", "pred_embds", "mask_features")
        return [{**{k: out[k][i] for k in keys}, "image_size": size} for i in range(images.shape[0])]

    def new_associator(self, output_size: tuple[int, int]) -> DVISAssociator:
        return DVISAssociator(self.tracker, output_size, self.cfg.topk, self.cfg.mask_threshold,
                              self.segmenter_cfg.common_stride)


class DVISAssociator:
    """One video's online DVIS inference: the tracker frame by frame (resumed state), slot ``i`` = track ``i``.

    Args:
        tracker: the trained :class:`ReferringTracker` (its mode is left alone; in eval it never noises).
        output_size: ``(H, W)`` of the result masks. topk, mask_threshold, stride: as MinVIS (10, 0, 4).
    """

    def __init__(self, tracker: ReferringTracker, output_size: Sequence[int], topk: int = 10,
                 mask_threshold: float = 0.0, stride: int = 4):
        self.tracker = tracker
        self.output_size = tuple(int(s) for s in output_size)
        self.topk, self.mask_threshold, self.stride = topk, mask_threshold, stride
        self.store = TrackStore()
        self.state: TrackerState | None = None

    @torch.no_grad()
    def update(self, frame_out: Mapping[str, Tensor]) -> Tensor:
        """Consume one frame of :meth:`DVISOnline.segment_frame`; returns the layer-0 order ``(Q,)``."""
        outputs, indices, self.state = self.tracker.frame_forward(frame_out["pred_embds"][None], self.state)
        logits, masks = self.tracker.predict(outputs[-1], frame_out["mask_features"][None])
        masks = upsample_mask_logits(masks[0], frame_out["image_size"].tolist(), self.output_size, self.stride)
        write_slot_frame(self.store, masks, logits[0], self.mask_threshold)
        return indices[0]

    def record_soft_masks(self, codec) -> None:
        """Optional associator hook (multi-scale test): also keep each slot's soft mask encoding."""
        self.store.record_soft_masks(codec)

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        """Top-k (slot, class) entries by the softmax of the slot's mean logits (no-object dropped)."""
        return self.store.finalize(video_id, category_ids, topk=self.topk, transform=softmax_drop_no_object)
