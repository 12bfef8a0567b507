"""Result-level model ensembling ("+Model ensemble" in reports 000 and 001): fuse the YouTube-VIS results of
several models (IDOL variants, IDOL + MinVIS, several test scales, ...) into one results list.

Rule, applied to each video on its own (only one video's masks are ever decoded):

0. **Calibrate** (``calibration="rank"``, default): each model's scores are replaced by a function of their
   rank within that model's whole results list, on a scale common to the models: the entry of 0-based rank
   ``r`` scores ``1 - r / N``, ``N`` the length of the longest of the lists (ties share their mean rank), so
   every model's best entry scores 1 and the r-th most confident entries of all models score alike.
   IDOL's video score is a mean sigmoid over the frames, MinVIS' a softmax of mean logits: their raw values
   are not comparable (a softmax over K + 1 classes is not a probability of the same event; on ovis_2nd's
   smoke checkpoints the median IDOL entry scores 0.09, the median MinVIS entry 0.53), so summing them would
   let one model's score scale decide every cluster. A rank needs no labelled data (a temperature would have
   to be fitted on some), is well defined because it is taken over the member's whole file (not a video,
   where the number of entries varies), and keeps each model's own order, which is all AP reads. The rank
   is put on the common ``N`` rather than on each list's own length (``"quantile"``: ``(N_m - r) / N_m``)
   because the lists' lengths follow the models' emission rules, not their confidence: IDOL writes every
   class above 0.05 of every track (1973 entries on those 50 videos, most of them low-score second
   classes), MinVIS its top 10 per video (500), so per-list quantiles would lift IDOL's real detections
   above MinVIS' of the same rank (measured there: 1.0 AP below the common scale, 3 seeds). ``"none"``
   keeps the raw scores.
1. **Pool** the entries of all models; model ``m`` carries weight ``w_m`` (default 1).
2. **Cluster** greedily by score: the highest-scoring unclustered entry seeds a cluster; every other model
   contributes its unclustered entry with the highest video mask IoU to the seed (ties: higher score) if
   that IoU is ``>= iou_threshold`` (and, with ``category_aware``, the category is the seed's). With
   ``one_per_model=False`` every unclustered entry of any model over the threshold joins instead.
3. **Fuse** each cluster into one entry:

   * score: ``sum w s / sum_all_models w`` (``score_mode="all_models"``, default: a model that did not find
     the object votes 0, so agreement is rewarded: with two models an object both find scores the mean of
     its two calibrated scores, one found by a single model half its score), or the weighted mean of the
     members' scores ``sum w s / sum w`` (``"members"``: a lone entry keeps its full score);
   * category: the seed's when ``category_aware``; otherwise the category with the largest ``sum w s``
     among the members (ties: the seed's);
   * mask of frame ``t``: a weighted vote. Member ``i`` votes with ``v_i = w_i s_i`` (``vote_weighting=
     "score"``, default: model weight times calibrated score) or ``v_i = w_i`` (``"model"``); a pixel is kept
     when the members covering it hold at least ``vote_threshold`` (default half) of the cluster's total vote
     ``sum v``. A member whose frame is None votes "absent" with its full weight. A frame whose voted mask is
     empty is None. A single-member cluster keeps its masks unchanged. With two members and model weights a
     half vote is their union; with score weights the more confident member decides where they disagree
     (a third member can overrule it), so the fused mask is no longer the union of the two.

   Measured on the ovis_2nd smoke checkpoints (IDOL multi-scale + MinVIS, 3 seeds, the same member files):
   AP 34.3 +- 0.3 with these defaults against 34.0 +- 0.7 with the legacy settings (raw scores, model-weight
   votes, ``all_models``), AP75 38.7 against 33.4 (the union of two members overgrew the masks), AP50 60.6
   against 61.2. Score-weighted votes need calibrated scores: on raw scores they fall to AP 32.3.

4. **Sequence NMS** (:func:`~vis_core.tracking.sequence_nms.sequence_nms`) on the fused entries with their
   video mask IoU: ``nms_method`` (hard / linear / gaussian), ``nms_iou_threshold``, per category when
   ``nms_category_aware``; then at most ``max_per_video`` entries, best first.

Video mask IoU is the YouTube-VIS one (:mod:`vis_core.tracking.video_iou`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vis_core.data.ytvis import (
    decode_segmentation,
    load_annotations,
    load_results,
    mask_to_rle,
    save_json,
)
from vis_core.tracking.sequence_nms import METHODS, sequence_nms
from vis_core.tracking.video_iou import video_iou_rle

__all__ = ["CALIBRATIONS", "EnsembleConfig", "fuse_video", "ensemble_results", "ensemble_files", "rank_calibrated"]

CALIBRATIONS = ("rank", "quantile", "none")


@dataclass
class EnsembleConfig:
    """Config keys of result-level ensembling (``ensemble`` in params.yaml)."""

    iou_threshold: float = 0.5  # clustering: minimum video mask IoU with the seed
    category_aware: bool = True  # cluster only entries of the seed's category
    one_per_model: bool = True  # at most one entry per model in a cluster
    vote_threshold: float = 0.5  # fraction of the cluster's total vote a pixel needs
    vote_weighting: str = "score"  # a member's vote: "score" (model weight x calibrated score) or "model"
    score_mode: str = "all_models"  # "all_models" (a missing model votes 0) or "members"
    nms_method: str = "hard"  # "hard", "linear", "gaussian"
    nms_iou_threshold: float = 0.7
    nms_category_aware: bool = True
    nms_score_threshold: float = 0.0
    max_per_video: int | None = None
    calibration: str = "rank"  # "rank" (1 - rank / longest list), "quantile" (per list) or "none"

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"EnsembleConfig: calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.vote_weighting not in ("score", "model"):
            raise ValueError(
                f"EnsembleConfig: vote_weighting must be 'score' or 'model', got {self.vote_weighting!r}"
            )
        if self.score_mode not in ("members", "all_models"):
            raise ValueError(
                f"EnsembleConfig: score_mode must be 'members' or 'all_models', got {self.score_mode!r}"
            )
        if self.nms_method not in METHODS:
            raise ValueError(f"EnsembleConfig: nms_method must be one of {METHODS}, got {self.nms_method!r}")
        if not 0.0 < self.vote_threshold <= 1.0:
            raise ValueError(f"EnsembleConfig: vote_threshold must be in (0, 1], got {self.vote_threshold}")


def _cluster(
    scores: np.ndarray,
    models: np.ndarray,
    cats: np.ndarray,
    ious: np.ndarray,
    cfg: EnsembleConfig,
) -> list[list[int]]:
    """Greedy clusters of pooled entries (indices), seed first."""
    free = np.ones(len(scores), dtype=bool)
    clusters: list[list[int]] = []
    for seed in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if not free[seed]:
            continue
        free[seed] = False
        members = [seed]
        ok = free & (ious[seed] >= cfg.iou_threshold)
        if cfg.category_aware:
            ok &= cats == cats[seed]
        if cfg.one_per_model:
            ok &= models != models[seed]
            for m in np.unique(models[ok]):
                cand = np.flatnonzero(ok & (models == m))
                best = int(max(cand, key=lambda j: (ious[seed, j], scores[j], -j)))
                members.append(best)
        else:
            members += np.flatnonzero(ok).tolist()
        free[members] = False
        clusters.append(members)
    return clusters


def _vote_weights(w: np.ndarray, s: np.ndarray, cfg: EnsembleConfig) -> np.ndarray:
    """``(n,)`` votes of a cluster's members: ``w * s`` (score weighting; the model weights if every score is
    0, where the product would leave nobody to vote) or ``w``."""
    votes = w * s if cfg.vote_weighting == "score" else w
    return votes if votes.sum() > 0 else w


def _vote_masks(segs: list[list[dict | None]], weights: np.ndarray, threshold: float) -> list[dict | None]:
    """Per-frame weighted vote of the members' masks (None = absent vote); ``weights``: ``(n,)`` votes."""
    need = threshold * weights.sum()
    out: list[dict | None] = []
    for frame in zip(*segs, strict=True):
        present = [(seg, w) for seg, w in zip(frame, weights, strict=True) if seg is not None]
        if sum(w for _, w in present) < need or not present:  # not even all present members agree
            out.append(None)
            continue
        h, w = present[0][0]["size"]
        acc = np.zeros((h, w), dtype=np.float64)
        for seg, wt in present:
            acc += wt * decode_segmentation(seg, h, w)
        fg = acc >= need - 1e-9 * max(need, 1.0)  # tolerate float round-off in the weight sums
        out.append(mask_to_rle(fg) if fg.any() else None)
    return out


