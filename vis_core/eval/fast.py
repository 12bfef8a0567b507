"""Fast YouTube-VIS / OVIS evaluator: the official numbers, computed without the per-frame Python loops.

Same result as :mod:`vis_core.eval.reference` (tests cross-check them, bit for bit), organised for speed:

* **Masks decoded once, as arrays.** The prediction RLE strings of a batch of videos of one frame size (the
  top ``maxDets[-1]`` predictions per (video, category) only, as in the official code) are decoded together
  by :mod:`vis_core.eval.runs`: its compiled kernel when built (``setup.py``), else its numpy decoder of COCO's
  compressed counts; GT list counts are read as they are. A null frame is the empty mask: it adds nothing to
  an intersection, a union or an area, as null does.
* **Video IoUs from integer sums.** A pair's video IoU is ``I / (A_d + A_g - I)`` with ``I`` the intersection
  summed over frames and ``A`` a track's area summed over frames (the union of a frame where only one track is
  present is that track's area). All terms are exact integers, so the float division is bit-identical to the
  official per-frame float loop.
* **Only IoUs that can reach 0.5.** Every threshold is >= 0.5, so a pair below it never matches. A frame's
  intersection is at most ``min(area_d, area_g, shared columns * GT height)``; pairs whose summed bound keeps
  their IoU below 0.5 are never intersected (their IoU stays 0), and for the others only frames with a positive
  bound are.
* **Greedy matching as sparse, batched numpy.** Only pairs with IoU >= 0.5 become candidate edges. All matching
  problems (video, category, GT ignore pattern, IoU threshold) advance together, one prediction rank at a time:
  at each rank, every problem takes its most preferred available edge: a non-ignored GT before an ignored one,
  then the higher IoU, then the later GT in file order (the official scan keeps the last of equal IoUs).
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
    decode_strings,
    decode_tracks,
    intersections,
    runs_from_count_lists,
)
from vis_core.eval.summarize import Accumulated, needed_slices

_EMPTY_INT, _EMPTY_BOOL, _EMPTY_FLOAT = np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0)
for _a in (_EMPTY_INT, _EMPTY_BOOL, _EMPTY_FLOAT):
    _a.flags.writeable = False


@dataclass
class _Group:
    """One (video, category): its GTs in file order and its top predictions in score order."""

    vid: int
    cat: int
    h: int
    w: int
    n_frames: int
    gt_anns: list = field(default_factory=list)
    # (empty defaults are shared, read-only arrays: fields are replaced, never written into)
    gt_ids: np.ndarray = field(default_factory=lambda: _EMPTY_INT)
    gt_ignore: np.ndarray = field(default_factory=lambda: _EMPTY_BOOL)  # always ignored (crowd)
    gt_crowd: np.ndarray = field(default_factory=lambda: _EMPTY_BOOL)  # may absorb many predictions
    gt_avg_area: np.ndarray = field(default_factory=lambda: _EMPTY_FLOAT)
    gt_occ: np.ndarray = field(default_factory=lambda: _EMPTY_FLOAT)
    dt_index: list = field(default_factory=list)  # into the results list: score order, top maxDets[-1]
    dt_scores: np.ndarray = field(default_factory=lambda: _EMPTY_FLOAT)
    dt_avg_area: np.ndarray = field(default_factory=lambda: _EMPTY_FLOAT)
    ious: np.ndarray = field(default_factory=lambda: _EMPTY_FLOAT.reshape(0, 0))


def _gt_avg_area(areas: list) -> float:
    """:func:`~vis_core.eval.params.average_area`, without numpy when the areas are integers (pixel counts).

    For integers the official ``np.array(kept).mean()`` sums exactly (far below 2**53) and divides once, as
    ``sum / len`` does; anything else takes the official path.
    """
    kept = [a for a in areas if a]
    if kept and all(type(a) is int for a in kept):
        total = sum(kept)
        if total < 2**53:
            return total / len(kept)
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
                    groups[key] = _Group(vid, ann["category_id"], video["height"], video["width"], gt.video_length(vid))
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
            groups[vid, cat] = _Group(vid, cat, video["height"], video["width"], gt.video_length(vid))
        g = groups[vid, cat]
        scores = np.array([results[i]["score"] for i in idx], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[: params.max_dets[-1]]  # stable: file order breaks ties
        g.dt_index = [idx[i] for i in order]
        g.dt_scores = scores[order]
    return groups


def _where_result(results: list[dict], g: _Group, k: int) -> str:
    """Names the prediction and frame of mask ``k`` of group ``g`` (for error messages)."""
    res = results[g.dt_index[k // g.n_frames]]
    return (
        f"result (video_id {res['video_id']}, category_id {res['category_id']}, score {res['score']}): "
        f"segmentations[{k % g.n_frames}]"
    )


def _prediction_runs(groups: list[_Group], results: list[dict], h: int, w: int) -> MaskRuns:
    """All prediction masks of these groups (group, then score order, then frame) decoded at once.

    A null frame becomes the empty mask: it adds nothing to any intersection, union or area, as null does.
    """
    try:
        runs = decode_tracks([results[i]["segmentations"] for g in groups for i in g.dt_index], h, w)
        if runs is not None:
            return runs
        empty = mask_util.frPyObjects([{"size": [h, w], "counts": [h * w]}], h, w)[0]["counts"].decode("ascii")
        strings = [
            s["counts"] if s is not None else empty
            for g in groups
            for i in g.dt_index
            for s in results[i]["segmentations"]
        ]
        return decode_strings(strings, h, w)
    except MalformedRLE as e:
        k = e.index
        for g in groups:  # the group of mask k
            if k < len(g.dt_index) * g.n_frames:
                raise VISFormatError(f"{_where_result(results, g, k)}: {e.reason}") from None
            k -= len(g.dt_index) * g.n_frames
        raise


def _gt_runs(groups: list[_Group], h: int, w: int) -> MaskRuns:
    """All GT masks of these groups (group, then file order, then frame); null frames become the empty mask.

    YouTube-VIS GT stores list counts, read as they are; polygons and string RLEs go through pycocotools first.
    """
    try:
        runs = decode_tracks([a["segmentations"] for g in groups for a in g.gt_anns], h, w, rows=True)
        if runs is not None:
            return runs
        segs = [s for g in groups for a in g.gt_anns for s in a["segmentations"]]
        full = [h * w]
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
            if k < len(g.gt_anns) * g.n_frames:
                ann = g.gt_anns[k // g.n_frames]
                raise VISFormatError(
                    f"annotation (id {ann['id']}, video_id {ann['video_id']}): "
                    f"segmentations[{k % g.n_frames}]: {e.reason}"
                ) from None
            k -= len(g.gt_anns) * g.n_frames
        raise


def _avg_areas(areas: np.ndarray, n_tracks: list, n_frames: list) -> np.ndarray:
    """Per track, the mean of its non-zero frame areas (exact: an integer sum, one division), else 0.

    ``areas`` holds groups of ``n_tracks[k]`` tracks of ``n_frames[k]`` frames each, track after track.
    """
    starts = np.concatenate(([0], np.cumsum(np.repeat(n_frames, n_tracks))[:-1]))
    total = np.add.reduceat(areas, starts)
    n_nonzero = np.add.reduceat((areas > 0).view(np.int8), starts, dtype=np.int64)
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


def _candidates(g: _Group, dt: MaskRuns, gt: MaskRuns, gt_height: np.ndarray, dt_base: int, gt_base: int):
    """Pairs of a group whose IoU may reach 0.5, the lowest threshold (no other pair can ever match).

    A frame's intersection is at most ``min(area_d, area_g, shared columns * GT height)``; when these bounds
    summed over the video give ``3 * I_max < A_d + A_g``, the video IoU ``I / (A_d + A_g - I)`` stays below 0.5.
    Pairs whose column extents over the whole video never meet are dropped first. Only frames where the bound
    is positive need an intersection.
    """
    D, G, T = len(g.dt_index), len(g.gt_ids), g.n_frames
    dsl, gsl = slice(dt_base, dt_base + D * T), slice(gt_base, gt_base + G * T)
    dx0, dx1 = dt.x0[dsl].reshape(D, T), dt.x1[dsl].reshape(D, T)
    gx0, gx1 = gt.x0[gsl].reshape(G, T), gt.x1[gsl].reshape(G, T)
    # column extent of each track over the video (empty frames have x0 > x1 and are left out)
    d_lo, d_hi = np.where(dx0 <= dx1, dx0, dt.w).min(axis=1), dx1.max(axis=1)
    g_lo, g_hi = np.where(gx0 <= gx1, gx0, gt.w).min(axis=1), gx1.max(axis=1)
    pd, pg = np.nonzero(np.maximum(d_lo[:, None], g_lo[None, :]) <= np.minimum(d_hi[:, None], g_hi[None, :]))
    da, ga = dt.area[dsl].reshape(D, T)[pd], gt.area[gsl].reshape(G, T)[pg]
    cols = np.minimum(dx1[pd], gx1[pg]) - np.maximum(dx0[pd], gx0[pg]) + 1
    bound = np.minimum(np.minimum(da, ga), np.maximum(cols, 0) * gt_height[gsl].reshape(G, T)[pg])  # (P, T)
    total = bound.sum(axis=1)
    base = da.sum(axis=1) + ga.sum(axis=1)
    keep = np.flatnonzero((3 * total >= base) & (total > 0))
    pd, pg, base = pd[keep], pg[keep], base[keep]
    k, t = np.nonzero(bound[keep] > 0)
    return _Candidates(pd, pg, base, dt_base + pd[k] * T + t, gt_base + pg[k] * T + t, k)


# videos of one frame size are processed together (fewer, larger array operations) while their prediction
# masks span at most this many positions on the virtual line (run ends stay int32)
_BATCH_POSITIONS = 2**30


def _batches(groups: dict[tuple, _Group], vid_ids: list) -> list[list[_Group]]:
    """Groups of consecutive videos of one frame size, each batch short enough for int32 run ends."""
    by_video = defaultdict(list)
    for (vid, _), g in groups.items():
        by_video[vid].append(g)
    open_batches: dict[tuple, tuple[list, int]] = {}
    out = []
    for vid in vid_ids:
        gs = by_video.get(vid, [])
        if not gs:
            continue
        size = (gs[0].h, gs[0].w)
        n = sum(len(g.dt_index) for g in gs) * gs[0].n_frames * size[0] * size[1]
        batch, used = open_batches.get(size, ([], 0))
        if batch and used + n > _BATCH_POSITIONS:
            out.append(batch)
            batch, used = [], 0
        open_batches[size] = (batch + gs, used + n)
    return out + [b for b, _ in open_batches.values() if b]


def _batch_overlaps(groups: list[_Group], results: list[dict], evaluated_cats: set) -> None:
    """Fill ``ious`` (D, G) and ``dt_avg_area`` (D,) of groups of videos of one frame size.

    Only IoUs that can reach the lowest threshold are computed; the others stay 0 (matching never looks at a
    pair below 0.5). A category with no regular GT anywhere is never evaluated: its numbers are never read.
    """
    for g in groups:
        g.ious, g.dt_avg_area = np.zeros((len(g.dt_index), len(g.gt_ids))), np.zeros(len(g.dt_index))
    dt_groups = [g for g in groups if len(g.dt_index) and g.n_frames and g.cat in evaluated_cats]
    if not dt_groups:
        return
    h, w = dt_groups[0].h, dt_groups[0].w
    dt = _prediction_runs(dt_groups, results, h, w)
    dt_base = np.cumsum([0] + [len(g.dt_index) * g.n_frames for g in dt_groups])[:-1]
    avg = _avg_areas(dt.area, [len(g.dt_index) for g in dt_groups], [g.n_frames for g in dt_groups])
    row = 0
    for g in dt_groups:
        g.dt_avg_area, row = avg[row : row + len(g.dt_index)], row + len(g.dt_index)
    both = [(g, b) for g, b in zip(dt_groups, dt_base, strict=True) if len(g.gt_ids)]
    if not both:
        return
    gt = _gt_runs([g for g, _ in both], h, w)
    y0, y1 = gt.rows()
    gt_height = y1 - y0 + 1
    gt_base = np.cumsum([0] + [len(g.gt_ids) * g.n_frames for g, _ in both])[:-1]
    cands = [_candidates(g, dt, gt, gt_height, b, gb) for (g, b), gb in zip(both, gt_base, strict=True)]
    inter = intersections(
        dt, gt, np.concatenate([c.mask_d for c in cands]), np.concatenate([c.mask_g for c in cands])
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
        t_idx, e_idx = np.nonzero(iou[None, :] >= thrs[:, None])  # one copy of an edge per threshold it passes
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
        _Matches(matched[j, :, : len(g.dt_index)], ignored[j, :, : len(g.dt_index)], int(len(ign) - ign.sum()))
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
    # np.searchsorted(rc[t], rec_thrs, "left") for every row at once, by comparisons only: rc[t, i] lies below
    # rec_thrs[r] exactly when r >= (number of thresholds <= rc[t, i])
    k = np.searchsorted(rec_thrs, rc, side="right") + (R + 1) * np.arange(T)[:, None]
    inds = np.cumsum(np.bincount(k.ravel(), minlength=T * (R + 1)).reshape(T, R + 1), axis=1)[:, :R]
    ok = inds < nd
    q = np.zeros((T, R))
    q[ok] = pr[np.nonzero(ok)[0], inds[ok]]
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
    for batch in _batches(groups, vid_ids):
        _batch_overlaps(batch, results, cats_with_gt)
    slices = needed_slices(params)
    problems, problem_of = _problems(groups, params, slices)
    matches = _match_all(problems, params)
    return _accumulate(groups, matches, problem_of, cat_ids, vid_ids, cats_with_gt, params, slices)
