import numpy as np
import pytest
import torch

from vis_core.data.ytvis import decode_segmentation, mask_to_rle, masks_to_rles
from vis_core.engine.infer import merge_scale_results
from vis_core.tracking.multiscale import MergedTrack, ScaleTrack, merge_multiscale, merged_score
from vis_core.tracking.soft_masks import SoftMaskCodec

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


def _decoded(masks):
    masks = masks.masks if isinstance(masks, MergedTrack) else masks
    return [None if m is None else decode_segmentation(m, H, W) for m in masks]


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
    # absent_weight 0: the plain mean over members; 0.5: a missing scale is half a zero vote
    torch.testing.assert_close(merge_multiscale([S0, S1, S2], absent_weight=0)[2].scores, torch.tensor([0.3, 0.2]))
    torch.testing.assert_close(merge_multiscale([S0, S1, S2], absent_weight=0.5)[2].scores,
                               torch.tensor([0.6, 0.4]) / 2.5)


def test_scores_average_agreed_tracks_and_penalise_one_scale_tracks():
    both = merged_score([torch.tensor([0.8]), torch.tensor([0.6])], num_scales=2, absent_weight=1)
    torch.testing.assert_close(both, torch.tensor([0.7]))
    # the default full zero vote halves a one-scale track (measured: those are nearly all false positives)
    torch.testing.assert_close(merged_score([torch.tensor([0.9])], 2, absent_weight=1), torch.tensor([0.45]))
    torch.testing.assert_close(merged_score([torch.tensor([0.9])], 2, absent_weight=0.5), torch.tensor([0.6]))
    with pytest.raises(ValueError, match="absent_weight"):
        merge_multiscale([S0], absent_weight=1.5)


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


def test_binary_members_without_soft_masks_count_as_zero_one():
    # the fallback for results without soft masks (clip / offline methods): a half vote of 0/1 masks
    a = ScaleTrack([mask_to_rle(_bin(M=1)), mask_to_rle(_bin(M=1))], torch.tensor([1.0]))
    b = ScaleTrack([mask_to_rle(_bin(M=1, P=1)), mask_to_rle(_bin(M=1))], torch.tensor([0.5]))
    (m,) = merge_multiscale([[a], [b]])
    f0, f1 = _decoded(m)
    assert np.array_equal(f0, _bin(M=1, P=1)) and np.array_equal(f1, _bin(M=1))
    torch.testing.assert_close(m.scores, torch.tensor([0.75]))
    # a lone RLE member passes through, bytes counts become json-ready strings
    raw = {"size": [H, W], "counts": mask_to_rle(_bin(Q=1))["counts"].encode()}
    (solo,) = merge_multiscale([[ScaleTrack([raw, None], torch.tensor([1.0]))]])
    assert solo.masks[0] == mask_to_rle(_bin(Q=1)) and solo.masks[1] is None


def _entry(score, *probs):
    """A results entry as an online associator that keeps soft masks writes it, from probability maps."""
    codec = SoftMaskCodec()
    margins = torch.logit(torch.stack(probs).clamp(1e-4, 1 - 1e-4))
    return {"video_id": 1, "category_id": 3, "score": score,
            "segmentations": masks_to_rles((margins > 0).numpy()), "soft_segmentations": codec.encode(margins)}


