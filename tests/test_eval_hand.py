"""Hand-computed YouTube-VIS / OVIS cases: the expected numbers are derived in the comments, from the rules.

Every case runs both implementations (reference and fast) and checks both against the derivation.
Notation: T = 10 IoU thresholds .50:.05:.95, R = 101 recall thresholds 0:.01:1.
"""

import numpy as np
import pytest

from vis_core.eval import evaluate
from vis_core.eval.synthetic_case import case_from_masks

# every test runs with the compiled kernels and with the numpy code (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("eval_kernels")

IMPLS = ("reference", "fast")


def box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def pixels(h, w, coords):
    m = np.zeros((h, w), dtype=np.uint8)
    for y, x in coords:
        m[y, x] = 1
    return m


def approx(x):
    # precision is tp / (tp + fp + eps), so a perfect score is 1 - 2e-16, exactly as in the official code
    return pytest.approx(x)


def run_both(gt, results, **kw):
    """Evaluate with both implementations; they must agree exactly. Returns the stats."""
    out = [evaluate(gt, results, impl=impl, **kw) for impl in IMPLS]
    assert out[0] == out[1]
    return out[0]


def test_perfect_prediction_and_empty_area_ranges():
    # One small GT (4 px per frame) predicted exactly: matched at every threshold -> precision 1 at every
    # recall threshold -> AP = AR = 1. No GT is medium or large -> those stats are undefined (-1).
    g = box(6, 8, 1, 1, 3, 3)
    gt, res = case_from_masks(
        {1: (6, 8, 2)},
        [{"video_id": 1, "category_id": 1, "masks": [g, g]}],
        [{"video_id": 1, "category_id": 1, "score": 0.9, "masks": [g, g]}],
    )
    s = run_both(gt, res)
    for k in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"):
        assert s[k] == approx(1.0)
    for k in ("APm", "APl", "ARm", "ARl"):
        assert s[k] == -1.0


def test_video_iou_sums_over_frames_and_greedy_order():
    # g1: frame 0 = 4 px, frame 1 = 1 px.  d1 (score .9): 2 px inside g1 in frame 0, the same 1 px in frame 1.
    # Video IoU(d1, g1) = (2 + 1) / (4 + 1) = 0.6 (a per-frame mean would say 0.75).
    # g2 predicted exactly by d2 (score .8): IoU 1.
    # Thresholds .50 .55 .60 (3 of 10): d1 TP, d2 TP -> tp = [1, 2], fp = [0, 0], precision 1 everywhere.
    # Thresholds .65 ... .95 (7): d1 FP, d2 TP -> tp = [0, 1], fp = [1, 1]: recall [0, .5], precision [0, .5],
    #   envelope [.5, .5]; recall thresholds 0 .. .50 (51 of 101) get .5, the 50 above get 0 -> 25.5 / 101.
    # AP = (3 * 1 + 7 * 25.5 / 101) / 10;  AP50 = 1;  AP75 = 25.5 / 101.
    # AR100 = (3 * 1 + 7 * .5) / 10 = .65;  AR1 keeps only d1 (the top prediction): recall .5 at 3 thresholds
    # and 0 at 7 -> .15.
    h, w = 6, 8
    g1 = [box(h, w, 0, 0, 2, 2), pixels(h, w, [(4, 4)])]
    d1 = [box(h, w, 0, 0, 2, 1), pixels(h, w, [(4, 4)])]
    g2 = [box(h, w, 0, 5, 3, 8), box(h, w, 0, 5, 3, 8)]
    gt, res = case_from_masks(
        {1: (h, w, 2)},
        [{"video_id": 1, "category_id": 1, "masks": g1}, {"video_id": 1, "category_id": 1, "masks": g2}],
        [
            {"video_id": 1, "category_id": 1, "score": 0.9, "masks": d1},
            {"video_id": 1, "category_id": 1, "score": 0.8, "masks": g2},
        ],
    )
    s = run_both(gt, res)
    assert s["AP"] == approx((3 + 7 * 25.5 / 101) / 10)
    assert s["AP50"] == approx(1.0)
    assert s["AP75"] == approx(25.5 / 101)
    assert s["AR100"] == approx(0.65)
    assert s["AR10"] == approx(0.65)
    assert s["AR1"] == approx(0.15)


