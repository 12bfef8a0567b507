"""Multi-scale test (report 001, Tab. 2 "+Multi-scale": "720p and 1080p scale for inference"): merge the tracks
that one model produced at several test sizes into one set of tracks.

Reading implemented: the report says only that 720p and 1080p are used for inference (720p being its default
test size). We read it as test-time augmentation over the input size at the *result* level: the whole video is
run once per shortest side, each scale with its own tracker, and the two sets of tracks are merged. The
alternative reading, merging the scales' detections frame by frame before one tracker, would need both
scales' segmenter outputs of a frame at once and changes the tracker's input distribution (detections
averaged across scales) that IDOL's memory bank and thresholds were tuned on; the result-level merge keeps
every scale's tracking exactly the official one and lets the single-scale 720p run stand for its scale.

Each scale's tracks are brought to a common output resolution (the video's), then merged by this rule:

1. **Anchors.** The tracks of the first scale found the merged tracks ("groups").
2. **Matching.** For each further scale in order, its tracks are Hungarian-matched to the groups on video
   mask IoU (YouTube-VIS definition, :func:`~vis_core.tracking.video_iou.video_iou_rle`, on the binary masks),
   where a group is represented by the track that founded it. Only pairs with IoU ``>= iou_threshold``
   (and > 0) can match; among them the assignment maximises the summed IoU. A track left unmatched founds a
   new group, so an object missed at the first scale but seen at two others is still merged.
3. **Masks.** Per frame, the mean of the members' mask *probabilities*, foreground where the mean is
   ``>= mask_threshold`` (0.5). A member absent in a frame contributes probability 0 there (its tracker
   attributed no mask to the object). Online associators keep each mask's probabilities as a soft encoding
   (:mod:`vis_core.tracking.soft_masks`: nested RLEs at a few levels, default 0.25 / 0.5 / 0.75), so the mean
   is that of quantised probabilities; a member without one (binary RLE only) counts as 0/1. A lone member
   keeps its binary mask exactly. Where two scales disagree on a pixel, the more confident one wins: a pixel
   one scale puts at 0.6 and the other at 0.1 is dropped, which a vote of binary masks (with two scales:
   their union) kept. In RLE output a frame whose fused mask is empty is absent (None). Measured on the
   ovis_2nd smoke checkpoints (scales 96 and 128, 3 seeds) the soft mean costs 0.5 AP (AP75 -2.2, AP50
   +0.3) against the union: those models never saw 128 px frames in training and under-segment there (mean
   mask area 525 px at 128, 670 at 96, 670 in the ground truth), so the union's growth happened to offset
   it, and finer levels (1/8 .. 7/8, closer to the exact mean) lose more (seed 2: AP75 a further -3.0).
   ``soft_levels: []`` in the inference config restores the binary vote.
4. **Scores.** The class-score vectors of the ``m`` members are summed and divided by
   ``m + absent_weight * (S - m)``, ``S`` the number of scales: a track found at every scale gets the mean
   of its scores, a track found at fewer scales is penalised as if each missing scale voted 0 with weight
   ``absent_weight`` (0: the plain mean over members). Default 1, a full zero vote: a track seen at one of
   two scales keeps half its score. One could argue for a milder penalty (the scales are meant to be
   complementary, and a scale's miss also comes from a cross-scale match lost to a fragmented track or from
   a class score under the emission threshold), but measured on the ovis_2nd smoke checkpoints (scales 96
   and 128, 3 seeds) one-scale tracks are nearly all false positives: among groups whose members score
   >= 0.2, 3-5% of the one-scale ones match a ground-truth track (video IoU >= 0.5) against 62% of those
   found at both scales, and ``absent_weight`` 0.5 / 0 cost 0.17 / 2.3 AP against 1. Absence at another scale
   is strong evidence against a track, so it gets the full vote; ``InferConfig.merge_absent_weight`` is the
   knob to revisit on real data.

:func:`merge_multiscale` takes whole tracks (what :func:`vis_core.engine.infer.merge_scale_results` builds from
each scale's results entries); memory stays bounded because the scales' masks arrive as RLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vis_core.data.ytvis import decode_segmentation, mask_to_rle
from vis_core.tracking.soft_masks import SoftMaskCodec
from vis_core.tracking.video_iou import video_iou_rle

__all__ = ["ScaleTrack", "MergedTrack", "merge_multiscale", "merged_score"]

FrameMask = Tensor | np.ndarray | dict | None


@dataclass
class ScaleTrack:
    """One track of one test scale, at the common output resolution.

    Attributes:
        masks: per frame an ``(H, W)`` probability tensor (or numpy array), an RLE dict of the binary mask
            (string or bytes counts), or None.
        scores: ``(K,)`` class scores (e.g. the track's mean class probabilities).
        soft: per frame the extra-level RLEs of the soft encoding of the RLE mask (None where absent), or
            None when the track has none (its RLE masks then count as 0/1 probabilities).
    """

    masks: list[FrameMask]
    scores: Tensor
    soft: list[list[dict] | None] | None = None


@dataclass
class MergedTrack:
    """A merged track: per-frame masks (RLE or probability tensor, or None), ``(K,)`` scores, and its
    members as ``(scale index, track index)`` pairs, founder first."""

    masks: list[FrameMask]
    scores: Tensor
    members: list[tuple[int, int]] = field(default_factory=list)


def _binary_rles(track: ScaleTrack, mask_threshold: float) -> list[dict | None]:
    """The track's masks as RLEs of the binarised masks (what the IoU needs)."""
    out: list[dict | None] = []
    for m in track.masks:
        if m is None or isinstance(m, dict):
            out.append(m)
        else:
            out.append(mask_to_rle((torch.as_tensor(m) >= mask_threshold).cpu().numpy()))
    return out


def _json_rle(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed: re-encode so the output is json-ready and compact
        return mask_to_rle(decode_segmentation(rle, *rle["size"]))
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _probability(track: ScaleTrack, t: int, size: tuple[int, int], codec: SoftMaskCodec) -> Tensor:
    """``(H, W)`` float probability of ``track`` in frame ``t`` (zeros where absent)."""
    m = track.masks[t]
    if m is None or isinstance(m, dict):
        return torch.from_numpy(codec.decode(m, None if track.soft is None else track.soft[t], size))
    return torch.as_tensor(m).float().cpu()


def _frame_size(tracks: Sequence[ScaleTrack]) -> tuple[int, int] | None:
    for tr in tracks:
        for m in tr.masks:
            if isinstance(m, dict):
                return int(m["size"][0]), int(m["size"][1])
            if m is not None:
                return int(m.shape[-2]), int(m.shape[-1])
    return None


def _fuse_masks(members: list[ScaleTrack], mask_threshold: float, output: str, size,
                codec: SoftMaskCodec) -> list[FrameMask]:
    """Per frame, the members' mean probability (absent members count 0), thresholded for RLE output."""
    out: list[FrameMask] = []
    for t in range(len(members[0].masks)):
        present = [m for m in members if m.masks[t] is not None]
        if not present:
            out.append(None)
            continue
        if len(members) == 1 and output == "rle" and isinstance(present[0].masks[t], dict):
            out.append(_json_rle(present[0].masks[t]))  # a lone member's binary mask is its own threshold
            continue
        mean = sum(_probability(m, t, size, codec) for m in present) / len(members)
        if output == "prob":
            out.append(mean)
            continue
        fg = (mean >= mask_threshold).numpy()
        out.append(mask_to_rle(fg) if fg.any() else None)
    return out


def merged_score(scores: Sequence[Tensor], num_scales: int, absent_weight: float) -> Tensor:
    """``(K,)`` score of a group of ``m = len(scores)`` members: ``sum / (m + absent_weight * (S - m))``."""
    m = len(scores)
    return sum(torch.as_tensor(s).float() for s in scores) / (m + absent_weight * (num_scales - m))


def _group(tracks_per_scale: Sequence[Sequence[ScaleTrack]], iou_threshold: float,
           mask_threshold: float) -> list[list[tuple[int, int]]]:
    """Groups of ``(scale, index)`` members, founder first (rule steps 1-2)."""
    rles = [[_binary_rles(tr, mask_threshold) for tr in scale] for scale in tracks_per_scale]
    groups: list[list[tuple[int, int]]] = []
    for s, scale in enumerate(tracks_per_scale):
        matched: set[int] = set()
        if groups and scale:
            founders = [rles[g[0][0]][g[0][1]] for g in groups]
            iou = video_iou_rle(founders, rles[s])
            # pairs under the threshold must not steal a valid partner: they weigh nothing in the assignment
            valid = (iou >= iou_threshold) & (iou > 0)
            rows, cols = linear_sum_assignment(np.where(valid, iou, 0.0), maximize=True)
            for g, j in zip(rows.tolist(), cols.tolist(), strict=True):
                if valid[g, j]:
                    groups[g].append((s, j))
                    matched.add(j)
        groups.extend([(s, j)] for j in range(len(scale)) if j not in matched)
    return groups


def merge_multiscale(
    tracks_per_scale: Sequence[Sequence[ScaleTrack]],
    iou_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    absent_weight: float = 1.0,
    output: str = "rle",
    codec: SoftMaskCodec | None = None,
) -> list[MergedTrack]:
    """Merge per-scale tracks of one video (rule in the module docstring).

    Args:
        tracks_per_scale: ``S`` lists of tracks; the first scale's tracks are the anchors. All tracks have the
            same number of frames and, where present, the same mask size.
        iou_threshold: minimum video mask IoU of a match.
        mask_threshold: binarisation of probability members for the IoU, and of the mean mask.
        absent_weight: weight of the zero vote of each scale that missed a group (0: mean over members,
            1: divide by ``S``).
        output: ``"rle"`` (json-ready RLE per frame, None where empty) or ``"prob"`` (mean mask tensors).
        codec: decodes the members' soft encodings (their levels; default :class:`SoftMaskCodec`'s).
    Returns:
        merged tracks, groups founded at earlier scales first, in their founders' order.
    """
    if output not in ("rle", "prob"):
        raise ValueError(f"merge_multiscale: output must be 'rle' or 'prob', got {output!r}")
    if not 0.0 <= absent_weight <= 1.0:
        raise ValueError(f"merge_multiscale: absent_weight must be in [0, 1], got {absent_weight}")
    codec = codec or SoftMaskCodec()
    all_tracks = [tr for scale in tracks_per_scale for tr in scale]
    if not all_tracks:
        return []
    lengths = {len(tr.masks) for tr in all_tracks}
    if len(lengths) != 1:
        raise ValueError(f"merge_multiscale: tracks have different frame counts {sorted(lengths)}")
    size = _frame_size(all_tracks)
    merged: list[MergedTrack] = []
    for members in _group(tracks_per_scale, iou_threshold, mask_threshold):
        tracks = [tracks_per_scale[s][j] for s, j in members]
        scores = merged_score([tr.scores for tr in tracks], len(tracks_per_scale), absent_weight)
        masks = _fuse_masks(tracks, mask_threshold, output, size, codec)
        merged.append(MergedTrack(masks, scores, list(members)))
    return merged
