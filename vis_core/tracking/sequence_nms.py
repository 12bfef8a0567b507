"""Sequence NMS: non-maximum suppression of whole video tracks on video mask IoU.

The IoU is the YouTube-VIS video mask IoU (:mod:`vis_core.tracking.video_iou`), computed once per video
and passed in as an ``(N, N)`` matrix, so the same code serves RLE tracks (results json, ensembling) and dense
sequence masks (Propose-Reduce).

Greedy rule (Propose-Reduce ``seq_nms`` / ``seq_soft_nms``, report 004): repeatedly pick the highest-scoring
remaining track (ties: lower index); stop when its score is below ``score_threshold`` or ``max_keep`` tracks
are kept; then update every remaining track ``j`` by its IoU with the pick:

* ``"hard"``: drop ``j`` if ``IoU >= iou_threshold``;
* ``"linear"`` (soft-NMS, Bodla et al.): ``s_j *= 1 - IoU`` if ``IoU >= iou_threshold``;
* ``"gaussian"`` (soft-NMS): ``s_j *= exp(-IoU^2 / sigma)``, ``sigma`` defaulting to ``iou_threshold``.
  This is how Propose-Reduce's code reads its "soft-NMS of 0.5 IoU threshold": the threshold is the sigma
  (report 004 Sec. 4.2; its example 0.78 -> 0.49 is an IoU of about 0.48 under sigma 0.5).

Category-agnostic: one pass over all tracks. Category-aware with one label per track (``labels``): an
independent pass per label (like ``torchvision.ops.batched_nms``). Category-aware with a score per track and
class (:func:`multiclass_sequence_nms`, report 004 eq. 3): for every class ``c`` a pass over all tracks with
their class-``c`` scores, keeping ``(track, c, decayed score)`` triples.

Report 004's recipe is ``sequence_nms(agnostic scores, ious, 0.9, "hard")`` on the proposals, then
``multiclass_sequence_nms(class scores of the kept ones, ious, 0.5, "gaussian", score_threshold=1e-3)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vis_core.tracking.video_iou import video_iou_rle

__all__ = ["sequence_nms", "multiclass_sequence_nms", "sequence_nms_rle", "METHODS"]

METHODS = ("hard", "linear", "gaussian")


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _nms_single(
    scores: np.ndarray,
    ious: np.ndarray,
    iou_threshold: float,
    method: str,
    sigma: float,
    score_threshold: float,
    max_keep: int | None,
) -> tuple[list[int], list[float]]:
    scores = scores.astype(np.float64).copy()
    alive = np.ones(len(scores), dtype=bool)
    keep: list[int] = []
    kept_scores: list[float] = []
    while alive.any() and (max_keep is None or len(keep) < max_keep):
        candidates = np.flatnonzero(alive)
        best = int(candidates[np.argmax(scores[candidates])])  # argmax takes the first of ties
        if scores[best] < score_threshold:
            break
        keep.append(best)
        kept_scores.append(float(scores[best]))
        alive[best] = False
        rest = np.flatnonzero(alive)
        iou = ious[best, rest]
        if method == "hard":
            alive[rest[iou >= iou_threshold]] = False
        elif method == "linear":
            scores[rest] *= np.where(iou >= iou_threshold, 1.0 - iou, 1.0)
        else:
            scores[rest] *= np.exp(-(iou**2) / sigma)
    return keep, kept_scores


def _check(scores: np.ndarray, ious: np.ndarray, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"sequence NMS: unknown method {method!r} (expected one of {METHODS})")
    n = scores.shape[0]
    if ious.shape != (n, n):
        raise ValueError(f"sequence NMS: ious must be ({n}, {n}) for {n} tracks, got {tuple(ious.shape)}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("sequence NMS: scores contain NaN or inf")


def sequence_nms(
    scores: Tensor | np.ndarray | Sequence[float],
    ious: Tensor | np.ndarray,
    iou_threshold: float = 0.5,
    method: str = "hard",
    labels: Tensor | np.ndarray | Sequence[int] | None = None,
    sigma: float | None = None,
    score_threshold: float = 0.0,
    max_keep: int | None = None,
):
    """Category-agnostic (``labels=None``) or per-label sequence NMS.

    Args:
        scores: ``(N,)`` track scores.
        ious: ``(N, N)`` video mask IoU between the tracks.
        iou_threshold: suppression threshold (hard, linear).
        method: ``"hard"``, ``"linear"`` or ``"gaussian"``.
        labels: ``(N,)`` category of each track; NMS then runs within each category only.
        sigma: Gaussian width (default ``iou_threshold``).
        score_threshold: tracks whose (decayed) score falls below it are dropped.
        max_keep: at most this many tracks kept (per label when ``labels`` is given).
    Returns:
        ``(keep, kept_scores)``: indices into the input and their scores after decay, sorted by decreasing
        score (ties: lower index first). Tensors if ``scores`` is a Tensor, numpy arrays otherwise.
    """
    s, m = _np(scores).astype(np.float64).reshape(-1), _np(ious).astype(np.float64)
    _check(s, m, method)
    sigma = iou_threshold if sigma is None else sigma
    if labels is None:
        keep, kept = _nms_single(s, m, iou_threshold, method, sigma, score_threshold, max_keep)
    else:
        lab = _np(labels).reshape(-1)
        if lab.shape[0] != s.shape[0]:
            raise ValueError(f"sequence NMS: {lab.shape[0]} labels for {s.shape[0]} tracks")
        keep, kept = [], []
        for c in np.unique(lab):
            idx = np.flatnonzero(lab == c)
            sub_ious = m[np.ix_(idx, idx)]
            k, ks = _nms_single(s[idx], sub_ious, iou_threshold, method, sigma, score_threshold, max_keep)
            keep += idx[k].tolist()
            kept += ks
    order = sorted(range(len(keep)), key=lambda i: (-kept[i], keep[i]))
    keep_arr = np.array([keep[i] for i in order], dtype=np.int64)
    kept_arr = np.array([kept[i] for i in order], dtype=np.float64)
    if isinstance(scores, Tensor):
        return torch.from_numpy(keep_arr).to(scores.device), torch.from_numpy(kept_arr).to(scores)
    return keep_arr, kept_arr


def multiclass_sequence_nms(
    class_scores: Tensor | np.ndarray,
    ious: Tensor | np.ndarray,
    iou_threshold: float = 0.5,
    method: str = "gaussian",
    sigma: float | None = None,
    score_threshold: float = 1e-3,
    max_keep: int | None = None,
):
    """Category-aware sequence NMS over per-class scores (report 004 eq. 3).

    Args:
        class_scores: ``(N, K)`` score of every track for every class.
        ious: ``(N, N)`` video mask IoU.
        Other arguments as in :func:`sequence_nms` (``max_keep`` is per class).
    Returns:
        ``(track_idx, class_idx, scores)`` of every kept (track, class) pair, sorted by decreasing score.
        Tensors if ``class_scores`` is a Tensor, numpy arrays otherwise.
    """
    cs, m = _np(class_scores).astype(np.float64), _np(ious).astype(np.float64)
    if cs.ndim != 2:
        raise ValueError(f"multiclass_sequence_nms: class_scores must be (N, K), got {cs.shape}")
    _check(np.zeros(cs.shape[0]), m, method)
    if not np.all(np.isfinite(cs)):
        raise ValueError("sequence NMS: class_scores contain NaN or inf")
    sigma = iou_threshold if sigma is None else sigma
    tracks, classes, kept = [], [], []
    for c in range(cs.shape[1]):
        k, ks = _nms_single(cs[:, c], m, iou_threshold, method, sigma, score_threshold, max_keep)
        tracks += k
        classes += [c] * len(k)
        kept += ks
    order = sorted(range(len(kept)), key=lambda i: (-kept[i], tracks[i], classes[i]))
    t = np.array([tracks[i] for i in order], dtype=np.int64)
    c = np.array([classes[i] for i in order], dtype=np.int64)
    s = np.array([kept[i] for i in order], dtype=np.float64)
    if isinstance(class_scores, Tensor):
        dev = class_scores.device
        return torch.from_numpy(t).to(dev), torch.from_numpy(c).to(dev), torch.from_numpy(s).to(class_scores)
    return t, c, s


def sequence_nms_rle(
    tracks: Sequence[Sequence[dict | None]],
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | None = None,
    **kwargs,
):
    """:func:`sequence_nms` on tracks given as per-frame RLEs (IoU computed with :func:`video_iou_rle`)."""
    if len(tracks) != len(scores):
        raise ValueError(f"sequence_nms_rle: {len(tracks)} tracks but {len(scores)} scores")
    return sequence_nms(np.asarray(scores, dtype=np.float64), video_iou_rle(tracks), labels=labels, **kwargs)