def test_null_frames_count_as_absent_and_union_takes_the_present_area():
    # Frame 0: g = 4 px, d = the same 4 px.  Frame 1: g null, d = 4 other px (only d present: U += 4).
    # Frame 2: g = 2 px, d null (U += 2).  IoU = 4 / (4 + 4 + 2) = 0.4 < .5 -> never matched: AP = AR = 0.
    # Moving d's frame-1 mask onto an empty mask (present, area 0) gives IoU 4 / (4 + 2) = 2/3:
    # matched at .50 .55 .60 .65 (4 thresholds) -> AP = AR = 0.4.
    h, w = 6, 8
    g = [box(h, w, 0, 0, 2, 2), None, box(h, w, 4, 4, 5, 6)]
    d_far = [box(h, w, 0, 0, 2, 2), box(h, w, 3, 3, 5, 5), None]
    d_empty = [box(h, w, 0, 0, 2, 2), np.zeros((h, w), np.uint8), None]
    for d, expected in ((d_far, 0.0), (d_empty, 0.4)):
        gt, res = case_from_masks(
            {1: (h, w, 3)},
            [{"video_id": 1, "category_id": 1, "masks": g}],
            [{"video_id": 1, "category_id": 1, "score": 0.5, "masks": d}],
        )
        s = run_both(gt, res)
        assert s["AP"] == approx(expected)
        assert s["AR100"] == approx(expected)


def test_crowd_gt_absorbs_several_predictions():
    # A regular GT g (predicted exactly by d0, score .5) and a crowd GT c. Three predictions (scores .9 .8 .7)
    # equal to c match the crowd region (ignored GT, IoU 1) -> they are ignored, not false positives, and a
    # crowd GT can take any number of them. Only d0 counts: TP at every threshold -> AP = AR = 1.
    # Without the crowd flag, c is a regular GT: the first copy is a TP, the other two FPs ranked above d0:
    # order .9 TP, .8 FP, .7 FP, .5 TP -> precision [1, .5, 1/3, .5], envelope [1, .5, .5, .5], recall
    # [.5, .5, .5, 1]: thresholds 0 .. .50 -> 1 (51 of them), .51 .. 1 -> .5 (50) -> AP = (51 + 25) / 101.
    h, w = 6, 8
    g = box(h, w, 0, 0, 2, 2)
    c = box(h, w, 2, 4, 6, 8)
    preds = [{"video_id": 1, "category_id": 1, "score": s, "masks": [c]} for s in (0.9, 0.8, 0.7)]
    preds.append({"video_id": 1, "category_id": 1, "score": 0.5, "masks": [g]})
    for crowd, expected in ((1, 1.0), (0, 76 / 101)):
        gt, res = case_from_masks(
            {1: (h, w, 1)},
            [
                {"video_id": 1, "category_id": 1, "masks": [g]},
                {"video_id": 1, "category_id": 1, "masks": [c], "iscrowd": crowd},
            ],
            preds,
        )
        s = run_both(gt, res)
        assert s["AP"] == approx(expected)
        assert s["AR100"] == approx(1.0)


def test_area_boundaries_are_inclusive():
    # A GT whose stored average area is exactly 128**2 is both small and medium; exactly 256**2 is both medium
    # and large. A perfect prediction makes every defined stat 1. GT areas come from the `areas` field as
    # stored (here deliberately not the mask area), predictions' from their masks.
    h, w = 6, 8
    m = box(h, w, 0, 0, 2, 2)
    for stored, defined in ((128**2, ("APs", "APm")), (256**2, ("APm", "APl")), (128**2 + 1, ("APm",))):
        gt, res = case_from_masks(
            {1: (h, w, 1)},
            [{"video_id": 1, "category_id": 1, "masks": [m], "areas": [stored]}],
            [{"video_id": 1, "category_id": 1, "score": 0.5, "masks": [m]}],
        )
        s = run_both(gt, res)
        for k in ("APs", "APm", "APl"):
            assert s[k] == approx(1.0 if k in defined else -1.0), (stored, k)


