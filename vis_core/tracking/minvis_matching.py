"""MinVIS inference-time association: frame-to-frame Hungarian matching of query embeddings.

Re-implements NVlabs/MinVIS ``VideoMaskFormer_frame.match_from_embds`` / ``post_processing`` /
``inference_video`` in streaming form:

* every query slot is a track; frame t's queries are permuted (Hungarian on cost 1 - cosine similarity of
  L2-normalised embeddings) to align with frame t-1's *already permuted* queries, so slot j follows one
  object through the video;
* video class score of slot j = softmax of its logits averaged over all frames, no-object column dropped;
  the top-10 (slot, class) pairs over the flattened (Q x K) scores are the output instances;
* masks: mask logit > 0 per frame, at whatever resolution the caller passes (resize before).

Streaming keeps per slot a running logit sum and one RLE per frame (Q RLEs per frame, since the top-10 is
only known at the end); no full-resolution mask outlives its frame. For the multi-scale test
(``record_soft_masks``) each slot also keeps its mask's soft encoding (:mod:`vis_core.tracking.soft_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vis_core.data.ytvis import masks_to_rles
from vis_core.tracking.soft_masks import SoftMaskCodec
from vis_core.tracking.track_state import TrackStore

__all__ = ["match_from_embeds", "associate_sequence", "softmax_drop_no_object", "write_slot_frame", "MinVISAssociator"]


def match_from_embeds(prev_embeds: torch.Tensor, cur_embeds: torch.Tensor) -> torch.Tensor:
    """Permutation aligning the current queries to the previous (already aligned) ones.

    Args:
        prev_embeds: (Q, C) embeddings of frame t-1 in track order. cur_embeds: (Q, C) of frame t.
    Returns:
        (Q,) long ``perm`` with ``cur_embeds[perm[j]]`` assigned to track j (minimum total 1 - cosine).
    """
    prev = torch.nn.functional.normalize(prev_embeds.float(), dim=1)
    cur = torch.nn.functional.normalize(cur_embeds.float(), dim=1)
    cost = 1 - prev @ cur.T  # (track, current), as the official's transposed cost matrix
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols, dtype=torch.long, device=cur_embeds.device)


def associate_sequence(embeds: torch.Tensor) -> torch.Tensor:
    """Hold-all form: (T, Q, C) embeddings -> (T, Q) permutations (frame 0 is the identity)."""
    perms = [torch.arange(embeds.shape[1], device=embeds.device)]
    ref = embeds[0]
    for t in range(1, embeds.shape[0]):
        perm = match_from_embeds(ref, embeds[t])
        ref = embeds[t][perm]
        perms.append(perm)
    return torch.stack(perms)


def softmax_drop_no_object(mean_logits: np.ndarray) -> np.ndarray:
    """(T, K+1) averaged logits -> (T, K) class probabilities (softmax, then drop the no-object column)."""
    z = mean_logits - mean_logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p[:, :-1]


def write_slot_frame(store: TrackStore, mask_logits: torch.Tensor, logits: torch.Tensor, mask_threshold: float,
                     perm: torch.Tensor | None = None) -> None:
    """One frame of slot tracks (every query slot is a track: MinVIS, DVIS) into ``store``, as RLE at once.

    Args:
        mask_logits: ``(Q, H, W)`` at the output resolution, in query order. logits: ``(Q, K+1)``.
        mask_threshold: masks are ``logit > mask_threshold``.
        perm: ``(Q,)`` query of each slot (default: slot ``j`` = query ``j``).
    """
    frame = store.start_frame()
    q = mask_logits.shape[0]
    order = torch.arange(q, device=mask_logits.device) if perm is None else perm
    # Encode in query order and permute the RLE list: no copy of the full-resolution masks.
    rles = masks_to_rles((mask_logits > mask_threshold).cpu().numpy())
    margins = None if store.soft_codec is None else mask_logits[order] - mask_threshold
    store.add(frame, range(q), [rles[i] for i in order.tolist()], logits[order], margins)


class MinVISAssociator:
    """Streaming MinVIS association for one video.

    Args:
        num_queries: Q, the number of query slots (= tracks).
        topk: instances kept per video (official: 10).
        mask_threshold: mask logit threshold (official: 0).
    """

    def __init__(self, num_queries: int, topk: int = 10, mask_threshold: float = 0.0):
        self.num_queries = num_queries
        self.topk = topk
        self.mask_threshold = mask_threshold
        self.store = TrackStore()
        self._prev_embeds: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.store.num_frames

    def update(self, embeds: torch.Tensor, logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """Process one frame.

        Args:
            embeds: (Q, C) query embeddings. logits: (Q, K+1) class logits (last column: no object).
            mask_logits: (Q, H, W) mask logits at the output resolution.
        Returns:
            (Q,) long permutation: query ``perm[j]`` of this frame continues track j.
        """
        q = self.num_queries
        for name, t in (("embeds", embeds), ("logits", logits), ("mask_logits", mask_logits)):
            if t.shape[0] != q:
                raise ValueError(f"MinVISAssociator.update: {name} has {t.shape[0]} queries (shape "
                                 f"{tuple(t.shape)}), expected num_queries={q}")
        if self._prev_embeds is None:
            perm = torch.arange(q, device=embeds.device)
        else:
            perm = match_from_embeds(self._prev_embeds, embeds)
        self._prev_embeds = embeds[perm]
        write_slot_frame(self.store, mask_logits, logits, self.mask_threshold, perm)
        return perm

    def record_soft_masks(self, codec: SoftMaskCodec) -> None:
        """Also keep each slot's soft mask encoding (multi-scale test; before the first frame)."""
        self.store.record_soft_masks(codec)

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        """Top-k (track, class) results entries, best first; each track has an RLE in every frame."""
        return self.store.finalize(video_id, category_ids, topk=self.topk, transform=softmax_drop_no_object)
