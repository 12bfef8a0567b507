"""Streaming per-track state -> YouTube-VIS results entries."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from vis_core.data.ytvis import mask_to_rle, validate_annotations, validate_results
from vis_core.tracking.track_state import TrackStore, build_results

H, W, T = 6, 9, 5


def _mask(t, k):
    m = np.zeros((H, W), dtype=bool)
    m[k, t : t + 3] = True
    return m


def _gt(num_frames=T):
    return validate_annotations({
        "videos": [{"id": 3, "width": W, "height": H, "length": num_frames,
                    "file_names": [f"v/{i}.jpg" for i in range(num_frames)]}],
        "annotations": [],
        "categories": [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}, {"id": 30, "name": "c"}],
    }, "gt.json")


def _filled_store():
    """Track 4: frames 0-4; track 9: frames 1 and 3 (gap); track 2: frame 4 only; frame-level class probs."""
    store = TrackStore()
    probs = {4: [0.6, 0.3, 0.1], 9: [0.02, 0.6, 0.08], 2: [0.2, 0.2, 0.04]}
    for t in range(T):
        frame = store.start_frame()
        ids = [4] + ([9] if t in (1, 3) else []) + ([2] if t == 4 else [])
        scores = np.array([probs[i] for i in ids]) * (1 + 0.5 * (t % 2))  # per-frame variation
        store.add(frame, ids, [mask_to_rle(_mask(t, i % H)) for i in ids], torch.tensor(scores))
    return store


def test_finalize_produces_valid_results_entries():
    store = _filled_store()
    results = store.finalize(3, [10, 20, 30], score_threshold=0.05)
    kept, dropped = validate_results(json.loads(json.dumps(results)), _gt(), "results.json")
    assert dropped == 0 and len(kept) == len(results)
    segs = {}
    for r in results:
        assert len(r["segmentations"]) == T
        segs[r["category_id"], round(r["score"], 6)] = r["segmentations"]
    # mean over the frames where the track is present: track 4, frames 0..4 scaled 1, 1.5, 1, 1.5, 1 (x1.2)
    # -> [0.72, 0.36, 0.12]; track 9 frames 1, 3 (x1.5) -> [0.03, 0.9, 0.12]; track 2 frame 4 -> [.2, .2, .04]
    # classes above 0.05: 3 + 2 + 2 entries
    assert len(results) == 7
    assert set(segs) == {(10, 0.72), (20, 0.36), (30, 0.12), (20, 0.9), (10, 0.2), (20, 0.2)}
    track9 = segs[20, 0.9]
    assert [s is None for s in track9] == [True, False, True, False, True]
    assert np.array_equal(mask_util.decode(track9[3]).astype(bool), _mask(3, 9 % H))
    track2 = segs[10, 0.2]
    assert [s is None for s in track2] == [True] * 4 + [False]


def test_trailing_absent_frames_and_empty_frames_are_none():
    store = TrackStore()
    store.add(store.start_frame(), [1], [mask_to_rle(_mask(0, 0))], np.array([[0.9, 0.0, 0.0]]))
    store.start_frame()  # a frame with no track at all
    store.start_frame()
    (entry,) = store.finalize(3, [10, 20, 30], score_threshold=0.05)
    assert entry["segmentations"][1:] == [None, None] and entry["segmentations"][0] is not None


def test_topk_with_transform_and_remove():
    store = _filled_store()
    store.remove(2)
    results = store.finalize(3, [10, 20, 30], topk=2)
    # means: track 4 [0.72, 0.36, 0.12], track 9 [0.03, 0.9, 0.12] -> best (9, b) then (4, a)
    assert [(r["category_id"], round(r["score"], 6)) for r in results] == [(20, 0.9), (10, 0.72)]
    # the transform is applied to the (tracks, classes) means before selection
    results = store.finalize(3, [10, 20, 30], topk=2, transform=lambda s: s[:, [2, 0, 1]])
    assert [(r["category_id"], round(r["score"], 6)) for r in results] == [(30, 0.9), (20, 0.72)]
    assert len(store) == 2 and 2 not in store


def test_build_results_checks_inputs():
    segs = [[None, None]]
    with pytest.raises(ValueError, match="2 classes but 3 category_ids"):
        build_results(1, [1, 2, 3], np.array([[0.5, 0.5]]), segs, score_threshold=0.1)
    with pytest.raises(ValueError, match="track 7: score of class 1 is not finite"):
        build_results(1, [1, 2], np.array([[0.5, np.nan]]), segs, score_threshold=0.1, track_ids=[7])
    with pytest.raises(ValueError, match="exactly one of"):
        build_results(1, [1, 2], np.array([[0.5, 0.5]]), segs, score_threshold=0.1, topk=3)
    assert build_results(1, [1, 2], np.zeros((0, 2)), [], topk=10) == []


def test_store_rejects_out_of_order_or_mismatched_adds():
    store = TrackStore()
    f0 = store.start_frame()
    rle = mask_to_rle(_mask(0, 0))
    store.add(f0, [1], [rle], np.ones((1, 3)))
    with pytest.raises(ValueError, match="track 1: frame 0 added after frame 0"):
        store.add(f0, [1], [rle], np.ones((1, 3)))
    with pytest.raises(ValueError, match="must agree"):
        store.add(f0, [2, 3], [rle], np.ones((2, 3)))
    with pytest.raises(ValueError, match="2 classes, expected 3"):
        store.add(f0, [2], [rle], np.ones((1, 2)))
    store.start_frame()
    with pytest.raises(ValueError, match="current frame is 1"):
        store.add(f0, [2], [rle], np.ones((1, 3)))


def test_soft_masks_follow_the_binary_masks_frame_by_frame():
    from vis_core.tracking.soft_masks import SoftMaskCodec

    codec = SoftMaskCodec()
    store = TrackStore()
    store.record_soft_masks(codec)
    margins = {t: torch.randn(2, H, W, generator=torch.Generator().manual_seed(t)) for t in range(3)}
    for t in range(3):
        frame = store.start_frame()
        ids = [0, 1] if t != 1 else [1]  # track 0 is absent in frame 1
        m = margins[t][: len(ids)]
        store.add(frame, ids, [mask_to_rle((x > 0).numpy()) for x in m], torch.ones(len(ids), 3), margins=m)
    results = store.finalize(3, [10, 20, 30], score_threshold=0.5)
    track0 = next(r for r in results if r["segmentations"][1] is None)
    assert [s is None for s in track0["soft_segmentations"]] == [False, True, False]
    assert track0["soft_segmentations"][2] == codec.encode(margins[2][:1])[0]
    assert all(len(r["soft_segmentations"]) == 3 for r in results)
    with pytest.raises(ValueError, match="needs the margins"):
        store.start_frame()
        store.add(3, [0], [mask_to_rle(_mask(0, 0))], torch.ones(1, 3))
    with pytest.raises(RuntimeError, match="before the first frame"):
        store.record_soft_masks(codec)
    assert "soft_segmentations" not in _filled_store().finalize(3, [10, 20, 30], score_threshold=0.05)[0]
