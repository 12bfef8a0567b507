"""The numpy RLE decoder and interval arithmetic of the fast evaluator agree exactly with pycocotools."""

import os

import numpy as np
import pytest
from pycocotools import mask as mask_util

from vis_core.data.ytvis import VISFormatError, mask_to_rle
from vis_core.eval import evaluate, runs
from vis_core.eval.runs import MalformedRLE, column_table, decode_strings, pair_intersections, runs_from_count_lists
from vis_core.eval.synthetic_case import case_from_masks

SIZES = [(1, 1), (1, 9), (7, 1), (6, 8), (37, 53), (128, 128), (300, 7), (720, 1280)]


def random_mask(rng, h, w):
    """Empty, full, one pixel, noise (many runs per column), a box, a full-height band, or a blob with holes."""
    kind = rng.integers(7)
    m = np.zeros((h, w), dtype=np.uint8)
    if kind == 1:
        m[:] = 1
    elif kind == 2:
        m[rng.integers(h), rng.integers(w)] = 1
    elif kind == 3:  # noise in a box: many runs per column
        y, x = rng.integers(h), rng.integers(w)
        box = m[y : y + 96, x : x + 96]
        box[:] = rng.random(box.shape) < rng.random()
    elif kind == 4:
        y, x = rng.integers(h), rng.integers(w)
        m[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = 1
    elif kind == 5:  # runs that continue from one column into the next
        x = rng.integers(w)
        m[:, x : x + rng.integers(1, w + 1)] = 1
        m[rng.integers(h) :, max(x - 1, 0)] = 1
    elif kind == 6:
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.integers(h), rng.integers(w), rng.integers(1, max(h, w) + 1)
        y0, x0 = rng.integers(h), rng.integers(w)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        m[y0 : y0 + 64, x0 : x0 + 64] ^= (rng.random((h, w)) < 0.05)[y0 : y0 + 64, x0 : x0 + 64]
    return m


def counts_of(m):
    """Uncompressed column-major COCO counts of a mask (what pycocotools encodes)."""
    flat = m.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return [0] + counts if flat[0] else counts


def masks_and_strings(rng, h, w, n):
    masks = [random_mask(rng, h, w) for _ in range(n)]
    return masks, [mask_to_rle(m)["counts"] for m in masks]


def run_ends(r, i):
    return r.pos[r.tok_ptr[i] : r.tok_ptr[i + 1]].astype(np.int64) - i * r.h * r.w


@pytest.mark.parametrize("h,w", SIZES)
def test_decoded_counts_areas_and_extents_equal_pycocotools(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    n = 40 if h * w < 10**5 else 8
    masks, strings = masks_and_strings(rng, h, w, n)
    for r in (decode_strings(strings, h, w), runs_from_count_lists([counts_of(m) for m in masks], h, w)):
        rles = [{"size": [h, w], "counts": s} for s in strings]
        np.testing.assert_array_equal(r.area, mask_util.area(rles).astype(np.int64))
        boxes = mask_util.toBbox(rles)
        for i, m in enumerate(masks):
            np.testing.assert_array_equal(np.diff(run_ends(r, i), prepend=0), counts_of(m))
            if m.any():
                assert (r.x0[i], r.x1[i]) == (boxes[i, 0], boxes[i, 0] + boxes[i, 2] - 1)
            else:
                assert r.x0[i] > r.x1[i]


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("wide_positions", [False, True])
def test_pair_intersections_equal_pycocotools(h, w, wide_positions, monkeypatch):
    if wide_positions:  # run ends in int64, as for a video whose masks span more than 2**31 positions
        monkeypatch.setattr(runs, "_INT32_LINE", 0)
    rng = np.random.default_rng(h + w)
    n = 24 if h * w < 10**5 else 6
    dt_masks, dt_strings = masks_and_strings(rng, h, w, n)
    gt_masks = [random_mask(rng, h, w) for _ in range(n)]
    dt = decode_strings(dt_strings, h, w)
    gt = runs_from_count_lists([counts_of(m) for m in gt_masks], h, w)
    d, g = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
    got = pair_intersections(dt, gt, column_table(gt), d, g)
    want = [int((dt_masks[i] & gt_masks[j]).sum()) for i, j in zip(d, g, strict=True)]
    np.testing.assert_array_equal(got, want)
    # and pycocotools' own merge agrees on a few
    rle_d, rle_g = mask_util.encode(np.asfortranarray(dt_masks[0])), mask_util.encode(np.asfortranarray(gt_masks[0]))
    assert got[0] == mask_util.area(mask_util.merge([rle_d, rle_g], intersect=True))


def test_long_runs_and_negative_deltas():
    # counts far apart in size: multi-chunk numbers, with negative deltas (counts[i] - counts[i-2] < 0)
    h, w = 720, 1280
    counts = [0, 5, 900000, 3, 10000, 1, 1, 2]
    counts.append(h * w - sum(counts))
    m = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8).reshape((h, w), order="F")
    r = decode_strings([mask_to_rle(m)["counts"]], h, w)
    np.testing.assert_array_equal(np.diff(run_ends(r, 0), prepend=0), counts)
    assert r.area[0] == m.sum()


def test_malformed_strings_are_reported_with_their_index():
    h, w = 6, 8
    good = mask_to_rle(np.ones((h, w), np.uint8))["counts"]
    short = mask_to_rle(np.ones((h, w - 1), np.uint8))["counts"]
    with pytest.raises(MalformedRLE) as info:
        decode_strings([good, short], h, w)
    assert info.value.index == 1 and "add up to 42, expected height*width = 48" in info.value.reason
    with pytest.raises(MalformedRLE) as info:
        decode_strings([good, good, good + "~"], h, w)
    assert info.value.index == 2 and "alphabet" in info.value.reason
    with pytest.raises(MalformedRLE) as info:
        decode_strings([good, good[:1] + "~" + good[1:]], h, w)
    assert info.value.index == 1 and "alphabet" in info.value.reason
    with pytest.raises(MalformedRLE) as info:
        decode_strings([good, ""], h, w)
    assert info.value.index == 1 and "no runs" in info.value.reason
    with pytest.raises(MalformedRLE) as info:
        runs_from_count_lists([[48], [50, -2]], h, w)
    assert info.value.index == 1 and "negative" in info.value.reason


def test_evaluate_names_the_prediction_with_a_malformed_string(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5] = 1
    gt, res = case_from_masks(
        {1: (6, 8, 2)},
        [{"video_id": 1, "category_id": 1, "masks": [m, m]}],
        [{"video_id": 1, "category_id": 1, "score": 0.5, "masks": [m, m]}],
    )
    res[0]["segmentations"][1]["counts"] = mask_to_rle(np.ones((6, 7), np.uint8))["counts"]
    with pytest.raises(VISFormatError) as info:
        evaluate(gt, res)
    msg = str(info.value)
    assert "video_id 1" in msg and "segmentations[1]" in msg and "expected height*width = 48" in msg


@pytest.mark.parametrize("split", ["one_batch", "batch_per_video_small_blocks_int64"])
def test_fast_evaluator_is_independent_of_batches_and_blocks(split, monkeypatch):
    # batches of videos, decoding blocks and the run-end dtype are speed knobs: the numbers must not move
    from vis_core.eval import build_params, fast
    from vis_core.eval.evaluator import load_inputs
    from vis_core.eval.reference import evaluate_reference
    from vis_core.eval.summarize import summarize
    from vis_core.eval.synthetic_case import make_case

    gt, res = make_case(n_videos=5, n_frames=4, n_categories=3, crowded_objects=(4, 7), false_positives=5, seed=3)
    gt, kept, _ = load_inputs(gt, res)
    params = build_params(False)
    want = summarize(evaluate_reference(gt, kept, params))
    if split != "one_batch":
        monkeypatch.setattr(fast, "_BATCH_POSITIONS", 1)
        monkeypatch.setattr(runs, "_BLOCK", 64)
        monkeypatch.setattr(runs, "_INT32_LINE", 0)
    assert summarize(fast.evaluate_fast(gt, kept, params)) == want


@pytest.mark.parametrize("enabled", [True, False])
def test_load_json_leaves_the_garbage_collector_as_it_found_it(tmp_path, enabled):
    import gc

    from vis_core.data.ytvis import load_json, save_json

    path = save_json([{"a": [1, 2]}] * 3, tmp_path / "x.json")
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert load_json(path) == [{"a": [1, 2]}] * 3
        assert gc.isenabled() == enabled
        with pytest.raises(VISFormatError):
            load_json(save_json([], tmp_path / "bad.json").with_name("missing.json"))
        (tmp_path / "broken.json").write_text("[{")
        with pytest.raises(VISFormatError, match="malformed json"):
            load_json(tmp_path / "broken.json")
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()


# ----------------------------------------------------------------------------------------- compiled kernels
try:
    from vis_core.eval import _rle_kernels
except ImportError:
    _rle_kernels = None

needs_kernels = pytest.mark.skipif(_rle_kernels is None, reason="compiled kernels not built")


def test_the_compiled_kernels_are_built():
    # setup.py builds them on install (the package still works without a compiler, on the numpy code)
    if os.environ.get("VIS_EVAL_KERNELS", "").lower() == "numpy":
        pytest.skip("VIS_EVAL_KERNELS=numpy: the numpy code was asked for")
    assert _rle_kernels is not None, "vis_core.eval._rle_kernels is not built: reinstall with a C compiler"
    assert runs.kernels_in_use()


def tracks_of(entries, frames_per_track):
    return [entries[i : i + frames_per_track] for i in range(0, len(entries), frames_per_track)]


@needs_kernels
@pytest.mark.parametrize("h,w", SIZES)
def test_compiled_decoder_equals_the_numpy_decoder(h, w, monkeypatch):
    monkeypatch.setattr(runs, "_rle_kernels", _rle_kernels)
    rng = np.random.default_rng(7 * h + w)
    n = 40 if h * w < 10**5 else 8
    masks, strings = masks_and_strings(rng, h, w, n)
    nulls = set(rng.choice(n, size=n // 5, replace=False).tolist())  # null frames: the empty mask
    empty = mask_to_rle(np.zeros((h, w), np.uint8))["counts"]
    for fmt in ("str", "list"):
        entries = [
            None if i in nulls else {"size": [h, w], "counts": s if fmt == "str" else counts_of(m)}
            for i, (m, s) in enumerate(zip(masks, strings, strict=True))
        ]
        got = runs.decode_tracks(tracks_of(entries, 4), h, w, rows=True)
        if fmt == "str":
            want = decode_strings([empty if i in nulls else s for i, s in enumerate(strings)], h, w)
        else:
            want = runs_from_count_lists([[h * w] if i in nulls else counts_of(m) for i, m in enumerate(masks)], h, w)
        np.testing.assert_array_equal(got.pos, want.pos.astype(np.int64))
        for name in ("tok_ptr", "area", "x0", "x1"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        table = column_table(want)  # pycocotools never writes zero-length runs: the row extents are equal
        np.testing.assert_array_equal(got.y0, table.y0)
        np.testing.assert_array_equal(got.y1, table.y1)


@needs_kernels
def test_compiled_decoder_reports_malformed_masks_as_the_numpy_decoder_does(monkeypatch):
    monkeypatch.setattr(runs, "_rle_kernels", _rle_kernels)
    h, w = 6, 8
    good = mask_to_rle(np.ones((h, w), np.uint8))["counts"]
    short = mask_to_rle(np.ones((h, w - 1), np.uint8))["counts"]
    cases = [
        [good, short],
        [good, good, good + "~"],
        [good, good[:1] + "~" + good[1:]],
        [good, ""],
        [good, good[:-1] + " "],
    ]
    for strings in cases:
        with pytest.raises(MalformedRLE) as want:
            decode_strings(strings, h, w)
        with pytest.raises(MalformedRLE) as got:
            runs.decode_tracks([[{"counts": s} for s in strings]], h, w)
        assert (got.value.index, got.value.reason) == (want.value.index, want.value.reason)
    for lists in ([[48], [50, -2]], [[48], [40]], [[48], []]):
        with pytest.raises(MalformedRLE) as want:
            runs_from_count_lists(lists, h, w)
        with pytest.raises(MalformedRLE) as got:
            runs.decode_tracks([[{"counts": c} for c in lists]], h, w)
        assert (got.value.index, got.value.reason) == (want.value.index, want.value.reason)


@needs_kernels
def test_compiled_decoder_leaves_other_inputs_to_the_numpy_code(monkeypatch):
    monkeypatch.setattr(runs, "_rle_kernels", _rle_kernels)
    h, w = 6, 8
    good = mask_to_rle(np.ones((h, w), np.uint8))["counts"]
    assert runs.decode_tracks([[{"counts": good}]], h, w) is not None
    assert runs.decode_tracks([[{"counts": good.encode()}]], h, w).area[0] == h * w  # bytes: decoded as well
    for odd in ([[0.0, 1.0, 2.0, 3.0]], {"counts": [48.0]}, {"counts": good + "é"}, {"counts": None}):
        assert runs.decode_tracks([[odd]], h, w) is None  # polygons, float counts, non-ascii, garbage
    monkeypatch.setattr(runs, "_rle_kernels", None)
    assert runs.decode_tracks([[{"counts": good}]], h, w) is None


@needs_kernels
@pytest.mark.parametrize("h,w", SIZES)
def test_compiled_intersections_equal_the_numpy_ones(h, w, monkeypatch):
    rng = np.random.default_rng(3 * h + w)
    n = 24 if h * w < 10**5 else 6
    dt_masks, dt_strings = masks_and_strings(rng, h, w, n)
    gt_masks = [random_mask(rng, h, w) for _ in range(n)]
    monkeypatch.setattr(runs, "_rle_kernels", _rle_kernels)
    dt = runs.decode_tracks([[{"counts": s} for s in dt_strings]], h, w)
    gt = runs.decode_tracks([[{"counts": counts_of(m)} for m in gt_masks]], h, w, rows=True)
    d, g = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
    got = runs.intersections(dt, gt, d, g)
    want = [int((dt_masks[i] & gt_masks[j]).sum()) for i, j in zip(d, g, strict=True)]
    np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(runs, "_rle_kernels", None)
    np.testing.assert_array_equal(runs.intersections(dt, gt, d, g), want)  # numpy path on the same runs
