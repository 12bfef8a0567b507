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

from vis_core.data.ytvis import VISFormatError, YTVISAnnotations, to_compressed_rle
from vis_core.eval.params import EvalParams, average_area, occlusion_score
from vis_core.eval.runs import (
    MalformedRLE,
    MaskRuns,
    column_table,
    decode_strings,
    pair_intersections,
    runs_from_count_lists,
)
from vis_core.eval.summarize import Accumulated, needed_slices


@dataclass
class _Group:
    """One (video, category): its GTs in file order and its top predictions in score order."""

    vid: int
    cat: int
    h: int
    w: int
    gt_anns: list = field(default_factory=list)
    gt_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gt_ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # always ignored (crowd)
    gt_crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # may absorb many predictions
    gt_avg_area: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gt_occ: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dt_index: list = field(default_factory=list)  # into the results list: score order, top maxDets[-1]
    dt_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dt_avg_area: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ious: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def _gt_avg_area(areas: list) -> float:
    """:func:`~vis_core.eval.params.average_area`, without numpy when the areas are integers (pixel counts).

    For integers the official ``np.array(kept).mean()`` sums exactly (far below 2**53) and divides once, as
    ``sum / len`` does; anything else takes the official path.
    """
    kept = [a for a in areas if a]
    if kept and all(type(a) is int for a in kept):
        return sum(kept) / len(kept)
    return average_area(areas)


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
        # as the official code: `ignore = bool(iscrowd)`, while matching tests `int(iscrowd)`
        g.gt_ignore = np.array([bool(a["iscrowd"]) for a in anns], dtype=bool)
        g.gt_crowd = np.array([int(a["iscrowd"]) != 0 for a in anns], dtype=bool)
        g.gt_avg_area = np.array([_gt_avg_area(a["areas"]) for a in anns], dtype=np.float64)
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