def test_unmatched_prediction_outside_area_range_is_ignored():
    # A 16 x 32 frame: a small GT predicted exactly (score .5) and a false positive of 16 x 16 = 256 px
    # (score .9, avg area 256: small). Ranked: FP, TP -> precision [0, .5], envelope [.5, .5], recall [0, 1]:
    # every one of the 101 recall thresholds gets .5 -> AP = .5, and APs = .5 too (the FP is small, so it
    # is not ignored in the small range). Store the GT area as 128**2 + 1 (medium): in the medium range the
    # FP is unmatched and outside the range -> ignored -> APm = 1, while AP (all areas) stays .5.
    h, w = 16, 32
    g = box(h, w, 0, 0, 4, 4)
    fp = box(h, w, 0, 16, 16, 32)
    for stored, key, expected in ((16, "APs", 0.5), (128**2 + 1, "APm", 1.0)):
        gt, res = case_from_masks(
            {1: (h, w, 1)},
            [{"video_id": 1, "category_id": 1, "masks": [g], "areas": [stored]}],
            [
                {"video_id": 1, "category_id": 1, "score": 0.5, "masks": [g]},
                {"video_id": 1, "category_id": 1, "score": 0.9, "masks": [fp]},
            ],
        )
        s = run_both(gt, res)
        assert s["AP"] == approx(0.5)
        assert s[key] == approx(expected)


def test_regular_match_stops_before_ignored_gts():
    # d has IoU 4/6 = .667 with the regular GT g (4 px of d's 6 px) and IoU 1 with a crowd GT c equal to d.
    # GTs are scanned regular first; once d holds a regular match, the scan stops at the first ignored GT,
    # so d matches g (a TP) at .50 .. .65 (4 thresholds) even though c overlaps it better. At .70 and above
    # it falls through to c and is ignored. AP = AR = 4/10.
    h, w = 6, 8
    g = box(h, w, 0, 0, 2, 2)
    d = box(h, w, 0, 0, 2, 3)
    gt, res = case_from_masks(
        {1: (h, w, 1)},
        [
            {"video_id": 1, "category_id": 1, "masks": [g]},
            {"video_id": 1, "category_id": 1, "masks": [d], "iscrowd": 1},
        ],
        [{"video_id": 1, "category_id": 1, "score": 0.5, "masks": [d]}],
    )
    s = run_both(gt, res)
    assert s["AP"] == approx(0.4)
    assert s["AR100"] == approx(0.4)


def test_ties_keep_file_order_and_100_predictions_per_video_category():
    # Two predictions with equal scores: one exact (TP), one elsewhere (FP). A stable sort keeps file order:
    # TP first -> precision 1 at recall 1 -> AP 1; FP first -> precision [0, .5] -> envelope .5 -> AP .5.
    h, w = 6, 8
    g = box(h, w, 0, 0, 2, 2)
    far = box(h, w, 4, 6, 6, 8)
    tp = {"video_id": 1, "category_id": 1, "score": 0.5, "masks": [g]}
    fp = {"video_id": 1, "category_id": 1, "score": 0.5, "masks": [far]}
    gts = [{"video_id": 1, "category_id": 1, "masks": [g]}]
    assert run_both(*case_from_masks({1: (h, w, 1)}, gts, [tp, fp]))["AP"] == approx(1.0)
    assert run_both(*case_from_masks({1: (h, w, 1)}, gts, [fp, tp]))["AP"] == approx(0.5)
    # 99 FPs scored .9 and the TP scored .5: the TP is the 100th -> precision 1/100 at recall 1 -> AP .01.
    # With 100 FPs the TP is the 101st prediction of its (video, category) and is cut: AP = AR = 0.
    fps = [dict(fp, score=0.9) for _ in range(100)]
    s99 = run_both(*case_from_masks({1: (h, w, 1)}, gts, fps[:99] + [tp]))
    assert s99["AP"] == approx(0.01) and s99["AR100"] == 1.0 and s99["AR10"] == 0.0
    s100 = run_both(*case_from_masks({1: (h, w, 1)}, gts, fps + [tp]))
    assert s100["AP"] == 0.0 and s100["AR100"] == 0.0


