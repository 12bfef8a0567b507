"""DVIS online (vis_core.methods.dvis, vis_core.modeling.dvis_tracker): tracker, consistent matching, frozen
segmenter, training step, the one runner, a short overfit."""

from __future__ import annotations

import json

import pytest
import torch

from vis_core.data.clips import collate_clips
from vis_core.data.synthetic_stream import SyntheticClipDataset
from vis_core.data.video_source import tensor_video_source
from vis_core.engine.infer import InferConfig, infer_video
from vis_core.methods.base import method_kind
from vis_core.methods.dvis import DVISOnline, clip_video_targets, consistent_match
from vis_core.methods.frame_segmenter import Mask2FormerFrame
from vis_core.methods.registry import build_method
from vis_core.modeling.dvis_tracker import ReferringTracker
from vis_core.tracking.noiser import NoiseConfig, Noiser

NUM_CLASSES = 5
BASE = {"preset": "tiny", "num_classes": NUM_CLASSES, "num_points": 256}
SPEC = {"preset": "ovis", "height": 48, "width": 80, "frames": [6, 9], "objects": [3, 5]}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared machine
    yield
    torch.set_num_threads(threads)


def _method(seed: int = 0, **model) -> DVISOnline:
    torch.manual_seed(seed)
    return build_method("dvis_online", {**BASE, **model})


def _batch(b: int = 2, t: int = 3, h: int = 64, w: int = 64) -> dict:
    """Instance 1 in every frame; instance 2 appears at frame 1 and is absent at frame 2."""
    targets = []
    for _ in range(b):
        clip = []
        for f in range(t):
            ids = [1, 2] if f == 1 else [1]
            masks = torch.zeros(len(ids), h, w, dtype=torch.bool)
            masks[0, 4 + f : 20 + f, 4:20] = True
            if len(ids) == 2:
                masks[1, 30:50, 30:60] = True
            clip.append({"labels": torch.tensor([1, 3][: len(ids)]), "masks": masks,
                         "instance_ids": torch.tensor(ids)})
        targets.append(clip)
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(b, t, 3, h, w, generator=g) * 255, "targets": targets}


# ----------------------------------------------------------------------------------------------- tracker
def test_layer0_identity_follows_the_hungarian_match():
    torch.manual_seed(0)
    tracker = ReferringTracker(32, NUM_CLASSES, 32, num_layers=2, nheads=4, dim_feedforward=64).eval()
    g = torch.Generator().manual_seed(1)
    e0, e1 = torch.randn(1, 10, 32, generator=g), torch.randn(1, 10, 32, generator=g)
    e1 = e0 + 0.05 * e1  # frame 1: the same objects, moved a little, in frame 0's query order
    perm = torch.randperm(10, generator=g)
    out0, idx0, state = tracker.frame_forward(e0)
    assert torch.equal(idx0[0], torch.arange(10)) and out0.shape == (2, 1, 10, 32)
    plain, idx, _ = tracker.frame_forward(e1, state)
    shuffled, idx_s, new_state = tracker.frame_forward(e1[:, perm], state)
    assert torch.equal(idx[0], torch.arange(10))
    # the segmenter listing its queries in another order changes nothing the tracker outputs per slot
    assert torch.equal(perm[idx_s[0]], torch.arange(10))
    torch.testing.assert_close(shuffled, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(new_state.last_embeds, e1)


def test_tracker_clip_forward_shapes_and_noise_only_in_training():
    torch.manual_seed(0)
    tracker = ReferringTracker(32, NUM_CLASSES, 16, num_layers=3, nheads=4, dim_feedforward=64)
    embeds, feats = torch.randn(2, 4, 10, 32), torch.randn(2, 4, 16, 8, 8)
    noiser = Noiser(NoiseConfig("rs", ratio=1.0))
    out = tracker(embeds, feats, noiser)
    assert out["pred_logits"].shape == (3, 2, 4, 10, NUM_CLASSES + 1)
    assert out["pred_masks"].shape == (3, 2, 4, 10, 8, 8) and out["indices"].shape == (2, 4, 10)
    assert torch.equal(out["indices"][:, 0], torch.arange(10).expand(2, 10))  # frame 0: never noised
    tracker.eval()
    ref = tracker(embeds, feats)  # eval: the noiser is inactive, the Hungarian match holds
    torch.testing.assert_close(tracker(embeds, feats, noiser)["pred_logits"], ref["pred_logits"])


# ----------------------------------------------------------------------------------- targets, matching
def test_clip_targets_keep_absent_instances_with_empty_masks():
    video = clip_video_targets(_batch(b=1), stride=4)[0]
    assert video["labels"].tolist() == [1, 3] and video["first"].tolist() == [0, 1]
    assert video["masks"].shape == (2, 3, 64, 64)
    present = video["masks"].flatten(2).any(2)
    assert present.tolist() == [[True, True, True], [False, True, False]]


def test_consistent_match_matches_each_instance_once_at_its_first_frame():
    video = clip_video_targets(_batch(b=1), stride=4)[0]
    matcher = _method().criterion.matcher
    t, q = 3, 4
    logits = torch.zeros(t, q, NUM_CLASSES + 1)
    masks = torch.full((t, q, 16, 16), -10.0)
    masks[0, 2, 1:5, 1:5] = 10.0  # slot 2 segments instance 1 at frame 0
    logits[0, 2, 1] = 10.0
    masks[1, 2, 7:13, 7:15] = 10.0  # at frame 1 slot 2 looks like instance 2 (taken by instance 1 already)
    logits[1, 2, 3] = 10.0
    masks[1, 0, 7:13, 7:15] = 5.0  # slot 0 is the next best for instance 2
    logits[1, 0, 3] = 5.0
    rows, cols = consistent_match(logits, masks, video, matcher)
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]


