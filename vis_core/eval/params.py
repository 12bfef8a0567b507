"""Evaluation parameters of the official YouTube-VIS (``ytvoseval.py``) and OVIS (``oviseval.py``) evaluators.

Both evaluators share COCO's thresholds; OVIS adds an occlusion-range axis. Every range is inclusive at both
ends (a GT is outside a range when ``value < lo or value > hi``), so an average area of exactly 128**2 is both
``small`` and ``medium``, and an occlusion score of exactly 0.25 is both ``light`` and ``medium``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# OVIS per-frame occlusion label -> score (null frames are skipped).
OCCLUSION_SCORES = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# OVIS order: the AP block, then the AP occlusion splits, the AR block, then the AR occlusion splits
OCCLUSION_STAT_NAMES = (
    STAT_NAMES[:6] + ("AP_light", "AP_medium", "AP_heavy") + STAT_NAMES[6:] + ("AR_light", "AR_medium", "AR_heavy")
)


@dataclass
class EvalParams:
    """Thresholds of one evaluation.

    ``occ_rngs`` has the single range ``all`` for YouTube-VIS (no occlusion axis) and four ranges for OVIS.
    Arrays produced by the evaluators are indexed ``precision[T, R, K, A, O, M]`` and
    ``recall[T, K, A, O, M]``: T IoU thresholds, R recall thresholds, K categories, A area ranges,
    O occlusion ranges, M maxDets.
    """

    occlusion: bool = False
    # np.linspace, not np.arange: arange's points drift above the true values (same as the official code)
    iou_thrs: np.ndarray = field(default_factory=lambda: np.linspace(0.5, 0.95, 10, endpoint=True))
    rec_thrs: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.00, 101, endpoint=True))
    max_dets: tuple[int, ...] = (1, 10, 100)
    area_rngs: tuple[tuple[float, float], ...] = (
        (0, 1e5**2),
        (0, 128**2),
        (128**2, 256**2),
        (256**2, 1e5**2),
    )
    area_lbls: tuple[str, ...] = ("all", "small", "medium", "large")
    occ_rngs: tuple[tuple[float, float], ...] = ((0, 1),)
    occ_lbls: tuple[str, ...] = ("all",)

    @property
    def stat_names(self) -> tuple[str, ...]:
        return OCCLUSION_STAT_NAMES if self.occlusion else STAT_NAMES


def build_params(occlusion: bool = False) -> EvalParams:
    """Official parameters: YouTube-VIS, or OVIS with the light / medium / heavy occlusion ranges."""
    if not occlusion:
        return EvalParams()
    return EvalParams(
        occlusion=True,
        occ_rngs=((0, 1), (0, 0.25), (0.25, 0.5), (0.5, 1)),
        occ_lbls=("all", "light", "medium", "heavy"),
    )


def average_area(areas: list) -> float:
    """Mean of the non-zero, non-null per-frame areas of a track; 0 when there are none (official rule)."""
    kept = [a for a in areas if a]
    return float(np.array(kept).mean()) if kept else 0.0


def occlusion_score(labels: list) -> float:
    """OVIS occlusion score of a GT track: mean of the top ceil(n/2) per-frame scores, nulls skipped.

    Raises ``ValueError`` when every label is null (the official code divides by zero there).
    """
    scores = sorted(OCCLUSION_SCORES[a] for a in labels if a is not None)
    if not scores:
        raise ValueError("no occlusion label in any frame")
    top = scores[-math.ceil(len(scores) / 2) :]
    return sum(top) / len(top)
