import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from vis_core.data.ytvis import mask_to_rle
from vis_core.tracking.sequence_nms import multiclass_sequence_nms, sequence_nms, sequence_nms_rle
from vis_core.tracking.video_iou import video_iou_dense, video_iou_rle


def _rle(mask):
    return mask_to_rle(np.asarray(mask, dtype=np.uint8))


def _evaluator_iou(d_seq, g_seq):
    """The YouTube-VIS evaluator's iou_seq (youtubevos/cocoapi ytvoseval.computeIoU), for reference."""
    i = u = 0.0
    for d, g in zip(d_seq, g_seq, strict=True):
        d = None if d is None else {"size": d["size"], "counts": d["counts"].encode()}
        g = None if g is None else {"size": g["size"], "counts": g["counts"].encode()}
        if d and g:
            i += mask_util.area(mask_util.merge([d, g], True))
            u += mask_util.area(mask_util.merge([d, g], False))
        elif g:
            u += mask_util.area(g)
        elif d:
            u += mask_util.area(d)
    return i / u if u > 0 else 0.0


# ------------------------------------------------------------------------------------------- video IoU
def test_video_iou_hand_computed_with_absent_frame():
    a0 = np.zeros((4, 4))
    a0[:2, :2] = 1  # 4 px
    b0 = np.zeros((4, 4))
    b0[0, :] = 1  # 4 px, 2 shared with a0
    b1 = np.zeros((4, 4))
    b1[3, :3] = 1  # 3 px; track a is absent in frame 1
    a = [_rle(a0), None]
    b = [_rle(b0), _rle(b1)]
    iou = video_iou_rle([a], [b])
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(2 / (6 + 3))
    # None and an empty mask are the same thing; the diagonal of a self-IoU is 1
    assert video_iou_rle([[_rle(a0), _rle(np.zeros((4, 4)))]], [b])[0, 0] == pytest.approx(2 / 9)
    assert np.allclose(np.diag(video_iou_rle([a, b])), 1.0)