# --------------------------------------------------------------------------------------------- method
def test_registers_as_online_mask2former_method():
    method = _method()
    assert isinstance(method, Mask2FormerFrame) and method_kind(method) == "online"
    assert DVISOnline.segmenter_family == "mask2former"
    assert method.cfg.noise == NoiseConfig() and method.cfg.tracker_layers == 3
    assert len(method.tracker.cross_layers) == 3
    cfg = _method(noise={"mode": "cc", "ratio": 0.8, "partner": "randint"}, tracker_layers=2).cfg
    assert cfg.noise == NoiseConfig("cc", 0.8, "randint") and cfg.tracker_layers == 2


def test_training_step_trains_the_tracker_only():
    method = _method(noise={"mode": "wa", "ratio": 0.5}).train()
    assert not method.segmenter.training and all(not m.training for m in method.segmenter.modules())
    assert not any(p.requires_grad for p in method.segmenter.parameters())
    before = {k: v.clone() for k, v in method.segmenter.state_dict().items()}
    losses = method(_batch())
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in method.segmenter.parameters())
    tracker_grads = [p.grad for p in method.tracker.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in tracker_grads)
    assert any(g.abs().sum() > 0 for g in tracker_grads)
    after = method.segmenter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no BN / running statistics moved


def test_guidance_counts_training_calls_in_a_saved_buffer(monkeypatch):
    method = _method(guidance_iters=2).train()
    calls = []
    real = method.tracker_losses
    monkeypatch.setattr(method, "tracker_losses", lambda *a: calls.append(a[-1]) or real(*a))
    batch = _batch(b=1, t=2)
    for _ in range(3):
        method(batch)
    method.eval()
    method(batch)  # eval calls do not count
    assert calls == [True, True, False] and int(method.train_iters) == 3
    assert int(method.state_dict()["train_iters"]) == 3


def test_load_pretrained_takes_a_mask2former_frame_checkpoint(tmp_path):
    torch.manual_seed(3)
    frame = build_method("mask2former_frame", BASE)
    path = tmp_path / "frame.pth"
    torch.save({"model": frame.state_dict()}, path)
    method = _method()
    method.load_pretrained(path)
    for k, v in frame.segmenter.state_dict().items():
        assert torch.equal(method.segmenter.state_dict()[k], v), k
    assert not any(p.requires_grad for p in method.segmenter.parameters())


def test_the_one_runner_streams_as_it_holds_all():
    method = _method().eval()
    frames = torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 255
    results = {}
    for mode in ("streaming", "hold_all"):
        source = tensor_video_source(frames, video_id=3)
        results[mode] = infer_video(method, source, list(range(1, NUM_CLASSES + 1)), InferConfig(mode=mode))
    assert json.dumps(results["streaming"]) == json.dumps(results["hold_all"])
    assert len(results["streaming"]) == method.cfg.topk
    assert all(len(r["segmentations"]) == 4 for r in results["streaming"])
    scores = [r["score"] for r in results["streaming"]]
    assert scores == sorted(scores, reverse=True)


def test_associator_equals_the_clip_forward():
    """Inference (frame by frame, resumed state) gives the eval-mode clip forward's logits."""
    method = _method().eval()
    batch = _batch(b=1, t=3)
    clip = method(batch)["pred_logits"]  # (T, Q, K+1)
    assoc = method.new_associator((64, 64))
    for frame in method.segment_frames(batch["images"][0]):
        assoc.update(frame)
    means = torch.stack([torch.as_tensor(assoc.store[i].mean_scores()) for i in range(clip.shape[1])])
    torch.testing.assert_close(means.float(), clip.mean(0), atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------------- overfit
def test_tracker_overfits_one_synthetic_clip():
    ds = SyntheticClipDataset(SPEC, sampling="clip", num_frames=3, frame_range=4, min_sizes=(48,),
                              hflip_prob=0.0, jpeg=False)
    batch = collate_clips([ds[0]])
    method = _method(noise={"mode": "rs", "ratio": 0.2}, guidance_iters=20).train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    history, dice = [], []
    for _ in range(80):
        losses = method(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        dice.append(losses["loss_dice"].item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.6 * first, (first, last)  # about 34 -> 14 at the time of writing
    assert sum(dice[-5:]) < 0.85 * sum(dice[:5])  # the masks improve too, not only the classes


def test_trainer_runs_it_and_checkpoints_the_guidance_count(tmp_path):
    from vis_core.engine.config import SolverConfig, TrainConfig
    from vis_core.engine.trainer import Trainer

    ds = SyntheticClipDataset(SPEC, sampling="clip", num_frames=3, frame_range=4, min_sizes=(48,), length=8)
    cfg = TrainConfig(method="dvis_online", output_dir=str(tmp_path / "run"), checkpoint_period=2, log_period=1,
                      seed=3, device="cpu",
                      solver=SolverConfig(lr=1e-4, max_iter=3, batch_size=2, clip_grad=0.01, steps=[]))
    method = _method(guidance_iters=2, noise={"mode": "rs"})  # the stream has 5 classes
    history = Trainer(cfg, method, ds, collate_clips, device=torch.device("cpu")).train()
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    state = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu", weights_only=False)
    state = state.get("model", state)
    assert int(state["train_iters"]) == 3