def fuse_video(
    entries_per_model: Sequence[Sequence[dict]],
    weights: Sequence[float] | None = None,
    cfg: EnsembleConfig | None = None,
) -> list[dict]:
    """Fuse the results of one video (rule in the module docstring).

    Args:
        entries_per_model: for each model, its results entries of this video
            (``{"video_id", "category_id", "score", "segmentations"}``).
        weights: one weight per model (default all 1).
        cfg: the fusion settings. Scores are taken as given: calibration needs whole files and is
            :func:`ensemble_results`' step.
    Returns:
        fused entries, sorted by decreasing score.
    """
    cfg = cfg or EnsembleConfig()
    weights = [1.0] * len(entries_per_model) if weights is None else list(weights)
    if len(weights) != len(entries_per_model):
        raise ValueError(f"fuse_video: {len(weights)} weights for {len(entries_per_model)} models")
    if any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"fuse_video: weights must be positive, got {weights}")
    pooled = [(m, e) for m, entries in enumerate(entries_per_model) for e in entries]
    if not pooled:
        return []
    video_id = pooled[0][1]["video_id"]
    scores = np.array([float(e["score"]) for _, e in pooled])
    models = np.array([m for m, _ in pooled])
    cats = np.array([e["category_id"] for _, e in pooled])
    w_entry = np.array([weights[m] for m in models], dtype=np.float64)
    ious = video_iou_rle([e["segmentations"] for _, e in pooled])

    fused: list[dict] = []
    for members in _cluster(scores, models, cats, ious, cfg):
        w = w_entry[members]
        s = scores[members]
        denom = sum(weights) if cfg.score_mode == "all_models" else w.sum()
        score = float((w * s).sum() / denom)
        if cfg.category_aware:
            cat = cats[members[0]]
        else:
            votes: dict = defaultdict(float)
            for i in members:
                votes[cats[i]] += w_entry[i] * scores[i]
            best = max(votes.values())
            cat = cats[members[0]] if votes[cats[members[0]]] >= best else max(votes, key=votes.get)
        segs = [pooled[i][1]["segmentations"] for i in members]
        votes = _vote_weights(w, s, cfg)
        masks = list(segs[0]) if len(members) == 1 else _vote_masks(segs, votes, cfg.vote_threshold)
        fused.append({"video_id": video_id, "category_id": int(cat), "score": score, "segmentations": masks})

    labels = [e["category_id"] for e in fused] if cfg.nms_category_aware else None
    keep, kept_scores = sequence_nms(
        np.array([e["score"] for e in fused]),
        video_iou_rle([e["segmentations"] for e in fused]),
        iou_threshold=cfg.nms_iou_threshold,
        method=cfg.nms_method,
        labels=labels,
        score_threshold=cfg.nms_score_threshold,
    )
    out = []
    for i, sc in zip(keep.tolist(), kept_scores.tolist(), strict=True):
        out.append({**fused[i], "score": float(sc)})
    return out[: cfg.max_per_video] if cfg.max_per_video is not None else out


