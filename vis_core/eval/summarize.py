"""From accumulated precision / recall to the official summary numbers, printed lines and the json object.

``summarize`` reproduces ``_summarizeDets`` of ``ytvoseval.py`` (12 stats) and ``oviseval.py`` (18 stats):
each stat is the mean of the entries > -1 of one slice of the precision or recall array, -1 when there are
none (no category has a non-ignored GT in that slice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vis_core.eval.params import EvalParams


@dataclass
class Accumulated:
    """Output of an evaluator: ``precision[T, R, K, A, O, M]``, ``recall[T, K, A, O, M]``; -1 = undefined."""

    params: EvalParams
    cat_ids: list
    precision: np.ndarray
    recall: np.ndarray


# (name, ap?, IoU threshold, area label, occlusion label, maxDets) in the official order
def _stat_specs(params: EvalParams) -> list[tuple]:
    m = params.max_dets
    specs = [
        ("AP", 1, None, "all", "all", m[2]),
        ("AP50", 1, 0.5, "all", "all", m[2]),
        ("AP75", 1, 0.75, "all", "all", m[2]),
        ("APs", 1, None, "small", "all", m[2]),
        ("APm", 1, None, "medium", "all", m[2]),
        ("APl", 1, None, "large", "all", m[2]),
    ]
    if params.occlusion:
        specs += [(f"AP_{o}", 1, None, "all", o, m[2]) for o in ("light", "medium", "heavy")]
    specs += [
        ("AR1", 0, None, "all", "all", m[0]),
        ("AR10", 0, None, "all", "all", m[1]),
        ("AR100", 0, None, "all", "all", m[2]),
        ("ARs", 0, None, "small", "all", m[2]),
        ("ARm", 0, None, "medium", "all", m[2]),
        ("ARl", 0, None, "large", "all", m[2]),
    ]
    if params.occlusion:
        specs += [(f"AR_{o}", 0, None, "all", o, m[2]) for o in ("light", "medium", "heavy")]
    return specs


def needed_slices(params: EvalParams) -> list[tuple[int, int]]:
    """(area index, occlusion index) pairs that the summary reads; a fast evaluator may compute only these."""
    out = []
    for _, _, _, a_lbl, o_lbl, _ in _stat_specs(params):
        key = (params.area_lbls.index(a_lbl), params.occ_lbls.index(o_lbl))
        if key not in out:
            out.append(key)
    return out


def _mean_defined(s: np.ndarray) -> float:
    s = s[s > -1]
    return float(np.mean(s)) if len(s) else -1.0


def _slice(acc: Accumulated, ap: int, iou_thr, a_lbl: str, o_lbl: str, max_det: int) -> np.ndarray:
    p = acc.params
    a, o, m = p.area_lbls.index(a_lbl), p.occ_lbls.index(o_lbl), p.max_dets.index(max_det)
    s = acc.precision if ap else acc.recall
    if iou_thr is not None:
        # exact float equality, as the official code (linspace hits 0.5 and 0.75 exactly)
        s = s[np.where(iou_thr == p.iou_thrs)[0]]
    return s[:, :, :, a, o, m] if ap else s[:, :, a, o, m]


def summarize(acc: Accumulated) -> dict[str, float]:
    """The official summary stats, in the official order, as ``{name: value}`` (fractions; -1 = undefined)."""
    return {name: _mean_defined(_slice(acc, *spec)) for name, *spec in _stat_specs(acc.params)}


def per_category_stats(acc: Accumulated) -> dict[str, dict[str, float]]:
    """Per category id (as a string, json keys): AP, AP50, AP75 and AR100 at area all, occlusion all."""
    p = acc.params
    m = p.max_dets[-1]
    out = {}
    for k, cat in enumerate(acc.cat_ids):
        out[str(cat)] = {
            "AP": _mean_defined(_slice(acc, 1, None, "all", "all", m)[:, :, k]),
            "AP50": _mean_defined(_slice(acc, 1, 0.5, "all", "all", m)[:, :, k]),
            "AP75": _mean_defined(_slice(acc, 1, 0.75, "all", "all", m)[:, :, k]),
            "AR100": _mean_defined(_slice(acc, 0, None, "all", "all", m)[:, k]),
        }
    return out


def format_summary(acc: Accumulated, stats: dict[str, float] | None = None) -> str:
    """The official printed summary, one line per stat."""
    p = acc.params
    stats = stats if stats is not None else summarize(acc)
    lines = []
    for name, ap, iou_thr, a_lbl, o_lbl, max_det in _stat_specs(p):
        title = "Average Precision" if ap else "Average Recall"
        kind = "(AP)" if ap else "(AR)"
        iou = f"{p.iou_thrs[0]:0.2f}:{p.iou_thrs[-1]:0.2f}" if iou_thr is None else f"{iou_thr:0.2f}"
        occ = f" | occ={o_lbl:>6s}" if p.occlusion else ""
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou:<9} | area={a_lbl:>6s}{occ} | maxDets={max_det:>3d} ]"
            f" = {stats[name]:0.3f}"
        )
    return "\n".join(lines)


def challenge_2022_map(map_short: float, map_long: float) -> float:
    """YouTube-VIS 2022 challenge score: the mean of mAP on short videos (mAP_S) and on long videos (mAP_L).

    mAP_L is the same evaluator run on the long-video annotation set.
    """
    for name, v in (("map_short", map_short), ("map_long", map_long)):
        if not np.isfinite(v) or v < 0 or v > 1:
            raise ValueError(f"challenge_2022_map: {name} must be a fraction in [0, 1], got {v!r}")
    return (float(map_short) + float(map_long)) / 2