def test_video_iou_matches_evaluator_on_random_tracks():
    rng = np.random.default_rng(0)
    tracks = []
    for _ in range(5):
        track = []
        for _t in range(4):
            if rng.random() < 0.25:
                track.append(None)
            else:
                track.append(_rle(rng.random((9, 11)) < rng.uniform(0.05, 0.6)))
        tracks.append(track)
    tracks.append([None] * 4)  # an all-absent track: IoU 0 with everything, itself included
    got = video_iou_rle(tracks[:3], tracks[2:])
    ref = np.array([[_evaluator_iou(d, g) for g in tracks[2:]] for d in tracks[:3]])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert video_iou_rle(tracks)[5, 5] == 0.0
    # dense form agrees
    dense = torch.stack(
        [
            torch.stack(
                [torch.zeros(9, 11) if m is None else torch.from_numpy(mask_util.decode(
                    {"size": m["size"], "counts": m["counts"].encode()})).float() for m in tr]
            )
            for tr in tracks
        ]
    )
    torch.testing.assert_close(
        video_iou_dense(dense[:3], dense[2:]), torch.from_numpy(ref).float(), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(video_iou_dense(dense * 0.9, threshold=0.5), video_iou_dense(dense))


def test_video_iou_errors():
    with pytest.raises(ValueError, match="frame counts"):
        video_iou_rle([[None, None]], [[None]])
    with pytest.raises(ValueError, match="mask size"):
        video_iou_rle([[_rle(np.ones((2, 2)))]], [[_rle(np.ones((3, 2)))]])
    assert video_iou_rle([], [[None]]).shape == (0, 1)


# -------------------------------------------------------------------------------------------------- NMS
SCORES = np.array([0.9, 0.8, 0.7])
IOUS = np.array([[1.0, 0.6, 0.3], [0.6, 1.0, 0.9], [0.3, 0.9, 1.0]])


def test_hard_nms_greedy():
    keep, s = sequence_nms(SCORES, IOUS, 0.5, "hard")
    # 1 dies under 0; 2 only overlaps 0 by 0.3 (its 0.9 overlap is with the suppressed 1)
    assert keep.tolist() == [0, 2] and s.tolist() == [0.9, 0.7]
    assert sequence_nms(SCORES, IOUS, 0.95, "hard")[0].tolist() == [0, 1, 2]
    assert sequence_nms(SCORES, IOUS, 0.6, "hard")[0].tolist() == [0, 2]  # >= threshold suppresses


def test_linear_soft_nms():
    keep, s = sequence_nms(SCORES, IOUS, 0.5, "linear")
    # pick 0: s1 = 0.8 * (1 - 0.6) = 0.32, s2 untouched (0.3 < 0.5); pick 2: s1 *= 1 - 0.9
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(s, [0.9, 0.7, 0.032])


def test_gaussian_soft_nms_and_score_threshold():
    keep, s = sequence_nms(SCORES, IOUS, 0.5, "gaussian")
    s2 = 0.7 * math.exp(-0.09 / 0.5)
    s1 = 0.8 * math.exp(-0.36 / 0.5) * math.exp(-0.81 / 0.5)
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(s, [0.9, s2, s1])
    keep, s = sequence_nms(SCORES, IOUS, 0.5, "gaussian", score_threshold=0.1)
    assert keep.tolist() == [0, 2]
    # report 004's example: a 'person' at 0.78 overlapping the kept one by IoU ~0.48 drops to ~0.49
    _, s = sequence_nms([0.9, 0.78], [[1, 0.48], [0.48, 1]], 0.5, "gaussian")
    assert s[1] == pytest.approx(0.49, abs=0.005)


def test_category_aware_and_max_keep():
    labels = [1, 2, 1]
    keep, _ = sequence_nms(SCORES, IOUS, 0.5, "hard", labels=labels)
    assert keep.tolist() == [0, 1, 2]  # 1 has its own category; 2 overlaps 0 by 0.3 only
    keep, _ = sequence_nms(SCORES, IOUS, 0.2, "hard", labels=labels)
    assert keep.tolist() == [0, 1]
    keep, _ = sequence_nms(SCORES, IOUS, 0.99, "hard", max_keep=2)
    assert keep.tolist() == [0, 1]
    keep, _ = sequence_nms(SCORES, IOUS, 0.99, "hard", labels=labels, max_keep=1)
    assert keep.tolist() == [0, 1]


def test_ties_break_by_index_and_tensor_in_tensor_out():
    keep, s = sequence_nms(torch.tensor([0.5, 0.5, 0.5]), torch.eye(3), 0.5, "hard")
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64
    assert keep.tolist() == [0, 1, 2] and s.dtype == torch.float32
    keep, s = sequence_nms(np.zeros(0), np.zeros((0, 0)))
    assert keep.shape == (0,) and s.shape == (0,)


def test_multiclass_nms_per_class_over_all_tracks():
    # two tracks overlapping by 0.8; per class, the better one survives, the other decays
    cs = np.array([[0.9, 0.2], [0.6, 0.7]])
    ious = np.array([[1.0, 0.8], [0.8, 1.0]])
    t, c, s = multiclass_sequence_nms(cs, ious, 0.5, "hard")
    assert list(zip(t.tolist(), c.tolist(), s.tolist(), strict=True)) == [(0, 0, 0.9), (1, 1, 0.7)]
    t, c, s = multiclass_sequence_nms(cs, ious, 0.5, "gaussian", score_threshold=1e-3)
    decay = math.exp(-0.64 / 0.5)
    got = sorted(zip(t.tolist(), c.tolist(), s.tolist(), strict=True))
    expected = sorted([(0, 0, 0.9), (1, 0, 0.6 * decay), (1, 1, 0.7), (0, 1, 0.2 * decay)])
    for g, e in zip(got, expected, strict=True):
        assert g[:2] == e[:2] and g[2] == pytest.approx(e[2])
    assert s.tolist() == sorted(s.tolist(), reverse=True)
    tt, _, _ = multiclass_sequence_nms(torch.tensor(cs), torch.tensor(ious))
    assert isinstance(tt, torch.Tensor)


def test_report_004_two_stage_recipe_on_rle_tracks():
    """Category-agnostic hard NMS (0.9) removes a near-duplicate, category-aware soft NMS decays the rest."""
    base = np.zeros((6, 6))
    base[1:5, 1:5] = 1
    dup = base.copy()
    dup[1, 1] = 0  # IoU 15/16 with base
    shifted = np.zeros((6, 6))
    shifted[1:5, 2:6] = 1  # IoU 12/20 with base
    tracks = [[_rle(base)] * 2, [_rle(dup)] * 2, [_rle(shifted)] * 2]
    agn = [0.9, 0.85, 0.6]
    keep, _ = sequence_nms_rle(tracks, agn, iou_threshold=0.9, method="hard")
    assert keep.tolist() == [0, 2]
    kept = [tracks[i] for i in keep.tolist()]
    cls = np.array([[0.9, 0.05], [0.6, 0.3]])
    t, c, s = multiclass_sequence_nms(cls, video_iou_rle(kept), 0.5, "gaussian", score_threshold=1e-3)
    decay = math.exp(-((12 / 20) ** 2) / 0.5)
    got = {(int(i), int(k)): float(v) for i, k, v in zip(t, c, s, strict=True)}
    assert got == pytest.approx({(0, 0): 0.9, (1, 1): 0.3, (1, 0): 0.6 * decay, (0, 1): 0.05 * decay})
    assert [(int(i), int(k)) for i, k in zip(t, c, strict=True)] == [(0, 0), (1, 1), (1, 0), (0, 1)]
    with pytest.raises(ValueError, match="3 tracks but 2 scores"):
        sequence_nms_rle(tracks, [0.1, 0.2])


def test_nms_input_errors():
    with pytest.raises(ValueError, match="unknown method"):
        sequence_nms(SCORES, IOUS, method="soft")
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        sequence_nms(SCORES, np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        sequence_nms([0.1, float("nan")], np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        multiclass_sequence_nms(np.array([[0.1, np.inf]]), np.eye(1))
    with pytest.raises(ValueError, match="labels"):
        sequence_nms(SCORES, IOUS, labels=[1, 2])
