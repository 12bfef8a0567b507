"""Per-track streaming state shared by the online associators (IDOL, MinVIS).

A track keeps only what the YouTube-VIS results file needs: one RLE (or ``None``) per frame and a running
sum of its per-frame class scores (probabilities for IDOL, logits for MinVIS) with the number of frames that
contributed. Full-resolution masks never accumulate: the caller encodes each frame's mask to RLE as soon as
it is assigned to a track, so memory grows only with the RLE output itself.

``TrackStore.finalize`` turns the states into results entries
``{"video_id", "category_id", "score", "segmentations"}``: either every (track, class) pair whose score is
above a threshold (IDOL's multi-class output) or the top-k (track, class) pairs (MinVIS).

Soft masks (multi-scale test): after ``record_soft_masks(codec)`` the store also keeps each mask's extra-level
RLEs (:mod:`vis_core.tracking.soft_masks`), encoded at once from the margins the associator passes to ``add``,
and its entries carry them as ``"soft_segmentations"`` (per frame a list of RLEs, or None), a field the
YouTube-VIS results writer strips (:func:`vis_core.engine.infer.run_inference`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from vis_core.tracking.soft_masks import SOFT_FIELD, SoftMaskCodec

__all__ = ["TrackState", "TrackStore", "build_results"]


class TrackState:
    """State of one track.

    ``segmentations`` starts at ``first_frame`` (earlier frames are implicitly ``None``) and is padded with
    ``None`` lazily, so a frame where the track is absent costs nothing until the track reappears. ``soft``
    (None unless soft masks are recorded) runs alongside it: per frame the extra-level RLEs or None.
    """

    __slots__ = ("track_id", "first_frame", "last_frame", "segmentations", "soft", "score_sum", "num_scored")

    def __init__(self, track_id: int, first_frame: int, num_classes: int, soft: bool = False):
        self.track_id = track_id
        self.first_frame = first_frame
        self.last_frame = -1
        self.segmentations: list[dict | None] = []
        self.soft: list[list[dict] | None] | None = [] if soft else None
        self.score_sum = np.zeros(num_classes, dtype=np.float64)
        self.num_scored = 0

    @property
    def num_present(self) -> int:
        """Number of frames in which the track has a mask (IDOL's ``valid`` counter)."""
        return self.num_scored

    def add(self, frame_idx: int, rle: dict, class_scores: np.ndarray, soft: list[dict] | None = None) -> None:
        """Record the track's mask (RLE), class scores (K,) and, when recorded, the mask's extra-level RLEs
        for frame ``frame_idx``."""
        if frame_idx <= self.last_frame:
            raise ValueError(
                f"track {self.track_id}: frame {frame_idx} added after frame {self.last_frame}; "
                "frames must be added in increasing order, once per track"
            )
        offset = frame_idx - self.first_frame
        self.segmentations.extend([None] * (offset - len(self.segmentations)))
        self.segmentations.append(rle)
        if self.soft is not None:
            self.soft.extend([None] * (offset - len(self.soft)))
            self.soft.append(soft)
        self.score_sum += class_scores
        self.num_scored += 1
        self.last_frame = frame_idx

    def mean_scores(self) -> np.ndarray:
        """(K,) mean of the class scores over the frames where the track is present."""
        return self.score_sum / max(self.num_scored, 1)

    def segmentation_list(self, num_frames: int) -> list[dict | None]:
        """Full per-frame list of length ``num_frames``: RLE where present, ``None`` elsewhere."""
        return self._full(self.segmentations, num_frames)

    def soft_list(self, num_frames: int) -> list[list[dict] | None] | None:
        """Per-frame extra-level RLEs (None where absent), or None when soft masks are not recorded."""
        return None if self.soft is None else self._full(self.soft, num_frames)

    def _full(self, frames: list, num_frames: int) -> list:
        return [None] * self.first_frame + frames + [None] * (num_frames - self.first_frame - len(frames))


class TrackStore:
    """All tracks of one video, fed frame by frame.

    Usage per frame: ``t = store.start_frame()`` then ``store.add(t, track_ids, rles, class_scores)``.
    """

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes
        self.num_frames = 0
        self.tracks: dict[int, TrackState] = {}
        self.soft_codec: SoftMaskCodec | None = None

    def record_soft_masks(self, codec: SoftMaskCodec) -> None:
        """Also keep every mask's extra-level RLEs (``add`` then needs the margins). Before the first frame."""
        if self.num_frames:
            raise RuntimeError("record_soft_masks must be called before the first frame")
        self.soft_codec = codec

    def __len__(self) -> int:
        return len(self.tracks)

    def __contains__(self, track_id: int) -> bool:
        return track_id in self.tracks

    def __getitem__(self, track_id: int) -> TrackState:
        return self.tracks[track_id]

    def start_frame(self) -> int:
        """Open a new frame and return its index (frames with no track still count)."""
        self.num_frames += 1
        return self.num_frames - 1

    def add(
        self,
        frame_idx: int,
        track_ids: Sequence[int],
        rles: Sequence[dict],
        class_scores: torch.Tensor | np.ndarray,
        margins: torch.Tensor | None = None,
    ) -> None:
        """Add one frame's masks for several tracks.

        Args:
            frame_idx: index returned by the last ``start_frame()``.
            track_ids: n track ids; an unknown id starts a new track at this frame.
            rles: n RLE dicts ``{"size": [H, W], "counts": str}``.
            class_scores: (n, K) per-class scores of those tracks in this frame.
            margins: (n, H, W) the masks' logits relative to their binarisation (``rles`` encode
                ``margins > 0``); needed (and only read) when soft masks are recorded.
        """
        if frame_idx != self.num_frames - 1:
            raise ValueError(f"add() for frame {frame_idx} but the current frame is {self.num_frames - 1}")
        if isinstance(class_scores, torch.Tensor):
            class_scores = class_scores.detach().to("cpu", torch.float64).numpy()
        class_scores = np.asarray(class_scores, dtype=np.float64)
        n = len(track_ids)
        if len(rles) != n or class_scores.ndim != 2 or class_scores.shape[0] != n:
            raise ValueError(
                f"add(): {n} track ids, {len(rles)} rles and class_scores of shape {class_scores.shape} "
                "must agree (class_scores is (n, K))"
            )
        if self.num_classes is None:
            self.num_classes = class_scores.shape[1]
        elif n and class_scores.shape[1] != self.num_classes:
            raise ValueError(
                f"add(): class_scores has {class_scores.shape[1]} classes, expected {self.num_classes}"
            )
        soft = self._soft_rles(margins, n)
        for tid, rle, cs, sm in zip(track_ids, rles, class_scores, soft, strict=True):
            tid = int(tid)
            state = self.tracks.get(tid)
            if state is None:
                state = self.tracks[tid] = TrackState(tid, frame_idx, self.num_classes, self.soft_codec is not None)
            state.add(frame_idx, rle, cs, sm)

    def _soft_rles(self, margins: torch.Tensor | None, n: int) -> list[list[dict] | None]:
        """The n masks' extra-level RLEs (None each when soft masks are not recorded)."""
        if self.soft_codec is None:
            return [None] * n
        if margins is None or margins.shape[0] != n:
            raise ValueError(f"add(): this store records soft masks and needs the margins of the {n} masks, got "
                             f"{None if margins is None else tuple(margins.shape)}")
        return self.soft_codec.encode(margins)

    def remove(self, track_id: int) -> None:
        """Drop a track's output (IDOL's early clean-up of short noisy tracks)."""
        del self.tracks[track_id]

    def finalize(
        self,
        video_id: int,
        category_ids: Sequence[int],
        *,
        score_threshold: float | None = None,
        topk: int | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[dict]:
        """YouTube-VIS results entries for this video.

        The video-level class score of a track is the mean of its per-frame class scores over the frames
        where it is present, optionally mapped by ``transform`` ((T, K_in) -> (T, K), e.g. a softmax that
        drops the no-object column). See ``build_results`` for the selection rules.
        """
        states = list(self.tracks.values())
        k_in = self.num_classes or 0
        means = np.stack([s.mean_scores() for s in states]) if states else np.zeros((0, k_in))
        scores = transform(means) if transform is not None else means
        segs = [s.segmentation_list(self.num_frames) for s in states]
        soft = [s.soft_list(self.num_frames) for s in states] if self.soft_codec is not None else None
        track_ids = [s.track_id for s in states]
        return build_results(
            video_id, category_ids, scores, segs,
            score_threshold=score_threshold, topk=topk, track_ids=track_ids, soft_segmentations=soft,
        )


def build_results(
    video_id: int,
    category_ids: Sequence[int],
    track_scores: np.ndarray,
    segmentations: Sequence[list[dict | None]],
    *,
    score_threshold: float | None = None,
    topk: int | None = None,
    track_ids: Sequence[int] | None = None,
    soft_segmentations: Sequence[list | None] | None = None,
) -> list[dict]:
    """Select (track, class) pairs and build results entries.

    Args:
        video_id: dataset video id written into every entry.
        category_ids: K dataset category ids; contiguous label k -> ``category_ids[k]``.
        track_scores: (T, K) video-level class scores of T tracks.
        segmentations: T per-frame lists (RLE or None), all of the same length.
        score_threshold: emit every pair with score > threshold, in (track, class) row-major order
            (IDOL, ``MULTI_CLS_ON``).
        topk: emit the k highest-scoring pairs over the flattened (T x K) scores, best first (MinVIS).
            Exactly one of ``score_threshold`` / ``topk`` must be given.
        track_ids: ids used in error messages (defaults to row indices).
        soft_segmentations: T per-frame lists of extra-level RLEs (soft masks); given, every entry carries
            its track's as ``"soft_segmentations"``.
    """
    if (score_threshold is None) == (topk is None):
        raise ValueError("build_results: give exactly one of score_threshold or topk")
    track_scores = np.asarray(track_scores, dtype=np.float64)
    num_tracks = len(segmentations)
    if track_ids is None:
        track_ids = list(range(num_tracks))
    if num_tracks == 0:
        return []
    if track_scores.shape[0] != num_tracks:
        raise ValueError(f"build_results: {track_scores.shape[0]} score rows for {num_tracks} tracks")
    if track_scores.shape[1] != len(category_ids):
        raise ValueError(
            f"build_results: scores have {track_scores.shape[1]} classes but {len(category_ids)} "
            "category_ids were given (category_ids maps contiguous label -> dataset category id)"
        )
    bad = ~np.isfinite(track_scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"build_results: video {video_id}, track {track_ids[row]}: score of class {col} is not finite"
        )

    if topk is not None:
        flat = track_scores.reshape(-1)
        k = min(topk, flat.size)
        # Stable sort so equal scores keep (track, class) order: deterministic output.
        order = np.argsort(-flat, kind="stable")[:k]
        pairs = [divmod(int(i), track_scores.shape[1]) for i in order]
    else:
        rows, cols = np.nonzero(track_scores > score_threshold)
        pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))

    entries = [
        {
            "video_id": video_id,
            "category_id": int(category_ids[label]),
            "score": float(track_scores[t, label]),
            "segmentations": list(segmentations[t]),
        }
        for t, label in pairs
    ]
    if soft_segmentations is not None:
        for entry, (t, _) in zip(entries, pairs, strict=True):
            entry[SOFT_FIELD] = list(soft_segmentations[t])
    return entries
