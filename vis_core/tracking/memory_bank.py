"""IDOL inference-time tracker: memory bank of instance embeddings + bi-softmax association.

Re-implements the official IDOL inference (VNext ``projects/IDOL/idol/idol.py::IDOL.inference`` and
``models/tracker.py::IDOL_Tracker`` with ``INFERENCE_TW = INFERENCE_FW = True``, ``MEMORY_LEN = 3``):

* detections: ``select_detections`` (score > 0.1, class-aware box NMS 0.9, mask NMS 0.5 / 0.3 for OVIS);
* memory: each track keeps its last ``memory_len`` embeddings; its query embedding is their average weighted
  by detection score + a linear temporal ramp (1/n, 2/n, ..., 1 from oldest to newest);
* similarity: bi-softmax of raw dot products, f = (softmax over tracks + softmax over detections) / 2;
* age weighting: if a detection has f > 0.5 with several tracks, those entries are multiplied by the
  tracks' existence length (frames matched) and the other entries by its mean before the argmax;
* greedy assignment in decreasing detection score: best track if weighted score > 0.5, then that track's
  column is zeroed for the remaining detections;
* births: unmatched detections with score > 0.2 (``new_score_thresh``; 0.3 for OVIS) get new ids (when the
  memory is empty the threshold is ``init_score_thresh`` = 0.2);
* death: a track not matched for ``max_missed_frames`` (10) frames leaves the memory;
* output clean-up (official, from frame index 9 on): a track's output is dropped when it is absent in the
  current and previous frame and has fewer than 3 matched frames; the tracker itself keeps the track, and a
  later match starts a fresh output entry (exactly as the official ``video_dict`` handling);
* video class score: mean of the per-frame class probabilities over the frames where the track is present;
  every class with mean > 0.05 gives one results entry.

The backdrop bookkeeping of the official tracker (ids -1 vs -2, ``nms_thr_post``) never reaches the output
and the box velocity is unused at inference, so neither is reproduced.

The tracker is a pure function of the sequence of per-frame inputs: streaming and hold-all inference give
identical results. Memory holds ``memory_len`` embeddings per live track plus the RLE output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from vis_core.data.ytvis import masks_to_rles
from vis_core.tracking.nms import select_detections
from vis_core.tracking.soft_masks import SoftMaskCodec
from vis_core.tracking.track_state import TrackStore

__all__ = ["IDOLTrackerConfig", "IDOLTracker", "bisoftmax_similarity", "greedy_assign", "build_idol_tracker"]


@dataclass
class IDOLTrackerConfig:
    """Thresholds of IDOL inference; defaults are the official YouTube-VIS values."""

    score_thresh: float = 0.1  # INFERENCE_SELECT_THRES: keep queries with max class prob above this
    box_nms_thresh: float = 0.9  # class-aware box NMS before tracking
    mask_nms_thresh: float = 0.5  # NMS_PRE (0.3 for OVIS)
    init_score_thresh: float = 0.2  # births while the memory is empty
    new_score_thresh: float = 0.2  # ADD_NEW_SCORE: births otherwise (0.3 for OVIS)
    match_thresh: float = 0.5  # bi-softmax score needed to join a track (also the age-weighting trigger)
    memory_len: int = 3  # MEMORY_LEN: embeddings kept per track
    use_memory_bank: bool = True  # INFERENCE_TW: match against the bank average, else a momentum embedding
    temporal_weight: bool = True  # INFERENCE_TW: add the linear temporal ramp to the bank weights
    frame_weight: bool = True  # INFERENCE_TW | INFERENCE_FW: age weighting of ambiguous matches
    memo_momentum: float = 0.8  # momentum embedding (only when use_memory_bank is False)
    max_missed_frames: int = 10  # memo_tracklet_frames: death after this many frames without a match
    cleanup_after_frame: int = 8  # output clean-up runs for frame indices > this
    cleanup_min_frames: int = 3  # ... and drops absent tracks with fewer matched frames than this
    class_score_thresh: float = 0.05  # APPLY_CLS_THRES: every (track, class) above it is emitted
    masks_are_logits: bool = True  # update() masks: logits (binarised at > 0) or probabilities (> 0.5)

    @classmethod
    def for_dataset(cls, name: str, **overrides) -> IDOLTrackerConfig:
        """Official per-dataset defaults ("ytvis*" or "ovis"), then ``overrides``."""
        cfg = cls()
        if name.lower().startswith("ovis"):
            cfg = replace(cfg, mask_nms_thresh=0.3, new_score_thresh=0.3)
        return replace(cfg, **overrides)


def bisoftmax_similarity(det_embeds: torch.Tensor, memo_embeds: torch.Tensor) -> torch.Tensor:
    """(N, C) x (M, C) -> (N, M): mean of the softmax over tracks and the softmax over detections of the
    raw dot products (IDOL's embeddings are trained with a dot-product contrastive loss, not cosine)."""
    feats = det_embeds.float() @ memo_embeds.float().T
    return (feats.softmax(dim=1) + feats.softmax(dim=0)) / 2


def greedy_assign(
    sim: np.ndarray, track_age: np.ndarray, match_thresh: float = 0.5, frame_weight: bool = True
) -> np.ndarray:
    """IDOL's greedy detection -> track assignment.

    Args:
        sim: (N, M) bi-softmax scores, rows in decreasing detection score. Modified in place.
        track_age: (M,) number of frames each track has been matched (``exist_frame``).
    Returns:
        (N,) int: matched track column per detection, -1 when unmatched.
    """
    n = sim.shape[0]
    cols = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        row = sim[i]
        above = row > match_thresh
        if frame_weight and above.sum() > 1:
            # Several plausible tracks: favour the longer-lived one (guards against a young duplicate).
            row = row * np.where(above, track_age, track_age[above].mean())
        j = int(row.argmax())
        if row[j] > match_thresh:
            cols[i] = j
            sim[:, j] = 0  # one detection per track
    return cols


class IDOLTracker:
    """Online IDOL association; call ``update`` once per frame, then ``finalize``.

    State per live track: ids (M,), embedding bank (M, L, C) right-aligned (newest last), bank scores (M, L),
    bank fill (M,), matched-frame count (M,), last matched frame (M,), momentum embedding (M, C).
    """

    def __init__(self, cfg: IDOLTrackerConfig | None = None):
        self.cfg = cfg or IDOLTrackerConfig()
        if self.cfg.memory_len < 1:
            raise ValueError(f"IDOLTrackerConfig.memory_len must be >= 1, got {self.cfg.memory_len}")
        self.store = TrackStore()
        self.next_id = 0
        self._bank: dict[str, torch.Tensor] | None = None
        self._fragile: set[int] = set()  # output tracks still below cleanup_min_frames

    # ------------------------------------------------------------------ memory
    @property
    def frame_idx(self) -> int:
        """Index of the next frame to be processed."""
        return self.store.num_frames

    @property
    def live_track_ids(self) -> list[int]:
        """Ids currently in the memory (matchable), in creation order."""
        return [] if self._bank is None else self._bank["ids"].tolist()

    def memory_embeddings(self) -> torch.Tensor:
        """(M, C) embedding each live track is matched with."""
        bank = self._bank
        if not self.cfg.use_memory_bank:
            return bank["momentum"]
        length = bank["embeds"].shape[1]
        fill = bank["fill"].to(bank["scores"].dtype)[:, None]  # (M, 1)
        pos = torch.arange(length, device=fill.device, dtype=fill.dtype)[None]  # (1, L)
        rank = pos - (length - fill) + 1  # 1..n over the filled slots, oldest first
        valid = rank > 0
        weights = bank["scores"].clone()
        if self.cfg.temporal_weight:
            weights = weights + rank / fill
        weights = torch.where(valid, weights, torch.zeros_like(weights))
        total = weights.sum(1, keepdim=True).clamp(min=1e-12)
        return (bank["embeds"] * weights[..., None]).sum(1) / total

    def _update_bank(self, cols: torch.Tensor, new_ids: torch.Tensor, embeds: torch.Tensor,
                     scores: torch.Tensor, matched: torch.Tensor, born: torch.Tensor, frame: int) -> None:
        """Push matched detections into their tracks, append born tracks, drop dead tracks."""
        embeds = embeds.float()
        scores = scores.float()
        length, mom = self.cfg.memory_len, self.cfg.memo_momentum
        bank = self._bank
        if bank is not None and matched.any():
            rows = cols[matched]
            e, s = embeds[matched], scores[matched]
            bank["embeds"][rows] = torch.cat([bank["embeds"][rows, 1:], e[:, None]], dim=1)
            bank["scores"][rows] = torch.cat([bank["scores"][rows, 1:], s[:, None]], dim=1)
            bank["fill"][rows] = (bank["fill"][rows] + 1).clamp(max=length)
            bank["age"][rows] += 1
            bank["last"][rows] = frame
            bank["momentum"][rows] = (1 - mom) * bank["momentum"][rows] + mom * e
        if born.any():
            e, s = embeds[born], scores[born]
            nb, dev = e.shape[0], e.device
            new = {
                "ids": new_ids,
                "embeds": torch.cat([e.new_zeros(nb, length - 1, e.shape[1]), e[:, None]], dim=1),
                "scores": torch.cat([s.new_zeros(nb, length - 1), s[:, None]], dim=1),
                "fill": torch.ones(nb, dtype=torch.long, device=dev),
                "age": torch.ones(nb, dtype=torch.long, device=dev),
                "last": torch.full((nb,), frame, dtype=torch.long, device=dev),
                "momentum": e.clone(),
            }
            bank = new if bank is None else {k: torch.cat([bank[k], new[k]]) for k in bank}
        if bank is not None:
            alive = frame - bank["last"] < self.cfg.max_missed_frames
            bank = {k: v[alive] for k, v in bank.items()} if not alive.all() else bank
            bank = bank if bank["ids"].numel() else None
        self._bank = bank

    # ------------------------------------------------------------------ per frame
    def associate(self, embeds: torch.Tensor, scores: torch.Tensor, frame: int | None = None) -> torch.Tensor:
        """Assign track ids to detections (already filtered, in decreasing score) and update the memory.

        Args:
            embeds: (n, C) instance embeddings. scores: (n,) detection scores.
            frame: frame index used for the death rule (default: the frame ``update`` is processing).
        Returns:
            (n,) long track ids; -1 for detections that neither match nor start a track.
        """
        cfg, dev = self.cfg, embeds.device
        frame = self.frame_idx if frame is None else frame
        n = embeds.shape[0]
        cols = torch.full((n,), -1, dtype=torch.long, device=dev)
        if self._bank is None:
            birth_thresh = cfg.init_score_thresh
        else:
            birth_thresh = cfg.new_score_thresh
            if n:
                sim = bisoftmax_similarity(embeds, self.memory_embeddings()).cpu().numpy()
                age = self._bank["age"].cpu().numpy().astype(sim.dtype)
                cols = torch.from_numpy(greedy_assign(sim, age, cfg.match_thresh, cfg.frame_weight)).to(dev)
        matched = cols >= 0
        born = ~matched & (scores > birth_thresh)
        num_born = int(born.sum())
        new_ids = torch.arange(self.next_id, self.next_id + num_born, dtype=torch.long, device=dev)
        self.next_id += num_born
        ids = torch.full((n,), -1, dtype=torch.long, device=dev)
        if matched.any():
            ids[matched] = self._bank["ids"][cols[matched]]
        ids[born] = new_ids
        self._update_bank(cols, new_ids, embeds, scores, matched, born, frame)
        return ids

    def update(
        self,
        embeds: torch.Tensor,
        scores: torch.Tensor,
        class_probs: torch.Tensor,
        boxes: torch.Tensor,
        masks: torch.Tensor,
    ) -> torch.Tensor:
        """Process one frame.

        Args:
            embeds: (Q, C) instance embeddings of all queries.
            scores: (Q,) detection scores (IDOL: max sigmoid class probability).
            class_probs: (Q, K) per-class probabilities; a track's video class score is their mean over
                the frames where it is present.
            boxes: (Q, 4) xyxy boxes (any consistent scale; only IoUs are used).
            masks: (Q, H, W) mask logits (or probabilities, see ``masks_are_logits``) already at the output
                resolution: tracked masks are binarised and RLE-encoded at that size.
        Returns:
            (Q,) long: the track id of each query, -1 for queries dropped by the filtering or left untracked.
        """
        cfg = self.cfg
        q = scores.shape[0]
        for name, t, shape in (("embeds", embeds, (q,)), ("class_probs", class_probs, (q,)),
                               ("boxes", boxes, (q, 4)), ("masks", masks, (q,))):
            if tuple(t.shape[: len(shape)]) != shape:
                raise ValueError(f"IDOLTracker.update: {name} has shape {tuple(t.shape)}, expected "
                                 f"{shape}+... for {q} queries (scores has shape {tuple(scores.shape)})")
        for name, t in (("scores", scores), ("class_probs", class_probs)):
            bad = ~torch.isfinite(t)
            if bad.any():
                query = int(torch.nonzero(bad)[0, 0])
                raise ValueError(
                    f"IDOLTracker.update: frame {self.frame_idx}: {name} of query {query} is not finite"
                )
        mask_threshold = 0.0 if cfg.masks_are_logits else 0.5
        labels = class_probs.argmax(dim=1)
        keep, keep_masks = select_detections(scores, labels, boxes, masks, cfg.score_thresh,
                                             cfg.box_nms_thresh, cfg.mask_nms_thresh, mask_threshold,
                                             return_masks=True)
        det_ids = self.associate(embeds[keep], scores[keep])

        frame = self.store.start_frame()
        out = torch.full((q,), -1, dtype=torch.long, device=scores.device)
        out[keep] = det_ids
        tracked = det_ids >= 0
        if tracked.any():
            queries = keep[tracked]
            # Only the tracked masks leave the device and get encoded.
            rles = masks_to_rles(keep_masks[tracked].cpu().numpy())
            track_ids = det_ids[tracked].tolist()
            self.store.add(frame, track_ids, rles, class_probs[queries], self._margins(masks, queries))
            self._mark_fragile(track_ids)
        self._cleanup(frame)
        return out

    def record_soft_masks(self, codec: SoftMaskCodec) -> None:
        """Also keep each tracked mask's soft encoding (multi-scale test; before the first frame)."""
        self.store.record_soft_masks(codec)

    def _margins(self, masks: torch.Tensor, queries: torch.Tensor) -> torch.Tensor | None:
        """(n, H, W) logits of the tracked masks relative to the binarisation, only when soft masks are kept."""
        if self.store.soft_codec is None:
            return None
        if self.cfg.masks_are_logits:
            return masks[queries]
        return torch.logit(masks[queries].float(), eps=1e-6)  # probabilities binarised at 0.5

    def _mark_fragile(self, track_ids: Sequence[int]) -> None:
        for tid in track_ids:
            if self.store[tid].num_present < self.cfg.cleanup_min_frames:
                self._fragile.add(tid)
            else:
                self._fragile.discard(tid)

    def _cleanup(self, frame: int) -> None:
        """Official early clean-up of short, vanished outputs (only tracks below the length floor qualify)."""
        if frame <= self.cfg.cleanup_after_frame:
            return
        for tid in [t for t in self._fragile if self.store[t].last_frame < frame - 1]:
            self.store.remove(tid)
            self._fragile.discard(tid)

    # ------------------------------------------------------------------ output
    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        """Results entries: every (track, class) with mean class probability > ``class_score_thresh``."""
        return self.store.finalize(video_id, category_ids, score_threshold=self.cfg.class_score_thresh)


def build_idol_tracker(dataset: str = "ytvis", **overrides) -> IDOLTracker:
    """Tracker with the official thresholds of ``dataset`` ("ytvis*" or "ovis") and ``overrides``."""
    return IDOLTracker(IDOLTrackerConfig.for_dataset(dataset, **overrides))
