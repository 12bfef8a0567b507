"""Fast evaluator == reference evaluator on hypothesis-generated inputs.

The inputs stress every rule that changes numbers: crowd GTs, null frames, empty-but-present masks, tied
scores, GT areas exactly at 128**2 and 256**2, prediction masks filling a 128x128 or 256x256 frame (areas
exactly at the boundaries), occlusion scores exactly 0.25 and 0.5, predictions that are small shifts of GTs
(IoUs around the thresholds), and more than 100 predictions in one (video, category).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vis_core.eval import build_params
from vis_core.eval.evaluator import load_inputs
from vis_core.eval.fast import evaluate_fast
from vis_core.eval.reference import evaluate_reference
from vis_core.eval.summarize import needed_slices, per_category_stats, summarize
from vis_core.eval.synthetic_case import case_from_masks

# every test runs with the compiled kernels and with the numpy code (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("eval_kernels")

SIZES = [(5, 6), (8, 8), (128, 128), (256, 256)]
OCC = ["no_occlusion", "slight_occlusion", "severe_occlusion", None]
SCORES = [0.0, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]


def rect_mask(h, w, r):
    """r = (kind, y0, x0, dy, dx, shift): kind 0 null, 1 empty, 2 full frame, 3 rectangle.

    y0, x0, dy, dx are fractions of the frame height / width; shift moves the rectangle by whole pixels.
    """
    kind, y0, x0, dy, dx, shift = r
    if kind == 0:
        return None
    m = np.zeros((h, w), dtype=np.uint8)
    if kind == 2:
        m[:] = 1
    elif kind == 3:
        ya, xa = int(y0 * h), int(x0 * w) + shift
        m[max(ya, 0) : ya + max(1, int(dy * h)), max(xa, 0) : max(xa + max(1, int(dx * w)), 0)] = 1
    return m


frac = st.sampled_from([0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75])
track_frame = st.tuples(st.sampled_from([0, 1, 2, 3, 3, 3, 3]), frac, frac, frac, frac, st.just(0))


@st.composite
def vis_inputs(draw, max_preds=12):
    n_frames = draw(st.integers(1, 3))
    n_videos = draw(st.integers(1, 3))
    n_cats = draw(st.integers(1, 3))
    videos = {v + 1: (*draw(st.sampled_from(SIZES)), n_frames) for v in range(n_videos)}
    gts, preds = [], []
    for vid, (h, w, n) in videos.items():
        bases = [draw(st.lists(track_frame, min_size=n, max_size=n)) for _ in range(draw(st.integers(0, 4)))]
        for base in bases:
            cat = draw(st.integers(1, n_cats))
            masks = [rect_mask(h, w, r) for r in base]
            gt = {
                "video_id": vid,
                "category_id": cat,
                "masks": masks,
                "iscrowd": int(draw(st.integers(0, 5)) == 0),
            }
            area_mode = draw(st.sampled_from(["mask", "mask", "small_edge", "large_edge", "nulls"]))
            if area_mode == "small_edge":
                gt["areas"] = [None if m is None else 128**2 for m in masks]
            elif area_mode == "large_edge":
                gt["areas"] = [None if m is None else 256**2 for m in masks]
            elif area_mode == "nulls":
                gt["areas"] = [None] * n
            labels = draw(st.lists(st.sampled_from(OCC), min_size=n, max_size=n))
            if all(lab is None for lab in labels):
                labels[0] = "slight_occlusion"  # a GT needs one label under --occlusion (otherwise an error)
            gt["occlusion"] = labels
            gts.append(gt)
            # predictions near this track: same rectangles shifted by a pixel or two in some frames
            for _ in range(draw(st.integers(0, 3))):
                shifts = draw(st.lists(st.sampled_from([0, 0, 1, -1, 2]), min_size=n, max_size=n))
                pm = [
                    rect_mask(h, w, (*r[:5], s)) if r[0] else rect_mask(h, w, (1, 0, 0, 0, 0, 0))
                    for r, s in zip(base, shifts, strict=True)
                ]
                pcat = cat if draw(st.integers(0, 4)) else draw(st.integers(1, n_cats))
                preds.append(
                    {
                        "video_id": vid,
                        "category_id": pcat,
                        "score": draw(st.sampled_from(SCORES)),
                        "masks": pm,
                    }
                )
        for _ in range(draw(st.integers(0, max_preds))):  # unrelated predictions, some filling the frame
            base = draw(st.lists(track_frame, min_size=n, max_size=n))
            preds.append(
                {
                    "video_id": vid,
                    "category_id": draw(st.integers(1, n_cats)),
                    "score": draw(st.sampled_from(SCORES)),
                    "masks": [rect_mask(h, w, r) for r in base],
                }
            )
    return case_from_masks(
        videos, gts, preds, n_categories=n_cats, gt_format=draw(st.sampled_from(["list", "str"]))
    )


def assert_same(gt_dict, results, occlusion):
    gt, kept, _ = load_inputs(gt_dict, results)
    params = build_params(occlusion)
    ref = evaluate_reference(gt, kept, params)
    fast = evaluate_fast(gt, kept, params)
    # identical numbers, not merely close: same integer sums, same float operations
    assert summarize(fast) == summarize(ref)
    assert per_category_stats(fast) == per_category_stats(ref)
    for a, o in needed_slices(params):
        np.testing.assert_array_equal(fast.precision[:, :, :, a, o], ref.precision[:, :, :, a, o])
        np.testing.assert_array_equal(fast.recall[:, :, a, o], ref.recall[:, :, a, o])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(case=vis_inputs(), occlusion=st.booleans())
def test_fast_equals_reference(case, occlusion):
    assert_same(*case, occlusion)


@st.composite
def crowded_group(draw):
    """One (video, category) with 100-130 predictions (top 100 kept) built from a few templates."""
    h, w, n = 8, 8, 2
    templates = [draw(st.lists(track_frame, min_size=n, max_size=n)) for _ in range(4)]
    gts = [
        {
            "video_id": 1,
            "category_id": 1,
            "masks": [rect_mask(h, w, r) for r in t],
            "iscrowd": int(i == 3 and draw(st.booleans())),
            "occlusion": ["severe_occlusion", "no_occlusion"],
        }
        for i, t in enumerate(templates[:3])
    ]
    n_preds = draw(st.integers(95, 130))
    picks = draw(st.lists(st.integers(0, 3), min_size=n_preds, max_size=n_preds))
    scores = draw(st.lists(st.sampled_from(SCORES), min_size=n_preds, max_size=n_preds))
    shifts = draw(st.lists(st.sampled_from([0, 1, -1]), min_size=n_preds, max_size=n_preds))
    preds = [
        {
            "video_id": 1,
            "category_id": 1,
            "score": s,
            "masks": [rect_mask(h, w, (*r[:5], sh)) for r in templates[p]],
        }
        for p, s, sh in zip(picks, scores, shifts, strict=True)
    ]
    return case_from_masks({1: (h, w, n)}, gts, preds)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(case=crowded_group(), occlusion=st.booleans())
def test_fast_equals_reference_beyond_100_predictions(case, occlusion):
    assert len(case[1]) >= 95
    assert_same(*case, occlusion)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_equals_reference_on_a_synthetic_timing_case(seed):
    # a scaled-down version of the benchmark input (crowded videos, a mask in every frame, OVIS labels)
    from vis_core.eval.synthetic_case import make_case

    gt, res = make_case(
        n_videos=4,
        n_frames=5,
        n_categories=3,
        crowded_objects=(4, 8),
        false_positives=6,
        occlusion=True,
        seed=seed,
        crowd_rate=0.1,
    )
    for occlusion in (False, True):
        assert_same(gt, res, occlusion)


def test_fast_equals_reference_on_odd_but_valid_inputs():
    # a video without frames, a GT with id 0 (the official code stores matched GT ids and tests them for
    # non-zero, so a match to GT id 0 counts as a miss), iscrowd given as a bool, a GT without any area
    h, w = 8, 8
    m = rect_mask(h, w, (3, 0.1, 0.1, 0.5, 0.5, 0))
    gt, res = case_from_masks(
        {1: (h, w, 2), 2: (h, w, 0)},
        [
            {"video_id": 1, "category_id": 1, "masks": [m, m], "id": 0},
            {"video_id": 1, "category_id": 1, "masks": [m, None], "iscrowd": True, "id": 5},
            {"video_id": 1, "category_id": 2, "masks": [None, m], "areas": [None, None], "id": 6},
            {"video_id": 2, "category_id": 1, "masks": [], "id": 7},
        ],
        [
            {"video_id": 1, "category_id": 1, "score": 0.9, "masks": [m, m]},
            {"video_id": 1, "category_id": 2, "score": 0.3, "masks": [None, m]},
            {"video_id": 2, "category_id": 1, "score": 0.5, "masks": []},
        ],
        n_categories=2,
    )
    assert_same(gt, res, occlusion=False)
