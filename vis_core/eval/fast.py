"""Fast YouTube-VIS / OVIS evaluator: the official numbers, computed without the per-frame Python loops.

Same result as :mod:`vis_core.eval.reference` (tests cross-check them), organised for speed:

* **Video IoUs from one pycocotools call per frame.** A pair's video IoU is ``I / (A_d + A_g - I)`` with ``I``
  the intersection summed over frames and ``A`` a track's area summed over frames: the union of a frame where
  only one track is present is that track's area, and an absent (null) frame adds exactly what an empty mask
  adds, nothing. So for every (video, category) and frame, one ``mask.iou`` call over all predictions x GTs
  (each RLE string decoded once, non-overlapping boxes skipped in C) gives every per-frame quantity needed:
  GT columns flagged *crowd* return ``i / area(d)``, a full-frame GT column returns ``area(d) / (H*W)``, and a
  full-frame prediction row returns ``area(g) / (H*W)``; all are exact integers again after ``rint`` (values
  are far below 2**52). Sums are exact integers, so ``I / U`` is bit-identical to the official float loop.
* **Only the top ``maxDets[-1]`` predictions per (video, category)** are looked at, as in the official code;
  the rest are never decoded.
* **Greedy matching as sparse, batched numpy.** A pair with IoU < 0.5 can never match (every threshold is
  >= 0.5), so only pairs with IoU >= 0.5 become candidate edges. All matching problems (video, category, GT
  ignore pattern, IoU threshold) advance together, one prediction rank at a time: at each rank, every problem
  takes its most preferred available edge: a non-ignored GT before an ignored one, then the higher IoU, then
  the later GT in file order (the official scan keeps the last of equal IoUs).
* **Accumulation** per (category, maxDets) sorts once and evaluates all ranges and thresholds with array ops.
  Only the (area, occlusion) slices that the summary reads are computed; the others stay -1.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_util

from vis_core.data.ytvis import YTVISAnnotations, to_compressed_rle
from vis_core.eval.params import EvalParams, average_area, occlusion_score
from vis_core.eval.summarize import Accumulated, needed_slices

# pycocotools.mask.area builds a uint8 array from its list length: lists above 255 fail on numpy 2
_AREA_CHUNK = 255


@dataclass
class _Group:
    """One (video, category): its GTs in file order and its top predictions in score order."""

    vid: int
    cat: int
    h: int
    w: int
    gt_anns: list = field(default_factory=list)
    gt_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gt_crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    gt_avg_area: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gt_occ: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dt_index: list = field(default_factory=list)  # into the results list: score order, top maxDets[-1]
    dt_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dt_avg_area: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ious: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def _build_groups(gt: YTVISAnnotations, results: list[dict], params: EvalParams) -> dict[tuple, _Group]:
    """(video_id, category_id) -> group, for every pair with a GT or a prediction; no mask is decoded here."""
    cats = set(gt.category_ids)
    groups: dict[tuple, _Group] = {}
    for vid in gt.video_ids:
        video = gt.videos[vid]
        for ann in gt.anns_by_video[vid]:
            if ann["category_id"] in cats:
                key = (vid, ann["category_id"])
                if key not in groups:
                    groups[key] = _Group(vid, ann["category_id"], video["height"], video["width"])
                groups[key].gt_anns.append(ann)
    for g in groups.values():
        anns = g.gt_anns
        g.gt_ids = np.array([a["id"] for a in anns])
        g.gt_crowd = np.array([bool(a["iscrowd"]) for a in anns], dtype=bool)
        g.gt_avg_area = np.array([average_area(a["areas"]) for a in anns], dtype=np.float64)
        g.gt_occ = np.array([occlusion_score(a["occlusion"]) if params.occlusion else 0.0 for a in anns])
    by_key = defaultdict(list)
    for i, res in enumerate(results):
        by_key[res["video_id"], res["category_id"]].append(i)
    for (vid, cat), idx in by_key.items():
        if (vid, cat) not in groups:
            video = gt.videos[vid]
            groups[vid, cat] = _Group(vid, cat, video["height"], video["width"])
        g = groups[vid, cat]
        scores = np.array([results[i]["score"] for i in idx], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[: params.max_dets[-1]]  # stable: file order breaks ties
        g.dt_index = [idx[i] for i in order]
        g.dt_scores = scores[order]
    return groups


def _special_rles(h: int, w: int) -> tuple[dict, dict]:
    """Compressed RLEs of an all-zero and an all-one (H, W) mask."""
    rles = [{"size": [h, w], "counts": [h * w]}, {"size": [h, w], "counts": [0, h * w]}]
    empty, full = mask_util.frPyObjects(rles, h, w)
    return empty, full


def _gt_rles(anns: list[dict], h: int, w: int, empty: dict) -> list[list[dict]]:
    """Per GT, per frame: compressed RLE (null -> the empty mask).

    List-count RLE (how YouTube-VIS stores GT) is converted for all GTs of a video in one pycocotools call.
    """
    out = [[empty] * len(a["segmentations"]) for a in anns]
    batch, where = [], []
    for j, ann in enumerate(anns):
        for t, s in enumerate(ann["segmentations"]):
            if not s:
                continue
            if isinstance(s, dict) and isinstance(s["counts"], list):
                # a clean dict: frPyObjects would read a dict of 4 keys as a box
                batch.append({"size": s["size"], "counts": s["counts"]})
                where.append((j, t))
            else:
                out[j][t] = to_compressed_rle(s, h, w)
    if batch:
        for (j, t), rle in zip(where, mask_util.frPyObjects(batch, h, w), strict=True):
            out[j][t] = rle
    return out


def _avg_area(total: np.ndarray, n_nonzero: np.ndarray) -> np.ndarray:
    """Mean of the non-zero frame areas (exact: sums of integers, one division), 0 when there are none."""
    return np.divide(total, n_nonzero, out=np.zeros(len(total)), where=n_nonzero > 0)


def _frame_lists(results: list[dict], dt_index: list, empty: dict) -> list[list]:
    """Per frame, the group's prediction RLEs in score order (null -> the empty mask)."""
    frames = [list(f) for f in zip(*[results[i]["segmentations"] for i in dt_index], strict=True)]
    for f in frames:
        if None in f:
            f[:] = [empty if s is None else s for s in f]
    return frames