def test_soft_merge_of_a_subset_mask_is_not_the_union():
    # scale 0 marks M + P + Q, scale 1 (its mask a strict subset) only M. P: 0.6 vs 0.1 -> mean 0.35, dropped;
    # Q: 0.9 vs 0.3 -> mean 0.6, kept. Quantised (levels 0.25 / 0.5 / 0.75): P 0.625 + 0 -> 0.31; Q 1 + 0.375
    # -> 0.69. The old vote of binary masks kept their union M + P + Q.
    big = _entry(0.8, _prob(M=0.95, P=0.6, Q=0.9))
    small = _entry(0.6, _prob(M=0.9, P=0.1, Q=0.3))
    assert np.array_equal(_decoded(big["segmentations"])[0], _bin(M=1, P=1, Q=1))
    assert np.array_equal(_decoded(small["segmentations"])[0], _bin(M=1))
    (merged,) = merge_scale_results([[big], [small]])
    assert np.array_equal(_decoded(merged["segmentations"])[0], _bin(M=1, Q=1))
    assert merged["score"] == pytest.approx(0.7) and set(merged) == {"video_id", "category_id", "score",
                                                                      "segmentations"}
    # a lone scale keeps its own binary mask exactly, and a one-scale track half its score
    (alone,) = merge_scale_results([[big], []])
    assert alone["segmentations"] == big["segmentations"] and alone["score"] == pytest.approx(0.4)


def test_codec_round_trip_and_errors():
    codec = SoftMaskCodec([0.75, 0.25])
    assert codec.levels == (0.25, 0.75) and codec == SoftMaskCodec() and SoftMaskCodec([]) != codec
    p = torch.tensor([[0.05, 0.3, 0.45, 0.55], [0.7, 0.8, 0.99, 0.5]])[None]
    margins = torch.logit(p)
    (extra,) = codec.encode(margins)
    binary = mask_to_rle((margins[0] > 0).numpy())
    decoded = codec.decode(binary, extra, (2, 4))
    # bins: <= 0.25 -> 0, (0.25, 0.5] -> 0.375, (0.5, 0.75] -> 0.625, > 0.75 -> 1 (0.5 itself is not above 0.5)
    np.testing.assert_allclose(decoded, [[0, 0.375, 0.375, 0.625], [0.625, 1, 1, 0.375]])
    assert np.array_equal(decoded >= 0.5, (margins[0] > 0).numpy())  # thresholding gives the binary mask back
    np.testing.assert_array_equal(codec.decode(binary, None, (2, 4)), (margins[0] > 0).numpy())  # no soft: 0/1
    np.testing.assert_array_equal(codec.decode(None, None, (2, 4)), np.zeros((2, 4)))
    assert SoftMaskCodec([]).encode(margins) == [[]]
    with pytest.raises(ValueError, match="levels"):
        SoftMaskCodec([0.5])
    with pytest.raises(ValueError, match="level masks"):
        SoftMaskCodec([0.2, 0.4, 0.8]).decode(binary, extra, (2, 4))


def test_hungarian_beats_greedy_and_threshold_filters_first():
    def line(*ranges, n=14):
        m = torch.zeros(1, n)
        for lo, hi in ranges:
            m[0, lo : hi + 1] = 1
        return m

    a = ScaleTrack([line((1, 10))], torch.tensor([1.0]))
    b = ScaleTrack([line((3, 13))], torch.tensor([1.0]))
    x = ScaleTrack([line((1, 11))], torch.tensor([1.0]))  # IoU a 10/11, b 9/13
    y = ScaleTrack([line((1, 8))], torch.tensor([1.0]))  # IoU a 8/10, b 6/13 (< 0.5)
    # greedy would take a-x and leave b alone; the assignment matches both: a-y and b-x
    merged = merge_multiscale([[a, b], [x, y]])
    assert [m.members for m in merged] == [[(0, 0), (1, 1)], [(0, 1), (1, 0)]]
    # with 0.85 only a-x is valid; an invalid a-y must not block it
    merged = merge_multiscale([[a, b], [x, y]], iou_threshold=0.85)
    assert [m.members for m in merged] == [[(0, 0), (1, 0)], [(0, 1)], [(1, 1)]]


def test_errors_and_empty():
    assert merge_multiscale([[], []]) == []
    with pytest.raises(ValueError, match="frame counts"):
        merge_multiscale([[ScaleTrack([None], torch.ones(1))], [ScaleTrack([None, None], torch.ones(1))]])
    with pytest.raises(ValueError, match="output"):
        merge_multiscale([S0], output="mask")