def _where_result(results: list[dict], g: _Group, k: int, n_frames: int) -> str:
    """Names the prediction and frame of mask ``k`` of group ``g`` (for error messages)."""
    res = results[g.dt_index[k // n_frames]]
    return (
        f"result (video_id {res['video_id']}, category_id {res['category_id']}, score {res['score']}): "
        f"segmentations[{k % n_frames}]"
    )


def _prediction_runs(groups: list[_Group], results: list[dict], h: int, w: int, n_frames: int) -> MaskRuns:
    """All prediction masks of these groups (group, then score order, then frame) decoded at once.

    A null frame becomes the empty mask: it adds nothing to any intersection, union or area, as null does.
    """
    empty = mask_util.frPyObjects([{"size": [h, w], "counts": [h * w]}], h, w)[0]["counts"].decode("ascii")
    strings = [
        s["counts"] if s is not None else empty for g in groups for i in g.dt_index for s in results[i]["segmentations"]
    ]
    try:
        return decode_strings(strings, h, w)
    except MalformedRLE as e:
        k = e.index
        for g in groups:  # the group of mask k
            n = len(g.dt_index) * n_frames
            if k < n:
                raise VISFormatError(f"{_where_result(results, g, k, n_frames)}: {e.reason}") from None
            k -= n
        raise


def _gt_runs(groups: list[_Group], h: int, w: int, n_frames: int) -> MaskRuns:
    """All GT masks of these groups (group, then file order, then frame); null frames become the empty mask.

    YouTube-VIS GT stores list counts, read as they are; polygons and string RLEs go through pycocotools first.
    """
    segs = [s for g in groups for a in g.gt_anns for s in a["segmentations"]]
    full = [h * w]
    try:
        try:  # list counts (or null) everywhere: no conversion at all
            lists = [s["counts"] if s else full for s in segs]
            fast = set(map(type, lists)) == {list}
        except TypeError:  # polygons
            fast = False
        if fast:
            return runs_from_count_lists(lists, h, w)
        empty = mask_util.frPyObjects([{"size": [h, w], "counts": full}], h, w)[0]["counts"]
        return decode_strings([to_compressed_rle(s, h, w)["counts"] if s else empty for s in segs], h, w)
    except MalformedRLE as e:
        k = e.index
        for g in groups:
            n = len(g.gt_anns) * n_frames
            if k < n:
                ann = g.gt_anns[k // n_frames]
                raise VISFormatError(
                    f"annotation (id {ann['id']}, video_id {ann['video_id']}): "
                    f"segmentations[{k % n_frames}]: {e.reason}"
                ) from None
            k -= n
        raise


def _avg_area(areas: np.ndarray) -> np.ndarray:
    """(N, T) frame areas -> mean of the non-zero ones per row (exact: an integer sum, one division), else 0."""
    total, n_nonzero = areas.sum(axis=1), np.count_nonzero(areas, axis=1)
    return np.divide(total, n_nonzero, out=np.zeros(len(total)), where=n_nonzero > 0)


@dataclass
class _Candidates:
    """The (prediction, GT) pairs of one group that may reach IoU 0.5, and their frame pairs."""

    d: np.ndarray  # (P,) prediction rank
    g: np.ndarray  # (P,) GT index
    union_base: np.ndarray  # (P,) A_d + A_g: total areas over the video
    mask_d: np.ndarray  # (Q,) frame pairs: prediction mask index
    mask_g: np.ndarray  # (Q,) GT mask index
    pair: np.ndarray  # (Q,) which pair


def _candidates(g: _Group, dt: MaskRuns, gt: MaskRuns, gt_height: np.ndarray, dt_base: int, gt_base: int,
                n_frames: int) -> _Candidates:
    """Pairs of a group whose IoU may reach 0.5, the lowest threshold (no other pair can ever match).

    A frame's intersection is at most ``min(area_d, area_g, shared columns * GT height)``; when these bounds
    summed over the video give ``3 * I_max < A_d + A_g``, the video IoU ``I / (A_d + A_g - I)`` stays below 0.5.
    Only frames where the bound is positive need an intersection.
    """
    D, G, T = len(g.dt_index), len(g.gt_ids), n_frames
    dsl, gsl = slice(dt_base, dt_base + D * T), slice(gt_base, gt_base + G * T)
    da, ga = dt.area[dsl].reshape(D, 1, T), gt.area[gsl].reshape(1, G, T)
    cols = np.minimum(dt.x1[dsl].reshape(D, 1, T), gt.x1[gsl].reshape(1, G, T))
    cols -= np.maximum(dt.x0[dsl].reshape(D, 1, T), gt.x0[gsl].reshape(1, G, T)) - 1
    bound = np.minimum(np.minimum(da, ga), np.maximum(cols, 0) * gt_height[gsl].reshape(1, G, T))  # (D, G, T)
    total = bound.sum(axis=2)
    base = da.sum(axis=2) + ga.sum(axis=2)
    pd, pg = np.nonzero((3 * total >= base) & (total > 0))
    k, t = np.nonzero(bound[pd, pg] > 0)
    return _Candidates(pd, pg, base[pd, pg], dt_base + pd[k] * T + t, gt_base + pg[k] * T + t, k)


def _video_overlaps(groups: list[_Group], results: list[dict], evaluated_cats: set, n_frames: int) -> None:
    """Fill ``ious`` (D, G) and ``dt_avg_area`` (D,) of the groups of one video.

    Only IoUs that can reach the lowest threshold are computed; the others stay 0 (matching never looks at a
    pair below 0.5). A category with no regular GT anywhere is never evaluated: its numbers are never read.
    """
    for g in groups:
        g.ious, g.dt_avg_area = np.zeros((len(g.dt_index), len(g.gt_ids))), np.zeros(len(g.dt_index))
    dt_groups = [g for g in groups if len(g.dt_index) and g.cat in evaluated_cats]
    if not dt_groups or n_frames == 0:
        return
    h, w = dt_groups[0].h, dt_groups[0].w
    dt = _prediction_runs(dt_groups, results, h, w, n_frames)
    dt_base = np.cumsum([0] + [len(g.dt_index) * n_frames for g in dt_groups])
    for g, b in zip(dt_groups, dt_base, strict=False):
        g.dt_avg_area = _avg_area(dt.area[b : b + len(g.dt_index) * n_frames].reshape(-1, n_frames))
    both = [(g, b) for g, b in zip(dt_groups, dt_base, strict=False) if len(g.gt_ids)]
    if not both:
        return
    gt = _gt_runs([g for g, _ in both], h, w, n_frames)
    table = column_table(gt)
    gt_height = table.y1 - table.y0 + 1
    gt_base = np.cumsum([0] + [len(g.gt_ids) * n_frames for g, _ in both])
    cands = [
        _candidates(g, dt, gt, gt_height, b, gb, n_frames) for (g, b), gb in zip(both, gt_base, strict=False)
    ]
    inter = pair_intersections(
        dt, gt, table, np.concatenate([c.mask_d for c in cands]), np.concatenate([c.mask_g for c in cands])
    )
    start = 0
    for (g, _), c in zip(both, cands, strict=True):
        i_pair = np.bincount(c.pair, weights=inter[start : start + len(c.pair)], minlength=len(c.d))  # exact
        start += len(c.pair)
        union = c.union_base - i_pair
        g.ious[c.d, c.g] = np.divide(i_pair, union, out=np.zeros(len(union)), where=union > 0)


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


def _problems(groups: dict[tuple, _Group], params: EvalParams, slices: list) -> tuple[list, dict]:
    """Matching problems: one per (group, distinct GT ignore pattern over the needed slices).

    Returns ``(problems, problem_of)`` with ``problems[j] = (group, gt_ignore)`` and
    ``problem_of[key, a, o] = j``.
    """
    a_lo = np.array([params.area_rngs[a][0] for a, _ in slices])[:, None]
    a_hi = np.array([params.area_rngs[a][1] for a, _ in slices])[:, None]
    o_lo = np.array([params.occ_rngs[o][0] for _, o in slices])[:, None]
    o_hi = np.array([params.occ_rngs[o][1] for _, o in slices])[:, None]
    problems, problem_of = [], {}
    for key, g in groups.items():
        if not len(g.gt_ids):  # nothing to match: one problem for every slice
            problems.append((g, g.gt_ignore))
            for a, o in slices:
                problem_of[key, a, o] = len(problems) - 1
            continue
        # (S, G): ignored GTs per slice (outside the area range, or the occlusion range for OVIS)
        ign = g.gt_ignore | (g.gt_avg_area < a_lo) | (g.gt_avg_area > a_hi)
        if params.occlusion:
            ign |= (g.gt_occ < o_lo) | (g.gt_occ > o_hi)
        seen: dict[bytes, int] = {}
        for (a, o), row in zip(slices, ign, strict=True):
            pattern = row.tobytes()
            if pattern not in seen:
                seen[pattern] = len(problems)
                problems.append((g, row))
            problem_of[key, a, o] = seen[pattern]
    return problems, problem_of


def _accumulate(groups, matches, problem_of, cat_ids, vid_ids, cats_with_gt, params, slices) -> Accumulated:
    """Precision / recall per (category, needed slice, maxDets) from the matches of every group."""
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
            found = [matches[problem_of[key, a, o]] for key in keys]
            npig = sum(f.n_regular for f in found)
            if npig == 0:
                continue
            matched = np.concatenate([f.matched for f in found], axis=1)
            ignored = np.concatenate([f.ignored for f in found], axis=1)
            # unmatched predictions outside the area range are ignored (never by occlusion range)
            ignored = ignored | (~matched & ((dt_area < a_lo) | (dt_area > a_hi)))
            for m, inds in enumerate(orders):
                mt, ig = matched[:, inds], ignored[:, inds]
                q, rc = _pr_curves(mt & ~ig, ~mt & ~ig, npig, params.rec_thrs)
                precision[:, :, k, a, o, m] = q
                recall[:, k, a, o, m] = rc
    return Accumulated(params=params, cat_ids=list(cat_ids), precision=precision, recall=recall)


def evaluate_fast(gt: YTVISAnnotations, results: list[dict], params: EvalParams) -> Accumulated:
    """Evaluate validated inputs; returns the same arrays as the reference on the slices the summary reads."""
    groups = _build_groups(gt, results, params)
    cat_ids, vid_ids = gt.category_ids, gt.video_ids
    cats_with_gt = {c for (_, c), g in groups.items() if len(g.gt_ids) and not g.gt_ignore.all()}
    by_video = defaultdict(list)
    for (vid, _), g in groups.items():
        by_video[vid].append(g)
    for vid in vid_ids:
        _video_overlaps(by_video.get(vid, []), results, cats_with_gt, gt.video_length(vid))
    slices = needed_slices(params)
    problems, problem_of = _problems(groups, params, slices)
    matches = _match_all(problems, params)
    return _accumulate(groups, matches, problem_of, cat_ids, vid_ids, cats_with_gt, params, slices)