def rank_calibrated(entries: Sequence[dict], scale: int | None = None) -> list[dict]:
    """One model's results with each score replaced by ``(N - r) / N`` for the entry of 0-based rank ``r`` by
    decreasing score (ties share their mean), so the best entry scores 1. ``N``: ``scale`` (``>= len``; the
    longest list of an ensemble) or the list's own length (its rank quantile, the worst entry ``1 / N``)."""
    if not entries:
        return []
    scores = np.array([float(e["score"]) for e in entries])
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(len(scores), dtype=np.float64)
    for value in np.unique(scores):  # ties: mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n = len(scores) if scale is None else scale
    if n < len(scores):
        raise ValueError(f"rank_calibrated: scale {n} is below the number of entries {len(scores)}")
    return [{**e, "score": float((n - r) / n)} for e, r in zip(entries, ranks, strict=True)]


def _calibrated(results_per_model: Sequence[Sequence[dict]], calibration: str) -> list[Sequence[dict]]:
    """Every model's results, calibrated as ``calibration`` says (module docstring, step 0)."""
    if calibration == "none":
        return list(results_per_model)
    scale = max(len(entries) for entries in results_per_model) if calibration == "rank" else None
    return [rank_calibrated(entries, scale) for entries in results_per_model]


def ensemble_results(
    results_per_model: Sequence[Sequence[dict]],
    weights: Sequence[float] | None = None,
    cfg: EnsembleConfig | None = None,
    video_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Fuse whole results lists, one video at a time.

    Args:
        results_per_model: one (validated) results list per model.
        weights: one weight per model.
        cfg: fusion settings.
        video_ids: videos to process, in output order (default: every video seen, sorted).
        progress: show a tqdm bar over videos.
    """
    cfg = cfg or EnsembleConfig()
    results_per_model = _calibrated(results_per_model, cfg.calibration) if results_per_model else []
    by_video: list[dict[int, list[dict]]] = []
    for entries in results_per_model:
        grouped: dict[int, list[dict]] = defaultdict(list)
        for e in entries:
            grouped[e["video_id"]].append(e)
        by_video.append(grouped)
    if video_ids is None:
        video_ids = sorted({v for g in by_video for v in g})
    out: list[dict] = []
    for vid in tqdm(video_ids, desc="ensemble", unit="video", disable=not progress):
        out += fuse_video([g.get(vid, []) for g in by_video], weights, cfg)
    return out


def ensemble_files(
    gt_path: str | os.PathLike,
    result_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    weights: Sequence[float] | None = None,
    cfg: EnsembleConfig | None = None,
    progress: bool = True,
) -> Path:
    """Validate every results file against the ground-truth videos, fuse them and write ``out_path``
    atomically. Returns the written path."""
    if weights is not None and len(weights) != len(result_paths):
        raise ValueError(f"ensemble: {len(weights)} weights given for {len(result_paths)} results files")
    gt = load_annotations(gt_path)
    results = [load_results(p, gt)[0] for p in result_paths]
    fused = ensemble_results(results, weights, cfg, video_ids=gt.video_ids, progress=progress)
    return save_json(fused, out_path)