def _group_ious(g: _Group, gt_segs: list[list[dict]], results: list[dict], empty: dict, full: dict) -> None:
    """Video IoUs (D, G) and prediction average areas of a group with GTs and predictions."""
    D, G = len(g.dt_index), len(g.gt_ids)
    hw = g.h * g.w
    crowd_flags = [1] * G + [0]
    gt_frames = [list(f) + [full] for f in zip(*gt_segs, strict=True)]
    dt_frames = _frame_lists(results, g.dt_index, empty)
    o = np.stack(
        [mask_util.iou(ds + [full], gs, crowd_flags) for ds, gs in zip(dt_frames, gt_frames, strict=True)]
    )  # (F, D + 1, G + 1)
    dt_area = np.rint(o[:, :D, G] * hw)  # full-frame GT column, not crowd: area(d) / (H*W)
    gt_area = np.rint(o[:, D, :G] * hw)  # full-frame prediction row against a crowd GT: area(g) / (H*W)
    inter = np.rint(o[:, :D, :G] * dt_area[:, :, None]).sum(axis=0)  # crowd GT columns: i / area(d)
    dt_total, gt_total = dt_area.sum(axis=0), gt_area.sum(axis=0)
    union = dt_total[:, None] + gt_total[None, :] - inter
    g.ious = np.divide(inter, union, out=np.zeros((D, G)), where=union > 0)
    g.dt_avg_area = _avg_area(dt_total, (dt_area > 0).sum(axis=0))


def _dt_only_areas(groups: list[_Group], results: list[dict]) -> None:
    """Average areas of the predictions of groups without GT (read by the area-range ignore rule).

    One pass over the video: all present masks of all these groups go through ``mask.area`` together.
    """
    segs = [s for g in groups for i in g.dt_index for s in results[i]["segmentations"]]
    where = [i for i, s in enumerate(segs) if s is not None]
    areas = np.zeros(len(segs))
    if where:
        present = [segs[i] for i in where]
        chunks = [mask_util.area(present[i : i + _AREA_CHUNK]) for i in range(0, len(present), _AREA_CHUNK)]
        areas[where] = np.concatenate(chunks)
    start = 0
    for g in groups:
        n = len(g.dt_index) * len(results[g.dt_index[0]]["segmentations"])
        a = areas[start : start + n].reshape(len(g.dt_index), -1)
        g.dt_avg_area = _avg_area(a.sum(axis=1), (a > 0).sum(axis=1))
        start += n


