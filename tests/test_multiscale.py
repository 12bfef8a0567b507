import numpy as np
import pytest
import torch

from vis_core.data.ytvis import decode_segmentation, mask_to_rle
from vis_core.tracking.multiscale import MergedTrack, ScaleTrack, StreamingMultiScaleMerger, merge_multiscale

H = W = 4


def _prob(**regions):
    """4x4 probability map; regions: M (top-left 2x2), P (pixel (0, 2)), R (bottom-right 2x2), Q (3, 0)."""
    p = torch.zeros(H, W)
    for name, v in regions.items():
        if name == "M":
            p[:2, :2] = v
        elif name == "P":
            p[0, 2] = v
        elif name == "R":
            p[2:, 2:] = v
        elif name == "Q":
            p[3, 0] = v
    return p


def _bin(**pixels):
    return (_prob(**pixels) >= 0.5).numpy().astype(np.uint8)


def _decoded(track: MergedTrack):
    return [None if m is None else decode_segmentation(m, H, W) for m in track.masks]


# Three scales, two frames. Scale 0 (anchors): an object at M (+ weak P) and one at R.
# Scale 1: R again, M with a strong P, and a new object at Q. Scale 2: only the Q object.
S0 = [
    ScaleTrack([_prob(M=0.9, P=0.4), _prob(M=0.9, P=0.4)], torch.tensor([0.8, 0.2])),
    ScaleTrack([_prob(R=0.8), _prob(R=0.7)], torch.tensor([0.1, 0.6])),
]
S1 = [
    ScaleTrack([_prob(R=0.9), None], torch.tensor([0.2, 0.8])),
    ScaleTrack([_prob(M=0.7, P=0.8), _prob(M=0.7, P=0.8)], torch.tensor([0.6, 0.0])),
    ScaleTrack([_prob(Q=0.9), _prob(Q=0.9)], torch.tensor([0.4, 0.4])),
]
S2 = [ScaleTrack([_prob(Q=0.6), _prob(Q=0.6)], torch.tensor([0.2, 0.0]))]


def test_hand_made_three_scales():
    merged = merge_multiscale([S0, S1, S2])
    assert [m.members for m in merged] == [[(0, 0), (1, 1)], [(0, 1), (1, 0)], [(1, 2), (2, 0)]]
    # scores: summed over members / 3 scales (a scale that missed the object votes 0)
    torch.testing.assert_close(merged[0].scores, torch.tensor([1.4, 0.2]) / 3)
    torch.testing.assert_close(merged[1].scores, torch.tensor([0.3, 1.4]) / 3)
    torch.testing.assert_close(merged[2].scores, torch.tensor([0.6, 0.4]) / 3)
    # masks: mean of probabilities >= 0.5. M: (0.9 + 0.7) / 2, P: (0.4 + 0.8) / 2 = 0.6 -> M + P
    mp = _bin(M=1, P=1)
    assert all(np.array_equal(m, mp) for m in _decoded(merged[0]))
    # R object: frame 1 is absent at scale 1 -> (0.7 + 0) / 2 = 0.35 < 0.5 -> empty -> None
    r0, r1 = _decoded(merged[1])
    assert np.array_equal(r0, _bin(R=1)) and r1 is None
    # Q object: (0.9 + 0.6) / 2
    assert all(np.array_equal(m, _bin(Q=1)) for m in _decoded(merged[2]))
    # plain mean over members instead
    merged = merge_multiscale([S0, S1, S2], count_absent_scales=False)
    torch.testing.assert_close(merged[2].scores, torch.tensor([0.3, 0.2]))


def test_prob_output_is_the_member_mean():
    merged = merge_multiscale([S0, S1], output="prob")
    torch.testing.assert_close(merged[0].masks[0], _prob(M=0.8, P=0.6))
    torch.testing.assert_close(merged[1].masks[1], _prob(R=0.35))
    torch.testing.assert_close(merged[2].masks[0], _prob(Q=0.9))  # unmatched: its own probabilities
    torch.testing.assert_close(merged[2].scores, torch.tensor([0.2, 0.2]))  # seen at 1 of 2 scales
    # numpy probability maps are accepted too
    def to_np(tr):
        return ScaleTrack([None if m is None else m.numpy() for m in tr.masks], tr.scores)

    as_np = [[to_np(tr) for tr in sc] for sc in (S0, S1)]
    for got, ref in zip(merge_multiscale(as_np), merge_multiscale([S0, S1]), strict=True):
        assert got.masks == ref.masks and got.members == ref.members


