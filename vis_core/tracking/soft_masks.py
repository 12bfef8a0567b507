"""Soft masks kept as RLE: a mask probability map quantised to a few levels, one binary RLE per level.

The online associators binarise each mask at probability 0.5 (logit 0) and encode it to RLE at once, so no
probability outlives its frame (the streaming guarantee: memory flat in the video length T). A multi-scale
test that averages the scales' probabilities (:mod:`vis_core.tracking.multiscale`) needs more than the binary
mask, but must not keep float masks per track and frame. So, when asked (:meth:`TrackStore.record_soft_masks
<vis_core.tracking.track_state.TrackStore.record_soft_masks>`), the store also keeps per (track, frame) the
nested masks ``p > l`` for a few extra levels ``l`` (default 0.25 and 0.75), each an RLE like the binary one.

Cost: ``len(levels)`` more RLEs per (track, frame). An RLE's size follows the mask's boundary length, and the
level masks are nested shapes of about the binary mask's outline, so each costs about what the binary RLE
does. Measured on the ovis_2nd smoke checkpoints (IDOL, 96 x 160 frames): 68 bytes of RLE counts per binary
mask, 137 for the two default levels (2.01x; six levels 6.0x), so the masks a multi-scale run holds are 3x
the single-scale RLE output, and the soft sidecar json of a single-scale run (entries with their soft masks)
is 2.9x its results json. It grows only with the output, never with a float map, so memory stays flat in T.

Decoding gives a quantised probability. With the thresholds ``t_1 < ... < t_L`` (the levels and 0.5), a pixel
above ``t_L`` decodes to 1, one not above ``t_1`` to 0, one in ``(t_k, t_{k+1}]`` to the bin's midpoint. The
outer bins decode to 0 and 1 because the sigmoid of sharp mask logits is saturated almost everywhere but in a
thin band along the boundary, which the inner bins hold. Since 0.5 is always a threshold, thresholding a
lone decoded mask at 0.5 gives back its binary mask exactly; with no extra level the decoded mask is the
0/1 mask (a vote of binary masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vis_core.data.ytvis import decode_segmentation, masks_to_rles

__all__ = ["DEFAULT_LEVELS", "SOFT_FIELD", "SoftMaskCodec"]

DEFAULT_LEVELS = (0.25, 0.75)
SOFT_FIELD = "soft_segmentations"  # results entries' field of the soft masks (never in a results json)


class SoftMaskCodec:
    """Encodes mask margins into extra-level RLEs and decodes (binary RLE, extra RLEs) to probabilities.

    Args:
        levels: extra probability levels in (0, 1), 0.5 excluded (the binary mask is that level).
    """

    def __init__(self, levels: Sequence[float] = DEFAULT_LEVELS):
        levels = tuple(sorted(float(v) for v in levels))
        if any(not 0.0 < v < 1.0 or v == 0.5 for v in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"soft mask levels must be distinct values in (0, 1) other than 0.5, got {levels}")
        self.levels = levels
        thresholds = sorted((*levels, 0.5))
        # value of a pixel above exactly k thresholds: 0, inner-bin midpoints, 1
        mids = [(a + b) / 2 for a, b in zip(thresholds[:-1], thresholds[1:], strict=True)]
        self._values = np.array([0.0, *mids, 1.0], dtype=np.float32)
        self._cuts = torch.logit(torch.tensor(levels, dtype=torch.float64)).float() if levels else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoftMaskCodec) and other.levels == self.levels

    def __hash__(self) -> int:
        return hash(self.levels)

    def __repr__(self) -> str:
        return f"SoftMaskCodec(levels={list(self.levels)})"

    def encode(self, margins: Tensor) -> list[list[dict]]:
        """Extra-level RLEs of ``n`` masks.

        Args:
            margins: ``(n, H, W)`` logits relative to the binarisation, i.e. the binary mask is ``margins > 0``
                and the probability ``sigmoid(margins)`` (mask logits minus the mask threshold).
        Returns:
            per mask, one RLE per level (``margins > logit(level)``), in increasing level order.
        """
        n = margins.shape[0]
        if self._cuts is None or n == 0:
            return [[] for _ in range(n)]
        cuts = self._cuts.to(margins.device)[None, :, None, None]
        bits = margins.float()[:, None] > cuts  # (n, L, H, W), nested because the cuts increase
        rles = masks_to_rles(bits.flatten(0, 1).cpu().numpy())
        k = len(self.levels)
        return [rles[i * k:(i + 1) * k] for i in range(n)]

    def decode(self, binary: dict | None, extra: Sequence[dict] | None, size: tuple[int, int]) -> np.ndarray:
        """``(H, W)`` float32 quantised probability of one frame (module docstring).

        ``binary`` None (the track is absent in this frame) decodes to zeros; ``extra`` None (no soft
        encoding: a clip or offline method's mask, or results without one) to the 0/1 binary mask.
        """
        h, w = size
        if binary is None:
            return np.zeros((h, w), dtype=np.float32)
        fg = decode_segmentation(binary, h, w)
        if extra is None:
            return fg.astype(np.float32)
        if len(extra) != len(self.levels):
            raise ValueError(f"soft mask has {len(extra)} level masks, the codec has levels {list(self.levels)}")
        passed = fg.astype(np.int64)  # thresholds passed, the levels' nesting makes it the bin index
        for rle in extra:
            passed += decode_segmentation(rle, h, w)
        return self._values[passed]