def _video_overlaps(groups: list[_Group], results: list[dict], evaluated_cats: set) -> None:
    """Fill ``ious`` and ``dt_avg_area`` of the groups of one video."""
    if not groups:
        return
    h, w = groups[0].h, groups[0].w
    empty, full = _special_rles(h, w)
    with_both = [g for g in groups if len(g.dt_index) and len(g.gt_ids)]
    gt_segs = _gt_rles([a for g in with_both for a in g.gt_anns], h, w, empty)
    start = 0
    for g in with_both:
        _group_ious(g, gt_segs[start : start + len(g.gt_ids)], results, empty, full)
        start += len(g.gt_ids)
    dt_only = [g for g in groups if len(g.dt_index) and not len(g.gt_ids)]
    # a category with no regular GT anywhere is never evaluated: its areas are never read
    _dt_only_areas([g for g in dt_only if g.cat in evaluated_cats], results)
    for g in dt_only:
        if g.cat not in evaluated_cats:
            g.dt_avg_area = np.zeros(len(g.dt_index))


# --------------------------------------------------------------------------------------------------- matching
@dataclass
class _Matches:
    """Matching of one group under one GT ignore pattern, per IoU threshold and prediction rank."""

    matched: np.ndarray  # (T, D) bool: matched to a GT whose id is non-zero (the official code tests the id)
    ignored: np.ndarray  # (T, D) bool: matched to an ignored GT
    n_regular: int  # GTs not ignored under this pattern


def _match_all(problems: list[tuple[_Group, np.ndarray]], params: EvalParams) -> list[_Matches]:
    """Greedy COCO matching of many (group, GT-ignore pattern) problems at every IoU threshold at once.

    ``problems[j] = (group, gt_ignore)``; returns one :class:`_Matches` per problem. A sub-problem is one
    (problem, threshold); its candidate edges are the (prediction, GT) pairs with IoU >= threshold.
    """
    T = len(params.iou_thrs)
    thrs = np.minimum(params.iou_thrs, 1 - 1e-10)
    d_max = max([len(g.dt_index) for g, _ in problems] + [1])
    matched = np.zeros((len(problems), T, d_max), dtype=bool)
    ignored = np.zeros((len(problems), T, d_max), dtype=bool)
    cols = defaultdict(list)
    n_slots = 0  # one availability slot per (sub-problem, GT)
    for j, (g, ign) in enumerate(problems):
        G = len(g.gt_ids)
        if len(g.dt_index) == 0 or G == 0:
            continue
        d, k = np.nonzero(g.ious >= thrs[0])
        if len(d) == 0:
            continue
        iou = g.ious[d, k]
        t_idx, e_idx = np.nonzero(
            iou[None, :] >= thrs[:, None]
        )  # one copy of an edge per threshold it passes
        k = k[e_idx]
        cols["sub"].append(j * T + t_idx)
        cols["rank"].append(d[e_idx])
        cols["gt"].append(k)
        cols["iou"].append(iou[e_idx])
        cols["ign"].append(ign[k])
        cols["crowd"].append(g.gt_crowd[k])
        cols["nonzero_id"].append(g.gt_ids[k] != 0)
        cols["slot"].append(n_slots + t_idx * G + k)
        n_slots += T * G
    if cols:
        e = {name: np.concatenate(v) for name, v in cols.items()}
        # within a rank and sub-problem, the preferred edge first: regular GT, higher IoU, later GT
        order = np.lexsort((-e["gt"], -e["iou"], e["ign"], e["sub"], e["rank"]))
        e = {name: v[order] for name, v in e.items()}
        rank, sub, slot, crowd = e["rank"], e["sub"], e["slot"], e["crowd"]
        taken = np.zeros(n_slots, dtype=bool)
        bounds = np.searchsorted(rank, np.arange(rank[-1] + 2))
        picks = []
        for r in range(len(bounds) - 1):  # predictions in score order: earlier ones choose first
            lo, hi = bounds[r], bounds[r + 1]
            idx = np.flatnonzero(~taken[slot[lo:hi]] | crowd[lo:hi]) + lo  # a crowd GT absorbs many
            if len(idx) == 0:
                continue
            first = np.ones(len(idx), dtype=bool)
            first[1:] = sub[idx[1:]] != sub[idx[:-1]]
            pick = idx[first]
            taken[slot[pick]] = True
            picks.append(pick)
        if picks:
            pick = np.concatenate(picks)
            j, t = np.divmod(sub[pick], T)
            matched[j, t, rank[pick]] = e["nonzero_id"][pick]
            ignored[j, t, rank[pick]] = e["ign"][pick]
    return [
        _Matches(
            matched[j, :, : len(g.dt_index)], ignored[j, :, : len(g.dt_index)], int(len(ign) - ign.sum())
        )
        for j, (g, ign) in enumerate(problems)
    ]