def test_categories_without_gt_are_excluded_and_missed_categories_count_zero():
    # Category 1: perfect (AP 1). Category 2: a GT and no prediction (AP 0, counted). Category 3: predictions
    # but no GT (excluded). Mean AP = (1 + 0) / 2 = .5. Per category: 1 -> 1, 2 -> 0, 3 -> -1 (undefined).
    h, w = 6, 8
    a, b = box(h, w, 0, 0, 2, 2), box(h, w, 3, 3, 6, 6)
    gt, res = case_from_masks(
        {1: (h, w, 1)},
        [{"video_id": 1, "category_id": 1, "masks": [a]}, {"video_id": 1, "category_id": 2, "masks": [b]}],
        [
            {"video_id": 1, "category_id": 1, "score": 0.9, "masks": [a]},
            {"video_id": 1, "category_id": 3, "score": 0.9, "masks": [b]},
        ],
        n_categories=3,
    )
    s = run_both(gt, res, per_category=True)
    assert s["AP"] == approx(0.5) and s["AR100"] == 0.5
    assert s["per_category"]["1"] == {
        "AP": approx(1.0),
        "AP50": approx(1.0),
        "AP75": approx(1.0),
        "AR100": 1.0,
    }
    assert s["per_category"]["2"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR100": 0.0}
    assert s["per_category"]["3"] == {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "AR100": -1.0}


def test_maxdets_applies_per_video_category():
    # Two videos, one GT each, each predicted exactly by its only prediction. AR1 keeps the top prediction of
    # every (video, category), not of the whole dataset: both GTs are found -> AR1 = 1.
    h, w = 6, 8
    m = box(h, w, 0, 0, 2, 2)
    gts = [{"video_id": v, "category_id": 1, "masks": [m]} for v in (1, 2)]
    preds = [{"video_id": v, "category_id": 1, "score": 0.5, "masks": [m]} for v in (1, 2)]
    s = run_both(*case_from_masks({1: (h, w, 1), 2: (h, w, 1)}, gts, preds))
    assert s["AR1"] == 1.0 and s["AP"] == approx(1.0)


def test_ovis_occlusion_scores_and_ranges():
    # Labels [no, slight, severe, null] -> scores [0, .25, .75] (null skipped); top ceil(3/2) = 2 -> mean of
    # [.25, .75] = .5: inside medium [.25, .5] and heavy [.5, 1] (inclusive), not light [0, .25].
    # Labels [slight, no] -> top ceil(2/2) = 1 -> .25: light and medium.
    # Each GT predicted exactly. A false positive (score .9, far away) is NOT ignored by occlusion range, so
    # every defined occlusion AP has the FP ranked first.
    # GT a (.5) alone in heavy: order FP, TP(a) -> precision .5 at every recall threshold -> AP_heavy = .5.
    # Light has only GT b (.25): same -> .5. Medium has both a and b: order FP, TP, TP -> precision
    # [0, .5, 2/3], envelope [2/3, 2/3, 2/3], recall [0, .5, 1] -> AP_medium = 2/3.
    h, w = 6, 8
    a, b, far = box(h, w, 0, 0, 2, 2), box(h, w, 3, 0, 5, 2), box(h, w, 0, 5, 2, 8)
    gt, res = case_from_masks(
        {1: (h, w, 4)},
        [
            {
                "video_id": 1,
                "category_id": 1,
                "masks": [a, a, a, None],
                "occlusion": ["no_occlusion", "slight_occlusion", "severe_occlusion", None],
            },
            {
                "video_id": 1,
                "category_id": 1,
                "masks": [b, b, None, None],
                "occlusion": ["slight_occlusion", "no_occlusion", None, None],
            },
        ],
        [
            {"video_id": 1, "category_id": 1, "score": 0.9, "masks": [far] * 4},
            {"video_id": 1, "category_id": 1, "score": 0.5, "masks": [a, a, a, None]},
            {"video_id": 1, "category_id": 1, "score": 0.4, "masks": [b, b, None, None]},
        ],
    )
    s = run_both(gt, res, occlusion=True)
    assert list(s) == [
        "AP",
        "AP50",
        "AP75",
        "APs",
        "APm",
        "APl",
        "AP_light",
        "AP_medium",
        "AP_heavy",
        "AR1",
        "AR10",
        "AR100",
        "ARs",
        "ARm",
        "ARl",
        "AR_light",
        "AR_medium",
        "AR_heavy",
    ]
    assert s["AP_heavy"] == approx(0.5)
    assert s["AP_light"] == approx(0.5)
    assert s["AP_medium"] == approx(2 / 3)
    assert s["AR_light"] == s["AR_medium"] == s["AR_heavy"] == 1.0
    # without --occlusion the same input gives the 12 YouTube-VIS stats only
    assert list(run_both(gt, res)) == [
        "AP",
        "AP50",
        "AP75",
        "APs",
        "APm",
        "APl",
        "AR1",
        "AR10",
        "AR100",
        "ARs",
        "ARm",
        "ARl",
    ]
