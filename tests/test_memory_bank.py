"""IDOL inference: detection filtering (NMS), memory-bank association, births / deaths, results."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util
from scipy.optimize import linear_sum_assignment

from vis_core.tracking.memory_bank import IDOLTracker, IDOLTrackerConfig, bisoftmax_similarity, greedy_assign
from vis_core.tracking.nms import batched_box_nms, box_iou, mask_iou, mask_nms, select_detections

H, W, C = 48, 96, 32
SCALE = 6.0  # embedding norm: dot products of an identity with itself are SCALE**2 = 36


# ---------------------------------------------------------------------------------------------- helpers
def synth_video(base, present, noise, seed, corrupt=None, x_paths=None, bands=None, num_bg=4, num_classes=3):
    """Synthetic per-frame IDOL outputs for identities with embeddings ``base`` (K, C).

    present: (T, K) bool, which identities are visible in each frame. noise: per-dimension std of the
    embedding noise. corrupt: {(t, k): (C,) embedding} replaces identity k's embedding at frame t.
    x_paths / bands: per identity, the box x position per frame / the box y position (12 x 10 boxes).
    Each frame also has ``num_bg`` background queries (score 0.05) and the queries are shuffled.
    Returns a list of dicts with embeds, scores, class_probs, boxes, masks (logits) and gt (identity, -1 bg).
    """
    g = torch.Generator().manual_seed(seed)
    num_frames, k_ids = present.shape
    frames = []
    for t in range(num_frames):
        embeds, scores, gts, boxes = [], [], [], []
        for k in range(k_ids):
            if not present[t, k]:
                continue
            e = base[k] + noise * torch.randn(base.shape[1], generator=g)
            if corrupt and (t, k) in corrupt:
                e = corrupt[(t, k)]
            x = x_paths[k][t] if x_paths is not None else 2 + 11 * k
            y = bands[k] if bands is not None else 2 + 7 * (k % 5)
            embeds.append(e)
            scores.append(0.6 + 0.3 * torch.rand(1, generator=g).item())
            gts.append(k)
            boxes.append([x, y, x + 12, y + 10])
        for _ in range(num_bg):
            embeds.append(torch.randn(base.shape[1], generator=g))
            scores.append(0.05)
            gts.append(-1)
            boxes.append([0, 0, 4, 4])
        perm = torch.randperm(len(embeds), generator=g)
        gt = torch.tensor(gts)[perm]
        bx = torch.tensor(boxes, dtype=torch.float)[perm]
        sc = torch.tensor(scores)[perm]
        masks = torch.full((len(gts), H, W), -5.0)
        for i, (x0, y0, x1, y1) in enumerate(bx.long().tolist()):
            masks[i, y0:y1, x0:x1] = 5.0
        probs = torch.full((len(gts), num_classes), 0.01)
        probs[torch.arange(len(gts)), gt.clamp(min=0) % num_classes] = sc
        frames.append(dict(embeds=torch.stack(embeds)[perm], scores=sc, class_probs=probs, boxes=bx,
                           masks=masks, gt=gt))
    return frames


def identity_accuracy(frames, pred_ids):
    """Fraction of (frame, visible identity) whose track id equals the identity's track after the best
    one-to-one identity <-> track mapping (untracked detections count as errors)."""
    pairs = [(g, p) for f, ids in zip(frames, pred_ids, strict=True)
             for g, p in zip(f["gt"].tolist(), ids.tolist(), strict=True) if g >= 0]
    gts = sorted({g for g, _ in pairs})
    preds = sorted({p for _, p in pairs if p >= 0})
    counts = np.zeros((len(gts), max(len(preds), 1)))
    for g, p in pairs:
        if p >= 0:
            counts[gts.index(g), preds.index(p)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return counts[rows, cols].sum() / len(pairs)


def run_tracker(frames, cfg):
    tracker = IDOLTracker(cfg)
    ids = [tracker.update(f["embeds"], f["scores"], f["class_probs"], f["boxes"], f["masks"]) for f in frames]
    return ids, tracker


def unit(x):
    return F.normalize(x, dim=-1)


# ------------------------------------------------------------------------------------------------ NMS
def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))


def test_batched_box_nms_is_class_aware_and_sorted():
    boxes = torch.tensor(
        [[0.0, 0, 100, 100], [0, 0, 100, 97], [0, 0, 100, 100], [0, 0, 100, 80], [200, 200, 210, 210]]
    )
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8, 0.3])
    labels = torch.tensor([0, 0, 1, 0, 0])
    # box 1 (0.9) suppresses box 0 (IoU 0.97 > 0.9, same class); box 3 has IoU 0.80/0.97 = 0.82 with box 1:
    # kept; box 2 is identical to box 0 but of another class: kept.
    keep = batched_box_nms(boxes, scores, labels, 0.9)
    assert keep.tolist() == [1, 3, 2, 4]
    assert batched_box_nms(boxes, scores, labels, 0.8).tolist() == [1, 2, 4]


def test_mask_iou_bitpacked_equals_matmul():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 13, 29, generator=g) > 0.6  # 377 px: not a multiple of 64 (padding path)
    b = torch.rand(5, 13, 29, generator=g) > 0.3
    inter = (a.flatten(1).double() @ b.flatten(1).double().T)
    union = a.flatten(1).sum(1)[:, None] + b.flatten(1).sum(1)[None] - inter
    expected = (inter + 1e-6) / (union + 1e-6)
    assert torch.allclose(mask_iou(a, b, packed=True), expected, rtol=0, atol=1e-12)
    assert torch.allclose(mask_iou(a, b, packed=False), expected, rtol=0, atol=1e-12)


def test_mask_iou_and_nms_hand_made():
    m = torch.zeros(4, 10, 10, dtype=torch.bool)
    m[0, :, :5] = True  # 50 px
    m[1, :, :4] = True  # 40 px, IoU with 0 = 40/50 = 0.8
    m[2, :, 3:8] = True  # 50 px, IoU with 0 = 20/80 = 0.25
    # m[3] empty: IoU with another empty mask is 1 (IDOL's +1e-6 smoothing), 0 with a non-empty one
    iou = mask_iou(m, m)
    assert iou[0, 1].item() == pytest.approx(0.8)
    assert iou[0, 2].item() == pytest.approx(0.25)
    assert iou[3, 3].item() == pytest.approx(1.0)
    assert iou[0, 3].item() == pytest.approx(0.0, abs=1e-6)
    assert mask_nms(m, 0.5).tolist() == [True, False, True, True]
    assert mask_nms(m, 0.85).tolist() == [True, True, True, True]
    # greedy in the given order: mask 1 first suppresses mask 0 instead
    assert mask_nms(m[[1, 0, 2]], 0.5).tolist() == [True, False, True]
    # a suppressed mask does not suppress others: 0 kills 1, and 1 would have killed 2'
    m2 = torch.zeros(3, 10, 10, dtype=torch.bool)
    m2[0, :, :5] = True
    m2[1, :, 1:6] = True  # IoU(0,1) = 40/60
    m2[2, :, 2:7] = True  # IoU(0,2) = 30/70, IoU(1,2) = 40/60
    assert mask_nms(m2, 0.5).tolist() == [True, False, True]


def test_select_detections_threshold_nms_and_fallback():
    scores = torch.tensor([0.05, 0.6, 0.95, 0.3, 0.08])
    labels = torch.tensor([0, 0, 0, 1, 0])
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10.5], [40, 40, 50, 50], [60, 60, 70, 70]]
    )
    masks = torch.zeros(5, 64, 64, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    # score > 0.1 keeps 1, 2, 3; box NMS removes 1 (IoU 0.95 with the better 2); order by score
    assert select_detections(scores, labels, boxes, masks).tolist() == [2, 3]
    # without box NMS, mask NMS (IoU 1 > 0.5) removes 1 as well
    assert select_detections(scores, labels, boxes, masks, box_nms_thresh=1.0).tolist() == [2, 3]
    # mask NMS disabled as well: all three survive, by decreasing score
    keep = select_detections(scores, labels, boxes, masks, box_nms_thresh=1.0, mask_nms_thresh=1.0)
    assert keep.tolist() == [2, 1, 3]
    # nothing above the threshold: the single best query is kept
    assert select_detections(scores * 0.1, labels, boxes, masks).tolist() == [2]


# ------------------------------------------------------------------------------------------ association
def test_bisoftmax_and_age_weighted_greedy_assignment_hand_computed():
    d = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    m = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    sim = bisoftmax_similarity(d, m)
    feats = d @ m.T
    expected = (feats.softmax(1) + feats.softmax(0)) / 2
    assert torch.allclose(sim, expected)
    # Detection 0 is ambiguous between a young track (age 1) and an older one (age 5), raw scores 0.6 / 0.55:
    # age weighting picks the long-lived track 1; detection 1 then cannot take the zeroed column.
    s = np.array([[0.6, 0.55, 0.1], [0.2, 0.9, 0.3]], dtype=np.float32)
    assert greedy_assign(s.copy(), np.array([1.0, 5.0, 2.0]), 0.5, True).tolist() == [1, -1]
    assert greedy_assign(s.copy(), np.array([1.0, 5.0, 2.0]), 0.5, False).tolist() == [0, 1]
    # non-candidate entries are scaled by the candidates' mean age (3): 0.3 * 3 = 0.9 < 0.55 * 5
    s2 = np.array([[0.6, 0.55, 0.3]], dtype=np.float32)
    assert greedy_assign(s2, np.array([1.0, 5.0, 9.0]), 0.5, True).tolist() == [1]


def test_memory_embedding_is_score_and_temporally_weighted():
    cfg = IDOLTrackerConfig(memory_len=3)
    tracker = IDOLTracker(cfg)
    e = torch.eye(4) * 5
    scores = [0.9, 0.5, 0.7, 0.3]
    for t in range(4):
        tracker.associate(e[t:t + 1], torch.tensor([scores[t]]))  # a single detection always joins the track
    assert tracker.live_track_ids == [0]
    # bank holds frames 1..3 with weights score + (1/3, 2/3, 1)
    w = torch.tensor([0.5 + 1 / 3, 0.7 + 2 / 3, 0.3 + 1.0])
    expected = (w[:, None] * e[1:]).sum(0) / w.sum()
    assert torch.allclose(tracker.memory_embeddings()[0], expected, atol=1e-6)
    no_ramp = IDOLTracker(IDOLTrackerConfig(memory_len=3, temporal_weight=False))
    for t in range(4):
        no_ramp.associate(e[t:t + 1], torch.tensor([scores[t]]))
    w = torch.tensor(scores[1:])
    assert torch.allclose(no_ramp.memory_embeddings()[0], (w[:, None] * e[1:]).sum(0) / w.sum(), atol=1e-6)


def test_identities_recovered_with_noise_occlusion_and_crossing_near_duplicates():
    """4 identities; 0 and 1 have almost identical embeddings (cosine 0.9) and cross each other's path;
    2 and 3 disappear for 4 and 5 frames. Embedding noise is 30% of the embedding norm."""
    num_frames = 40
    for seed in range(4):
        g = torch.Generator().manual_seed(100 + seed)
        base = unit(torch.randn(4, C, generator=g))
        base[1] = unit(base[0] + 0.5 * base[1])
        base = base * SCALE
        assert (unit(base[0]) @ unit(base[1])).item() > 0.85
        present = torch.ones(num_frames, 4, dtype=torch.bool)
        present[12:16, 2] = False
        present[25:30, 3] = False
        x_paths = [[2 + 2 * t for t in range(num_frames)], [82 - 2 * t for t in range(num_frames)],
                   [40] * num_frames, [60] * num_frames]
        noise = 0.3 * SCALE / C**0.5
        frames = synth_video(base, present, noise, seed, x_paths=x_paths, bands=[5, 11, 25, 36])
        ids, tracker = run_tracker(frames, IDOLTrackerConfig())
        acc = identity_accuracy(frames, ids)
        assert acc >= 0.95, (seed, acc)
        # the occluded identities come back under their old ids
        for k, t_gone, t_back in ((2, 11, 16), (3, 24, 30)):
            before = ids[t_gone][frames[t_gone]["gt"] == k].item()
            after = ids[t_back][frames[t_back]["gt"] == k].item()
            assert before == after, (seed, k)


def _periodically_corrupted_video(seed, num_frames=40, k_ids=4, blend=0.6):
    """Distinct identities; every 10 frames each identity (staggered) shows one embedding pulled 60% towards
    another identity (a single bad frame, e.g. a partial occlusion by that object)."""
    g = torch.Generator().manual_seed(200 + seed)
    base = unit(torch.randn(k_ids, C, generator=g)) * SCALE
    corrupt = {}
    for k in range(k_ids):
        for t in range(3 + 2 * k, num_frames, 10):
            corrupt[(t, k)] = unit((1 - blend) * base[k] + blend * base[(k + 1) % k_ids]) * SCALE
    present = torch.ones(num_frames, k_ids, dtype=torch.bool)
    return synth_video(base, present, 0.1 * SCALE / C**0.5, seed, corrupt=corrupt)


def test_memory_bank_survives_single_bad_frames_that_break_last_frame_matching():
    bank, last_only = [], []
    for seed in range(4):
        frames = _periodically_corrupted_video(seed)
        bank.append(identity_accuracy(frames, run_tracker(frames, IDOLTrackerConfig())[0]))
        last_only.append(identity_accuracy(frames, run_tracker(frames, IDOLTrackerConfig(memory_len=1))[0]))
    assert min(bank) >= 0.9, bank
    # matching against the last embedding only switches identity after every bad frame
    assert np.mean(last_only) <= np.mean(bank) - 0.3, (bank, last_only)


# ------------------------------------------------------------------------------------- births / deaths
def _frame(embeds, scores, num_classes=3):
    """Frame outputs (10 x 40 masks) for up to 4 hand-placed detections (disjoint boxes and masks)."""
    n = embeds.shape[0]
    boxes = torch.tensor([[10.0 * i, 0, 10.0 * i + 8, 8] for i in range(n)])
    masks = torch.full((n, 10, 40), -1.0)
    for i in range(n):
        masks[i, :8, 10 * i:10 * i + 8] = 1.0
    probs = torch.zeros(n, num_classes)
    probs[:, 0] = torch.as_tensor(scores)
    return embeds, torch.as_tensor(scores, dtype=torch.float), probs, boxes, masks


def test_birth_thresholds():
    e = torch.eye(3) * SCALE
    # empty memory: births need score > init_score_thresh (0.2); 0.15 passes detection (> 0.1) but no track
    tracker = IDOLTracker(IDOLTrackerConfig())
    ids = tracker.update(*_frame(e[:2], [0.15, 0.25]))
    assert ids.tolist() == [-1, 0]
    # OVIS: with tracks in memory a new detection needs > 0.3 (ADD_NEW_SCORE); init threshold stays 0.2
    for score, born in ((0.25, False), (0.35, True)):
        tracker = IDOLTracker(IDOLTrackerConfig.for_dataset("ovis"))
        assert tracker.update(*_frame(e[:2], [0.9, 0.9])).tolist() == [0, 1]
        ids = tracker.update(*_frame(e, [0.9, 0.9, score]))
        assert ids.tolist() == [0, 1, 2 if born else -1]
    tracker = IDOLTracker(IDOLTrackerConfig())  # YouTube-VIS default 0.2
    tracker.update(*_frame(e[:2], [0.9, 0.9]))
    assert tracker.update(*_frame(e, [0.9, 0.9, 0.25])).tolist() == [0, 1, 2]


def test_update_rejects_bad_inputs():
    tracker = IDOLTracker()
    emb, scores, probs, boxes, masks = _frame(torch.eye(2) * SCALE, [0.9, 0.9])
    with pytest.raises(ValueError, match="boxes has shape"):
        tracker.update(emb, scores, probs, boxes[:1], masks)
    scores[1] = float("nan")
    with pytest.raises(ValueError, match="frame 0: scores of query 1 is not finite"):
        tracker.update(emb, scores, probs, boxes, masks)


@pytest.mark.parametrize("missed, same_id", [(9, True), (10, False)])
def test_track_dies_after_ten_missed_frames(missed, same_id):
    e = torch.eye(2) * SCALE
    tracker = IDOLTracker(IDOLTrackerConfig())
    assert tracker.update(*_frame(e, [0.9, 0.9])).tolist() == [0, 1]
    for _ in range(missed):  # identity 0 occluded, identity 1 keeps being seen
        assert tracker.update(*_frame(e[1:], [0.9])).tolist() == [1]
    assert (0 in tracker.live_track_ids) == same_id
    ids = tracker.update(*_frame(e, [0.9, 0.9]))
    assert ids.tolist() == ([0, 1] if same_id else [2, 1])


def test_early_cleanup_drops_short_vanished_outputs_like_official():
    e = torch.eye(3) * SCALE
    tracker = IDOLTracker(IDOLTrackerConfig())
    # identity 2: every frame; identity 1: frames 0-2; identity 0: frames 0-1, then again from frame 10
    for t in range(12):
        visible = [k for k, seen in ((0, t < 2 or t >= 10), (1, t <= 2), (2, True)) if seen]
        tracker.update(*_frame(e[visible], [0.9] * len(visible)))
    results = tracker.finalize(7, [11, 12, 13])
    by_track = {}
    for r in results:
        assert len(r["segmentations"]) == 12
        by_track.setdefault(tuple(s is None for s in r["segmentations"]), []).append(r)
    present = sorted(by_track)
    # track 2 (all frames) and track 1 (3 frames) survive; track 0's first output (2 frames) was dropped at
    # frame 9, and its return at frame 10 (still in the memory: 8 missed frames) starts a fresh entry.
    assert present == sorted([
        tuple([False] * 12),
        tuple([False] * 3 + [True] * 9),
        tuple([True] * 10 + [False] * 2),
    ])
    assert tracker.live_track_ids == [0, 1, 2]


def test_video_score_is_mean_over_present_frames_and_classes_above_threshold():
    e = torch.eye(2) * SCALE
    tracker = IDOLTracker(IDOLTrackerConfig())
    p = [torch.tensor([0.9, 0.10, 0.01]), torch.tensor([0.7, 0.02, 0.03])]
    for t in range(4):
        emb, sc, probs, boxes, masks = _frame(e[:1] if t in (1, 2) else e, [0.9] * (1 if t in (1, 2) else 2))
        probs[0] = p[t % 2]
        if probs.shape[0] == 2:
            probs[1] = torch.tensor([0.01, 0.01, 0.6])
        tracker.update(emb, sc, probs, boxes, masks)
    results = tracker.finalize(3, [10, 20, 30])
    got = {(r["category_id"], round(r["score"], 6)) for r in results}
    # track 0 (4 frames): mean [0.8, 0.06, 0.02] -> classes 10 and 20; track 1 (frames 0, 3): 30 only
    assert got == {(10, 0.8), (20, 0.06), (30, 0.6)}
    track1 = next(r for r in results if r["category_id"] == 30)
    assert [s is None for s in track1["segmentations"]] == [False, True, True, False]
    decoded = mask_util.decode(track1["segmentations"][0])
    assert decoded.sum() == 64 and decoded[:8, 10:18].all()


# ------------------------------------------------------------------------------ reference equivalence
def _reference_associate(tracks, det_embeds, det_scores, frame, next_id, cfg):
    """Literal per-track implementation of the official association (lists, dicts and loops)."""
    ids = [-1] * len(det_scores)
    if tracks:
        keys = list(tracks)
        memo = []
        for k in keys:
            embs, scs = tracks[k]["embeds"], tracks[k]["scores"]
            n = len(embs)
            w = [s + (i + 1) / n for i, s in enumerate(scs)]
            memo.append(sum(wi * ei for wi, ei in zip(w, embs, strict=True)) / sum(w))
        feats = det_embeds @ torch.stack(memo).T
        sim = ((feats.softmax(1) + feats.softmax(0)) / 2).tolist()
        for i in range(len(det_scores)):
            row = sim[i]
            cand = [j for j, v in enumerate(row) if v > 0.5]
            if len(cand) > 1:
                mean_age = sum(tracks[keys[j]]["age"] for j in cand) / len(cand)
                row = [v * (tracks[keys[j]]["age"] if j in cand else mean_age) for j, v in enumerate(row)]
            best = max(range(len(row)), key=lambda j: (row[j], -j))
            if row[best] > 0.5:
                ids[i] = keys[best]
                for r in range(len(sim)):
                    if r != i:
                        sim[r][best] = 0.0
        thresh = cfg.new_score_thresh
    else:
        thresh = cfg.init_score_thresh
    for i, s in enumerate(det_scores.tolist()):
        if ids[i] == -1 and s > thresh:
            ids[i] = next_id
            next_id += 1
    for i, tid in enumerate(ids):
        if tid < 0:
            continue
        tr = tracks.setdefault(tid, {"embeds": [], "scores": [], "age": 0, "last": frame})
        tr["embeds"] = (tr["embeds"] + [det_embeds[i]])[-cfg.memory_len:]
        tr["scores"] = (tr["scores"] + [float(det_scores[i])])[-cfg.memory_len:]
        tr["age"] += 1
        tr["last"] = frame
    for k in [k for k, v in tracks.items() if frame - v["last"] >= cfg.max_missed_frames]:
        del tracks[k]
    return ids, next_id


def test_vectorised_tracker_matches_literal_reference():
    """Random streams with duplicated prototypes (so ambiguous, age-weighted matches happen), variable
    detection counts and long gaps (deaths): the tensor implementation equals the loop reference."""
    cfg = IDOLTrackerConfig()
    g = torch.Generator().manual_seed(0)
    protos = unit(torch.randn(6, 8, generator=g)) * 3
    protos[1] = protos[0] * 1.02
    for trial in range(3):
        tracker = IDOLTracker(cfg)
        ref_tracks, next_id = {}, 0
        for frame in range(40):
            n = int(torch.randint(0 if frame > 5 else 1, 6, (1,), generator=g))
            if 15 + trial <= frame < 28:
                n = min(n, 1)
            which = torch.randint(0, 6, (n,), generator=g)
            det = protos[which] + 0.4 * torch.randn(n, 8, generator=g)
            scores = torch.sort(torch.rand(n, generator=g) * 0.9 + 0.1, descending=True).values
            got = tracker.associate(det, scores, frame).tolist()
            want, next_id = _reference_associate(ref_tracks, det, scores, frame, next_id, cfg)
            assert got == want, (trial, frame)
            assert tracker.live_track_ids == list(ref_tracks)