# ------------------------------------------------------------------------------------------------- accumulate
def _pr_curves(tps: np.ndarray, fps: np.ndarray, npig: int, rec_thrs: np.ndarray):
    """(T, N) true / false positive flags in score order -> precision (T, R) at the recall thresholds and
    final recall (T,)."""
    T, nd = tps.shape
    R = len(rec_thrs)
    if nd == 0:
        return np.zeros((T, R)), np.zeros(T)
    tp = np.cumsum(tps, axis=1).astype(np.float64)
    fp = np.cumsum(fps, axis=1).astype(np.float64)
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # envelope: non-increasing from the right
    q = np.zeros((T, R))
    for t in range(T):
        inds = np.searchsorted(rc[t], rec_thrs, side="left")
        ok = inds < nd
        q[t, ok] = pr[t, inds[ok]]
    return q, rc[:, -1]


def evaluate_fast(gt: YTVISAnnotations, results: list[dict], params: EvalParams) -> Accumulated:
    """Evaluate validated inputs; returns the same arrays as the reference on the slices the summary reads."""
    groups = _build_groups(gt, results, params)
    cat_ids, vid_ids = gt.category_ids, gt.video_ids
    cats_with_gt = {c for (_, c), g in groups.items() if len(g.gt_ids) and not g.gt_crowd.all()}
    by_video = defaultdict(list)
    for (vid, _), g in groups.items():
        by_video[vid].append(g)
    for vid in vid_ids:
        _video_overlaps(by_video.get(vid, []), results, cats_with_gt)

    slices = needed_slices(params)
    # GT ignore pattern per (group, slice); identical patterns share one matching problem
    problems, problem_of = [], {}
    pattern_ids: dict[tuple, int] = {}
    for key, g in groups.items():
        for a, o in slices:
            a_lo, a_hi = params.area_rngs[a]
            ign = g.gt_crowd | (g.gt_avg_area < a_lo) | (g.gt_avg_area > a_hi)
            if params.occlusion:
                o_lo, o_hi = params.occ_rngs[o]
                ign = ign | (g.gt_occ < o_lo) | (g.gt_occ > o_hi)
            pkey = (key, ign.tobytes())
            if pkey not in pattern_ids:
                pattern_ids[pkey] = len(problems)
                problems.append((g, ign))
            problem_of[key, a, o] = pattern_ids[pkey]
    matches = _match_all(problems, params)

    T, R, K = len(params.iou_thrs), len(params.rec_thrs), len(cat_ids)
    A, O, M = len(params.area_rngs), len(params.occ_rngs), len(params.max_dets)
    precision = -np.ones((T, R, K, A, O, M))
    recall = -np.ones((T, K, A, O, M))
    for k, cat in enumerate(cat_ids):
        keys = [(vid, cat) for vid in vid_ids if (vid, cat) in groups]
        if not keys or cat not in cats_with_gt:
            continue  # no regular GT in any video: every slice stays -1, as in the official code
        scores = np.concatenate([groups[key].dt_scores for key in keys])
        ranks = np.concatenate([np.arange(len(groups[key].dt_index)) for key in keys])
        dt_area = np.concatenate([groups[key].dt_avg_area for key in keys])
        # per maxDets: the first maxDet predictions of every video, then one stable sort by score
        orders = []
        for max_det in params.max_dets:
            keep = np.flatnonzero(ranks < max_det)
            orders.append(keep[np.argsort(-scores[keep], kind="stable")])
        for a, o in slices:
            a_lo, a_hi = params.area_rngs[a]
            npig = sum(matches[problem_of[key, a, o]].n_regular for key in keys)
            if npig == 0:
                continue
            matched = np.concatenate([matches[problem_of[key, a, o]].matched for key in keys], axis=1)
            ignored = np.concatenate([matches[problem_of[key, a, o]].ignored for key in keys], axis=1)
            # unmatched predictions outside the area range are ignored (never by occlusion range)
            ignored = ignored | (~matched & ((dt_area < a_lo) | (dt_area > a_hi)))
            for m, inds in enumerate(orders):
                mt, ig = matched[:, inds], ignored[:, inds]
                q, rc = _pr_curves(mt & ~ig, ~mt & ~ig, npig, params.rec_thrs)
                precision[:, :, k, a, o, m] = q
                recall[:, k, a, o, m] = rc
    return Accumulated(params=params, cat_ids=list(cat_ids), precision=precision, recall=recall)