def test_rle_members_vote_with_at_least_half():
    a = ScaleTrack([mask_to_rle(_bin(M=1)), mask_to_rle(_bin(M=1))], torch.tensor([1.0]))
    b = ScaleTrack([mask_to_rle(_bin(M=1, P=1)), mask_to_rle(_bin(M=1))], torch.tensor([0.5]))
    (m,) = merge_multiscale([[a], [b]])
    f0, f1 = _decoded(m)
    # two binary members: a pixel with one vote of two is kept (>= half), so the union
    assert np.array_equal(f0, _bin(M=1, P=1)) and np.array_equal(f1, _bin(M=1))
    torch.testing.assert_close(m.scores, torch.tensor([0.75]))
    # a lone RLE member passes through, bytes counts become json-ready strings
    raw = {"size": [H, W], "counts": mask_to_rle(_bin(Q=1))["counts"].encode()}
    (solo,) = merge_multiscale([[ScaleTrack([raw, None], torch.tensor([1.0]))]])
    assert solo.masks[0] == mask_to_rle(_bin(Q=1)) and solo.masks[1] is None


def _line(*ranges, n=14):
    m = torch.zeros(1, n)
    for lo, hi in ranges:
        m[0, lo : hi + 1] = 1
    return m


def test_hungarian_beats_greedy_and_threshold_filters_first():
    a = ScaleTrack([_line((1, 10))], torch.tensor([1.0]))
    b = ScaleTrack([_line((3, 13))], torch.tensor([1.0]))
    x = ScaleTrack([_line((1, 11))], torch.tensor([1.0]))  # IoU a 10/11, b 9/13
    y = ScaleTrack([_line((1, 8))], torch.tensor([1.0]))  # IoU a 8/10, b 6/13 (< 0.5)
    # greedy would take a-x and leave b alone; the assignment matches both: a-y and b-x
    merged = merge_multiscale([[a, b], [x, y]])
    assert [m.members for m in merged] == [[(0, 0), (1, 1)], [(0, 1), (1, 0)]]
    # with 0.85 only a-x is valid; an invalid a-y must not block it
    merged = merge_multiscale([[a, b], [x, y]], iou_threshold=0.85)
    assert [m.members for m in merged] == [[(0, 0), (1, 0)], [(0, 1)], [(1, 1)]]


def test_streaming_equals_whole_track_vote():
    """Per-frame updates with per-scale track ids give the result-level merge of the binarised tracks."""
    ids = [["a", "b"], [7, 8, 9], ["z"]]
    scales = [S0, S1, S2]
    merger = StreamingMultiScaleMerger(num_scales=3)
    for t in range(2):
        frame = [
            {ids[s][j]: tr.masks[t] for j, tr in enumerate(sc) if tr.masks[t] is not None}
            for s, sc in enumerate(scales)
        ]
        merger.update(frame)
    scores = [{i: tr.scores for i, tr in zip(ids[s], sc, strict=True)} for s, sc in enumerate(scales)]
    merged = merger.finalize(scores)

    def binarise(tr):
        masks = [None if m is None else mask_to_rle((m >= 0.5).numpy()) for m in tr.masks]
        return ScaleTrack(masks, tr.scores)

    binarised = [[binarise(tr) for tr in sc] for sc in scales]
    reference = merge_multiscale(binarised)
    assert [m.members for m in merged] == [[(0, "a"), (1, 8)], [(0, "b"), (1, 7)], [(1, 9), (2, "z")]]
    for got, ref in zip(merged, reference, strict=True):
        assert got.masks == ref.masks
        torch.testing.assert_close(got.scores, ref.scores)
    # votes, not probabilities: P is above 0.5 only at scale 1, one vote of two -> kept (union)
    assert np.array_equal(_decoded(merged[0])[0], _bin(M=1, P=1))
    # R at frame 1: scale 0 votes R, scale 1 absent -> one of two -> kept (the prob mean dropped it)
    assert np.array_equal(_decoded(merged[1])[1], _bin(R=1))


def test_streaming_tracks_may_start_late():
    merger = StreamingMultiScaleMerger(num_scales=2)
    merger.update([{0: _prob(M=1.0)}, {}])
    merger.update([{0: _prob(M=1.0)}, {5: _prob(M=1.0)}])
    merged = merger.finalize([{0: torch.tensor([1.0])}, {5: torch.tensor([0.5])}])
    # IoU 4/8 = 0.5 -> matched; frame 0: one vote of two -> kept
    assert [m.members for m in merged] == [[(0, 0), (1, 5)]]
    assert all(np.array_equal(f, _bin(M=1)) for f in _decoded(merged[0]))
    with pytest.raises(ValueError, match="no scores for track ids \\[5\\]"):
        merger.finalize([{0: torch.tensor([1.0])}, {}])
    with pytest.raises(ValueError, match="3 scales given, expected 2"):
        merger.update([{}, {}, {}])


def test_errors_and_empty():
    assert merge_multiscale([[], []]) == []
    with pytest.raises(ValueError, match="frame counts"):
        merge_multiscale([[ScaleTrack([None], torch.ones(1))], [ScaleTrack([None, None], torch.ones(1))]])
    with pytest.raises(ValueError, match="output"):
        merge_multiscale([S0], output="mask")
