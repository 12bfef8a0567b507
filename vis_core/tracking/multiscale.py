"""Multi-scale test (report 001, Tab. 2 "+Multi-scale": 720p and 1080p): merge the tracks that one model
produced at several test sizes into one set of tracks.

The model runs once per shortest-side size and associates frames per scale as usual; every scale's tracks
are brought to a common output resolution (the video's), then merged by this rule:

1. **Anchors.** The tracks of the first scale found the merged tracks ("groups").
2. **Matching.** For each further scale in order, its tracks are Hungarian-matched to the groups on video
   mask IoU (YouTube-VIS definition, :func:`~vis_core.tracking.video_iou.video_iou_rle`; masks binarised at
   ``mask_threshold``), where a group is represented by the track that founded it. Only pairs with IoU
   ``>= iou_threshold`` (and > 0) can match; among them the assignment maximises the summed IoU. A track left
   unmatched founds a new group, so an object missed at the first scale but seen at two others is still
   merged.
3. **Masks.** Per frame, the mean of the members' masks (probabilities, or 0/1 for RLE members; a member
   absent in that frame contributes zeros), foreground where the mean is ``>= mask_threshold``. With binary
   members this is a vote by at least half of the members (with two scales: their union); pass
   probabilities when you have them. In RLE output a frame whose fused mask is empty is absent (None).
4. **Scores.** The class-score vectors are summed over members and divided by the number of scales
   (``count_absent_scales=True``, default: a scale that did not find the object votes 0, so tracks seen at
   one scale only are ranked lower) or by the number of members (``False``: a plain mean).

:func:`merge_multiscale` takes whole tracks. :class:`StreamingMultiScaleMerger` takes one frame at a time from
online models (each scale's track ids are known per frame), keeps only the binarised masks as RLE (no stack of
full-resolution masks), and applies the same rule at the end of the video; its masks are therefore votes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vis_core.data.ytvis import decode_segmentation, mask_to_rle
from vis_core.tracking.video_iou import video_iou_rle

__all__ = ["ScaleTrack", "MergedTrack", "merge_multiscale", "StreamingMultiScaleMerger"]

FrameMask = Tensor | np.ndarray | dict | None


@dataclass
class ScaleTrack:
    """One track of one test scale, at the common output resolution.

    Attributes:
        masks: per frame an ``(H, W)`` probability tensor (or numpy array; a 0/1 mask is a valid
            probability map), an RLE dict (string or bytes counts), or None.
        scores: ``(K,)`` class scores (e.g. the track's mean class probabilities).
    """

    masks: list[FrameMask]
    scores: Tensor


@dataclass
class MergedTrack:
    """A merged track: per-frame masks (RLE or probability tensor, or None), ``(K,)`` scores, and its
    members as ``(scale index, track index)`` pairs, founder first."""

    masks: list[FrameMask]
    scores: Tensor
    members: list[tuple[int, int]] = field(default_factory=list)


def _binary_rles(track: ScaleTrack, mask_threshold: float) -> list[dict | None]:
    """The track's masks as RLEs of the binarised masks (what the IoU and the vote need)."""
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


def _as_float(m: FrameMask, size: tuple[int, int]) -> Tensor:
    if isinstance(m, dict):
        return torch.from_numpy(decode_segmentation(m, *size)).float()
    return torch.as_tensor(m).float().cpu()


def _frame_size(tracks: Sequence[ScaleTrack]) -> tuple[int, int] | None:
    for tr in tracks:
        for m in tr.masks:
            if isinstance(m, dict):
                return int(m["size"][0]), int(m["size"][1])
            if m is not None:
                return int(m.shape[-2]), int(m.shape[-1])
    return None


def _fuse_masks(members: list[ScaleTrack], mask_threshold: float, output: str, size) -> list[FrameMask]:
    num_frames = len(members[0].masks)
    out: list[FrameMask] = []
    for t in range(num_frames):
        present = [m.masks[t] for m in members if m.masks[t] is not None]
        if not present:
            out.append(None)
            continue
        if len(members) == 1 and output == "rle" and isinstance(present[0], dict):
            out.append(_json_rle(present[0]))  # a lone RLE member is its own vote
            continue
        mean = sum(_as_float(m, size) for m in present) / len(members)
        if output == "prob":
            out.append(mean)
            continue
        fg = (mean >= mask_threshold).numpy()
        out.append(mask_to_rle(fg) if fg.any() else None)
    return out


def merge_multiscale(
    tracks_per_scale: Sequence[Sequence[ScaleTrack]],
    iou_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    count_absent_scales: bool = True,
    output: str = "rle",
) -> list[MergedTrack]:
    """Merge per-scale tracks of one video (rule in the module docstring).

    Args:
        tracks_per_scale: ``S`` lists of tracks; the first scale's tracks are the anchors. All tracks have the
            same number of frames and, where present, the same mask size.
        iou_threshold: minimum video mask IoU of a match.
        mask_threshold: binarisation of probabilities for the IoU and of the mean mask.
        count_absent_scales: divide summed scores by ``S`` (True) or by the number of members (False).
        output: ``"rle"`` (json-ready RLE per frame, None where empty) or ``"prob"`` (mean mask tensors).
    Returns:
        merged tracks, groups founded at earlier scales first, in their founders' order.
    """
    if output not in ("rle", "prob"):
        raise ValueError(f"merge_multiscale: output must be 'rle' or 'prob', got {output!r}")
    num_scales = len(tracks_per_scale)
    all_tracks = [tr for scale in tracks_per_scale for tr in scale]
    if not all_tracks:
        return []
    lengths = {len(tr.masks) for tr in all_tracks}
    if len(lengths) != 1:
        raise ValueError(f"merge_multiscale: tracks have different frame counts {sorted(lengths)}")
    size = _frame_size(all_tracks)
    rles = [[_binary_rles(tr, mask_threshold) for tr in scale] for scale in tracks_per_scale]

    groups: list[list[tuple[int, int]]] = []  # members (scale, index), founder first
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

    merged: list[MergedTrack] = []
    for members in groups:
        tracks = [tracks_per_scale[s][j] for s, j in members]
        denom = num_scales if count_absent_scales else len(tracks)
        scores = sum(torch.as_tensor(tr.scores).float() for tr in tracks) / denom
        merged.append(MergedTrack(_fuse_masks(tracks, mask_threshold, output, size), scores, list(members)))
    return merged


class StreamingMultiScaleMerger:
    """Frame-by-frame collector for :func:`merge_multiscale` (online models, bounded memory).

    Usage::

        merger = StreamingMultiScaleMerger(num_scales=2)
        for t in range(T):
            merger.update([{track_id: prob_map (H, W)} for each scale])   # same output size for all scales
        tracks = merger.finalize([{track_id: class_scores (K,)} for each scale])

    Only the binarised masks are kept (as RLE), so the final masks are votes (see the module docstring).
    Track ids are per scale and may appear at any frame; frames where a track is missing are absent.
    """

    def __init__(
        self,
        num_scales: int,
        iou_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        count_absent_scales: bool = True,
    ):
        self.num_scales = num_scales
        self.iou_threshold = iou_threshold
        self.mask_threshold = mask_threshold
        self.count_absent_scales = count_absent_scales
        self.num_frames = 0
        self.tracks: list[dict[Hashable, list[dict | None]]] = [{} for _ in range(num_scales)]

    def update(self, frame: Sequence[Mapping[Hashable, Tensor | np.ndarray]]) -> None:
        """Add one frame: for each scale, ``{track_id: (H, W) probabilities or bool mask}``."""
        if len(frame) != self.num_scales:
            raise ValueError(
                f"StreamingMultiScaleMerger.update: {len(frame)} scales given, expected {self.num_scales}"
            )
        for s, masks in enumerate(frame):
            for tid, m in masks.items():
                arr = m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)
                rle = mask_to_rle(arr >= self.mask_threshold)
                track = self.tracks[s].setdefault(tid, [None] * self.num_frames)
                track.append(rle)
            for tid, track in self.tracks[s].items():
                if tid not in masks:
                    track.append(None)
        self.num_frames += 1

    def finalize(self, scores: Sequence[Mapping[Hashable, Tensor]]) -> list[MergedTrack]:
        """Merge the collected tracks. ``scores[s][track_id]`` is the ``(K,)`` class-score vector of a track;
        every collected track needs one. Members in the result are ``(scale, track_id)`` pairs."""
        if len(scores) != self.num_scales:
            raise ValueError(
                f"StreamingMultiScaleMerger.finalize: {len(scores)} score maps, expected {self.num_scales}"
            )
        ids = [list(tracks) for tracks in self.tracks]
        per_scale = []
        for s, tracks in enumerate(self.tracks):
            missing = [tid for tid in tracks if tid not in scores[s]]
            if missing:
                raise ValueError(
                    f"StreamingMultiScaleMerger.finalize: scale {s}: no scores for track ids {missing}"
                )
            per_scale.append([ScaleTrack(tracks[tid], torch.as_tensor(scores[s][tid])) for tid in ids[s]])
        merged = merge_multiscale(
            per_scale, self.iou_threshold, self.mask_threshold, self.count_absent_scales, output="rle"
        )
        for m in merged:
            m.members = [(s, ids[s][j]) for s, j in m.members]
        return merged
