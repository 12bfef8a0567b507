"""Reference YouTube-VIS / OVIS evaluator: the official algorithm written out loop by loop.

This is the slow, obviously-correct twin of :mod:`vis_core.eval.fast`; tests cross-check the two. It follows
``ytvoseval.py`` (youtubevos/cocoapi) and ``oviseval.py`` (qjy981010/cocoapi) step by step:

1. ``prepare``: per-track average areas, occlusion scores and ignore flags; tracks grouped by
   (video, category);
2. ``video_ious``: per (video, category), the predictions sorted by score (stable) and cut to ``maxDets[-1]``,
   then the video IoU of every (prediction, GT) pair, one pycocotools merge/area per frame as the official
   does;
3. ``evaluate_video``: COCO greedy matching per (category, area range, occlusion range, video);
4. ``accumulate``: precision / recall over all videos per (category, area range, occlusion range, maxDets).

Inputs are already validated (see :mod:`vis_core.data.ytvis`), so this code never has to guess.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_util

from vis_core.data.ytvis import YTVISAnnotations, to_compressed_rle
from vis_core.eval.params import EvalParams, average_area, occlusion_score
from vis_core.eval.summarize import Accumulated


def prepare(gt: YTVISAnnotations, results: list[dict], params: EvalParams):
    """GT and prediction tracks grouped by (video_id, category_id), each group in file order."""
    cat_ids = set(gt.category_ids)
    gts: dict[tuple, list[dict]] = defaultdict(list)
    dts: dict[tuple, list[dict]] = defaultdict(list)
    for vid in gt.video_ids:
        video = gt.videos[vid]
        h, w = video["height"], video["width"]
        for ann in gt.anns_by_video[vid]:
            if ann["category_id"] not in cat_ids:
                continue
            track = {
                "id": ann["id"],
                "iscrowd": int(ann["iscrowd"]),
                "ignore": bool(ann["iscrowd"]),
                # a falsy segmentation (null) is an absent frame, exactly as in the official `if a:`
                "segmentations": [to_compressed_rle(s, h, w) if s else None for s in ann["segmentations"]],
                "avg_area": average_area(ann["areas"]),
            }
            if params.occlusion:
                track["occ_score"] = occlusion_score(ann["occlusion"])
            gts[vid, ann["category_id"]].append(track)
    for index, res in enumerate(results):
        video = gt.videos[res["video_id"]]
        h, w = video["height"], video["width"]
        segs = [to_compressed_rle(s, h, w) if s else None for s in res["segmentations"]]
        areas = [int(mask_util.area(s)) if s else None for s in segs]
        track = {
            "id": index + 1,
            "score": res["score"],
            "segmentations": segs,
            "avg_area": average_area(areas),
        }
        dts[res["video_id"], res["category_id"]].append(track)
    return gts, dts


def sort_predictions(dts: list[dict], max_det: int) -> list[dict]:
    """Highest score first; a stable sort, so file order breaks ties."""
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")
    return [dts[i] for i in order[:max_det]]


def video_iou(d_seq: list, g_seq: list) -> float:
    """IoU of two tracks over a video: intersections and unions summed over frames, 0 when the union is 0."""
    inter, union = 0.0, 0.0
    for d, g in zip(d_seq, g_seq, strict=True):
        if d and g:
            inter += mask_util.area(mask_util.merge([d, g], intersect=True))
            union += mask_util.area(mask_util.merge([d, g], intersect=False))
        elif g:
            union += mask_util.area(g)
        elif d:
            union += mask_util.area(d)
    return inter / union if union > 0 else 0.0


def video_ious(gts: list[dict], dts: list[dict], params: EvalParams) -> np.ndarray:
    """(D, G) video IoUs of the top ``maxDets[-1]`` predictions (score order) against the GTs (file order)."""
    dts = sort_predictions(dts, params.max_dets[-1])
    ious = np.zeros((len(dts), len(gts)))
    for i, d in enumerate(dts):
        for j, g in enumerate(gts):
            ious[i, j] = video_iou(d["segmentations"], g["segmentations"])
    return ious


def evaluate_video(gts, dts, ious, a_rng, o_rng, max_det, params: EvalParams) -> dict | None:
    """Greedy matching of one (video, category) at one area range and occlusion range (``evaluateVid``)."""
    if not gts and not dts:
        return None
    ignore = []
    for g in gts:
        out = g["ignore"] or g["avg_area"] < a_rng[0] or g["avg_area"] > a_rng[1]
        if params.occlusion:
            out = out or g["occ_score"] < o_rng[0] or g["occ_score"] > o_rng[1]
        ignore.append(1 if out else 0)
    # GTs to match against: non-ignored first (stable), predictions best first
    gt_order = np.argsort(ignore, kind="mergesort")
    gts = [gts[i] for i in gt_order]
    gt_ig = np.array([ignore[i] for i in gt_order])
    dts = sort_predictions(dts, max_det)
    ious = ious[:, gt_order] if len(ious) else ious
    iscrowd = [g["iscrowd"] for g in gts]

    T, G, D = len(params.iou_thrs), len(gts), len(dts)
    gtm = np.zeros((T, G))
    dtm = np.zeros((T, D))
    dt_ig = np.zeros((T, D))
    if len(ious):
        for tind, t in enumerate(params.iou_thrs):
            for dind, d in enumerate(dts):
                iou = min(t, 1 - 1e-10)
                m = -1  # best match so far
                for gind in range(G):
                    # a GT already matched can take no other prediction, unless it is a crowd
                    if gtm[tind, gind] > 0 and not iscrowd[gind]:
                        continue
                    # matched to a regular GT and only ignored GTs are left: stop
                    if m > -1 and gt_ig[m] == 0 and gt_ig[gind] == 1:
                        break
                    if ious[dind, gind] < iou:
                        continue
                    iou = ious[dind, gind]
                    m = gind
                if m == -1:
                    continue
                dt_ig[tind, dind] = gt_ig[m]
                dtm[tind, dind] = gts[m]["id"]
                gtm[tind, m] = d["id"]
    # unmatched predictions outside the area range are ignored (never by occlusion range)
    outside = np.array([d["avg_area"] < a_rng[0] or d["avg_area"] > a_rng[1] for d in dts]).reshape((1, D))
    dt_ig = np.logical_or(dt_ig, np.logical_and(dtm == 0, np.repeat(outside, T, 0)))
    return {"dtMatches": dtm, "dtScores": [d["score"] for d in dts], "gtIgnore": gt_ig, "dtIgnore": dt_ig}


def accumulate(eval_vids: dict, cat_ids: list, vid_ids: list, params: EvalParams) -> Accumulated:
    """Precision / recall per (category, area range, occlusion range, maxDets), as in the official code."""
    T, R, K = len(params.iou_thrs), len(params.rec_thrs), len(cat_ids)
    A, O, M = len(params.area_rngs), len(params.occ_rngs), len(params.max_dets)
    precision = -np.ones((T, R, K, A, O, M))
    recall = -np.ones((T, K, A, O, M))
    for k, cat in enumerate(cat_ids):
        for a in range(A):
            for o in range(O):
                E = [eval_vids[cat, a, o, vid] for vid in vid_ids]
                E = [e for e in E if e is not None]
                if not E:
                    continue
                for m, max_det in enumerate(params.max_dets):
                    scores = np.concatenate([e["dtScores"][0:max_det] for e in E])
                    inds = np.argsort(-scores, kind="mergesort")
                    dtm = np.concatenate([e["dtMatches"][:, 0:max_det] for e in E], axis=1)[:, inds]
                    dt_ig = np.concatenate([e["dtIgnore"][:, 0:max_det] for e in E], axis=1)[:, inds]
                    gt_ig = np.concatenate([e["gtIgnore"] for e in E])
                    npig = np.count_nonzero(gt_ig == 0)
                    if npig == 0:
                        continue
                    tps = np.logical_and(dtm, np.logical_not(dt_ig))
                    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
                    tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
                    fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
                    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
                        nd = len(tp)
                        rc = tp / npig
                        pr = (tp / (fp + tp + np.spacing(1))).tolist()
                        recall[t, k, a, o, m] = rc[-1] if nd else 0
                        # precision envelope: non-increasing from the right
                        for i in range(nd - 1, 0, -1):
                            if pr[i] > pr[i - 1]:
                                pr[i - 1] = pr[i]
                        q = np.zeros(R)
                        for ri, pi in enumerate(np.searchsorted(rc, params.rec_thrs, side="left")):
                            if pi >= nd:
                                break  # recall threshold never reached: precision 0
                            q[ri] = pr[pi]
                        precision[t, :, k, a, o, m] = q
    return Accumulated(params=params, cat_ids=list(cat_ids), precision=precision, recall=recall)


def evaluate_reference(gt: YTVISAnnotations, results: list[dict], params: EvalParams) -> Accumulated:
    """Run the whole reference pipeline on validated inputs."""
    gts, dts = prepare(gt, results, params)
    vid_ids, cat_ids = gt.video_ids, gt.category_ids
    ious = {}
    for vid in vid_ids:
        for cat in cat_ids:
            g, d = gts.get((vid, cat), []), dts.get((vid, cat), [])
            ious[vid, cat] = video_ious(g, d, params) if (g or d) else np.zeros((0, 0))
    eval_vids = {}
    max_det = params.max_dets[-1]
    for cat in cat_ids:
        for a, a_rng in enumerate(params.area_rngs):
            for o, o_rng in enumerate(params.occ_rngs):
                for vid in vid_ids:
                    g, d = gts.get((vid, cat), []), dts.get((vid, cat), [])
                    eval_vids[cat, a, o, vid] = evaluate_video(
                        g, d, ious[vid, cat], a_rng, o_rng, max_det, params
                    )
    return accumulate(eval_vids, cat_ids, vid_ids, params)
