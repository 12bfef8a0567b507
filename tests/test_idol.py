"""IDOL: contrastive losses on hand-made cases, the training step (+ add-ons), BatchFormer removal at test,
streaming == hold_all inference on a synthetic video."""

import json
import math

import pytest
import torch

from vis_core.data.synthetic import generate
from vis_core.data.ytvis import load_annotations
from vis_core.engine.config import ConfigError
from vis_core.engine.infer import InferConfig, read_soft_results, reusable_scales, run_inference
from vis_core.eval import evaluate
from vis_core.methods.detr_segmenter import DeformableDETRFrame
from vis_core.methods.idol import IDOL, IDOLConfig
from vis_core.methods.registry import build_method
from vis_core.modeling.heads.contrastive import (
    IDOLContrastiveLoss,
    aux_cosine_loss,
    contrastive_candidates,
    contrastive_loss,
    num_aux_negatives,
)

H, W = 64, 96
TINY = {"num_classes": 3, "num_queries": 8, "aux_masks": False}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method(seed=0, **values) -> IDOL:
    torch.manual_seed(seed)
    return build_method("idol", {**TINY, **values})


def _target(boxes_px, ids, labels):
    masks = torch.zeros(len(ids), H, W, dtype=torch.bool)
    boxes = []
    for i, (x0, y0, x1, y1) in enumerate(boxes_px):
        masks[i, y0:y1, x0:x1] = True
        boxes.append([(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H])
    return {"labels": torch.tensor(labels), "masks": masks, "boxes": torch.tensor(boxes).reshape(-1, 4),
            "instance_ids": torch.tensor(ids)}


def _batch():
    g = torch.Generator().manual_seed(0)
    clip0 = [_target([(5, 5, 30, 30), (40, 20, 80, 60)], [1, 2], [0, 1]),
             _target([(8, 6, 33, 31), (42, 22, 82, 62)], [1, 2], [0, 1])]
    # instance 5 in both frames, instance 6 only in the reference frame (no anchor for it)
    clip1 = [_target([(10, 10, 50, 40)], [5], [2]),
             _target([(12, 10, 52, 40), (60, 5, 90, 30)], [5, 6], [2, 0])]
    return {"images": torch.rand(2, 2, 3, H, W, generator=g) * 255, "image_sizes": [(H, W), (H, W)],
            "targets": [clip0, clip1]}


# ---------------------------------------------------------------------------------------------- losses
def test_contrastive_loss_equals_the_formula_on_a_hand_made_case():
    v = torch.tensor([1.0, 0.0])
    pos = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # v.k+ = 2, 1
    neg = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # v.k- = 0, -1
    expected = math.log(1 + math.exp(0 - 2) + math.exp(-1 - 2) + math.exp(0 - 1) + math.exp(-1 - 1))
    assert contrastive_loss(v, pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # positives far more similar than negatives: ~0; the other way round: large (about the margin)
    assert contrastive_loss(20 * v, pos, neg).item() < 1e-8
    assert contrastive_loss(20 * v, neg, pos).item() == pytest.approx(60.0, rel=1e-3)
    # no negative: an empty sum, log(1) = 0
    assert contrastive_loss(v, pos, neg[:0]).item() == 0.0


def test_aux_cosine_loss_and_negative_sampling_rule():
    v = torch.tensor([3.0, 0.0])
    pos = torch.tensor([[1.0, 0.0]])  # cos 1, label 1
    neg = torch.tensor([[0.0, 2.0], [5.0, 0.0]])  # cos 0 and 1, label 0
    assert aux_cosine_loss(v, pos, neg).item() == pytest.approx(1 / 3)
    assert num_aux_negatives(2, 15) == 15 and num_aux_negatives(2, 30) == 20 and num_aux_negatives(0, 4) == 4


def test_candidates_are_the_dynamic_k_sets_and_the_rest():
    gt = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])
    # three exact predictions per GT, then two far-away ones
    boxes = torch.cat([gt[0].repeat(3, 1), gt[1].repeat(3, 1), torch.tensor([[0.5, 0.05, 0.05, 0.05]] * 2)])
    logits = torch.zeros(8, 2)
    pos, neg = contrastive_candidates(logits, boxes, torch.tensor([0, 1]), gt)
    # dynamic k = floor(sum of the top IoUs) = 3: exactly the three exact boxes
    assert pos[:, 0].nonzero().flatten().tolist() == [0, 1, 2]
    assert pos[:, 1].nonzero().flatten().tolist() == [3, 4, 5]
    assert neg[:, 0].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    assert not (pos & neg).any()


def test_contrastive_pairs_only_instances_seen_in_both_frames():
    loss = IDOLContrastiveLoss()
    q, d = 6, 4
    key = torch.randn(1, q, d, requires_grad=True)
    ref = torch.randn(1, q, d, requires_grad=True)
    logits = torch.zeros(1, q, 2)
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2]] * 3 + [[0.7, 0.7, 0.2, 0.2]] * 3])
    key_t = [{"labels": torch.tensor([0, 1]), "boxes": boxes[0, [0, 3]],
              "instance_ids": torch.tensor([7, 8])}]
    ref_t = [{"labels": torch.tensor([1]), "boxes": boxes[0, [3]], "instance_ids": torch.tensor([8])}]
    out = loss(key, ref, [torch.tensor([0, 4])], key_t, ref_t, logits, boxes)
    # one anchor (instance 8, key query 4) with positives 3..5 and negatives 0..2
    v = key[0, 4]
    expected = contrastive_loss(v, ref[0, 3:], ref[0, :3]).item()
    assert out["loss_reid"].item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(0)
    out = loss(key, ref, [torch.tensor([0, 4])], key_t, ref_t, logits, boxes)
    assert out["loss_reid_aux"].item() == pytest.approx(aux_cosine_loss(v, ref[0, 3:], ref[0, :3]).item())
    # nothing in common: zero losses that still backpropagate
    none = loss(key, ref, [torch.tensor([0, 4])], key_t, [{**ref_t[0], "instance_ids": torch.tensor([9])}],
                logits, boxes)
    assert none["loss_reid"].item() == 0.0 and none["loss_reid"].requires_grad


# ---------------------------------------------------------------------------------------------- training
def test_config_keys_presets_and_errors():
    cfg = IDOLConfig.from_dict({"num_queries": 30, "dataset": "ovis", "tracker": {"memory_len": 5},
                                "boundary": {"enabled": True}, "batchformer": {"enabled": True}})
    assert cfg.overrides == {"num_queries": 30} and cfg.model_config().num_queries == 30
    assert cfg.boundary.kind == "dynamic_conv" and cfg.batchformer.dropout == 0.5
    tracker = cfg.tracker_config()
    assert (tracker.mask_nms_thresh, tracker.new_score_thresh, tracker.memory_len) == (0.3, 0.3, 5)
    assert IDOLConfig().tracker_config().mask_nms_thresh == 0.5
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        build_method("idol", {"bogus": 1})
    with pytest.raises(ConfigError, match=r"tracker: unknown key\(s\) \['nms'\]"):
        build_method("idol", {"tracker": {"nms": 0.1}})
    with pytest.raises(ConfigError, match="quality.enabled"):
        build_method("idol", {"quality": {"enabled": "yes"}})


def test_train_step_returns_all_losses_and_reaches_the_segmenter():
    method = _method(boundary={"enabled": True}, quality={"enabled": True}).train()
    assert isinstance(method, DeformableDETRFrame)
    losses = method(_batch())
    detection = {"loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"}
    assert detection | {f"{k}_0" for k in detection} | {"loss_reid", "loss_reid_aux", "loss_boundary",
                                                         "loss_quality"} == set(losses)
    assert all(torch.isfinite(v) and v.item() >= 0 for v in losses.values())
    assert losses["loss_reid"].item() > 0
    backbone = [p for p in method.model.backbone.parameters() if p.requires_grad]
    decoder = list(method.model.transformer.decoder.parameters())
    # every add-on loss reaches the shared segmenter on its own (it trains nothing else at test time)
    for name in ("loss_reid", "loss_reid_aux", "loss_boundary", "loss_quality"):
        grads = torch.autograd.grad(losses[name], decoder, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in backbone) and any(p.grad.abs().sum() > 0 for p in backbone)
    assert all(p.grad is not None for p in method.reid_head.parameters())


def test_reference_frame_gives_embeddings_but_no_detection_loss():
    def losses(relabel):
        batch = _batch()
        if relabel:  # other classes in the reference frames only
            for clip in batch["targets"]:
                clip[1]["labels"] = (clip[1]["labels"] + 1) % 3
        torch.manual_seed(0)
        with torch.no_grad():
            return _method().train()(batch)

    plain, relabelled = losses(False), losses(True)
    assert plain["loss_ce"] == relabelled["loss_ce"] and plain["loss_ce_0"] == relabelled["loss_ce_0"]
    # the reference labels enter the contrastive candidates' cost (positives are class-aware)
    assert plain["loss_reid"] != relabelled["loss_reid"]


def test_train_needs_key_reference_pairs():
    batch = _batch()
    batch["images"] = batch["images"][:, :1]
    batch["targets"] = [clip[:1] for clip in batch["targets"]]
    with pytest.raises(ValueError, match="sampling: pair"):
        _method().train()(batch)


def test_batchformer_trains_two_streams_and_is_removed_at_test():
    method = _method(batchformer={"enabled": True}).train()
    losses = method(_batch())
    sum(losses.values()).backward()
    block = method.model.encoder.hooks["1"].block  # insert_idx [0]: after encoder layer 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())

    plain = _method(seed=1)
    missing, unexpected = plain.load_state_dict(method.state_dict(), strict=False)
    assert not missing and unexpected and all(".encoder.hooks." in k for k in unexpected)
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(3)) * 255
    with_bf, without = method.eval().segment_frame(image), plain.eval().segment_frame(image)
    for key in with_bf:
        assert torch.equal(with_bf[key], without[key]), key


def _record_batchformer(method) -> list:
    """Record ``(hook, input, output)`` of every BatchFormer insertion point the method runs."""
    from vis_core.modeling.batchformer import BatchFormerHook

    calls = []
    for module in method.modules():
        if isinstance(module, BatchFormerHook):
            module.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0], out)))
    return calls


def test_batchformer_never_mixes_a_key_frame_with_its_reference_frame():
    """As the official code's separate key / reference transformer passes: the key frames attend to each
    other, the reference frames to each other, and no key frame to its own (or any) reference frame."""
    method = _method(batchformer={"enabled": True, "dropout": 0.0}).train()
    calls = _record_batchformer(method)
    method(_batch())
    hook, x, out = calls[0]  # x: (4, S, C) frames (key0, ref0, key1, ref1); out: (8, S, C), two streams
    assert out.shape[0] == 2 * x.shape[0] and torch.equal(out[:4], x)
    with torch.no_grad():
        y = x.clone()
        y[1::2] += torch.randn_like(y[1::2])  # other reference frames
        changed = hook(y)
        torch.testing.assert_close(changed[4:][0::2], out[4:][0::2])  # key frames: untouched
        assert not torch.allclose(changed[4:][3], out[4:][3])  # ref1 sees ref0
        z = x.clone()
        z[2] += 1.0  # key frame of clip 1
        assert not torch.allclose(hook(z)[4:][0], out[4:][0])  # key0 sees key1


@pytest.mark.parametrize("insert_idx", [0, -1])
def test_batchformer_runs_on_the_output_of_encoder_layer_i(insert_idx):
    """insert_idx i: the block's input is the output of encoder layer i (official placement); -1, after the
    last layer, makes the encoder's memory the two streams themselves."""
    method = _method(enc_layers=2, batchformer={"enabled": True, "insert_idx": [insert_idx], "dropout": 0.0})
    method.train()
    encoder = method.model.transformer.encoder
    seen = {}
    encoder.layers[insert_idx].register_forward_hook(lambda mod, args, out: seen.__setitem__("layer", out))
    encoder.register_forward_hook(lambda mod, args, out: seen.__setitem__("memory", out[0]))
    calls = _record_batchformer(method)
    method(_batch())
    (_, x, out), = calls
    assert torch.equal(x, seen["layer"])
    if insert_idx == -1:
        assert torch.equal(seen["memory"], out)


# ---------------------------------------------------------------------------------------------- inference
def test_segment_frame_names_the_reid_embeddings_pred_reid():
    """The reid head's output is ``pred_reid``; ``pred_embds`` stays the name of the decoder's query embeddings."""
    method = _method().eval()
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(4)) * 255
    with torch.no_grad():
        frame = method.segment_frame(image)
        queries = method.model(image[None], image_sizes=[(H, W)])["pred_embds"][0]
    assert "pred_reid" in frame and not {"pred_embeds", "pred_embds"} & set(frame)
    torch.testing.assert_close(frame["pred_reid"], method.reid_head(queries))


@pytest.mark.parametrize("scales", [[], [48, 64]])  # the multi-scale test keeps soft masks per (track, frame)
def test_streaming_and_hold_all_give_identical_results(tmp_path, scales):
    generate(tmp_path, "ovis", seed=0, train_videos=0, valid_videos=2, frames=(5, 7), height=48, width=80)
    gt, root = tmp_path / "valid" / "instances.json", tmp_path / "valid" / "JPEGImages"
    # untrained scores sit at the 0.01 prior: open the thresholds so that tracks are born and matched
    method = _method(num_classes=5, dataset="ovis", quality={"enabled": True, "use_at_test": True},
                     tracker={"score_thresh": 0.0, "init_score_thresh": 0.0, "new_score_thresh": 0.0,
                              "class_score_thresh": 0.0})
    paths = {mode: run_inference(method, gt, root, tmp_path / f"{mode}.json", InferConfig(mode=mode, scales=scales),
                                 progress=False) for mode in ("streaming", "hold_all")}
    streaming, hold_all = (json.loads(paths[m].read_text()) for m in ("streaming", "hold_all"))
    assert streaming and streaming == hold_all
    lengths = {v["id"]: len(v["file_names"]) for v in json.loads(gt.read_text())["videos"]}
    assert all(len(r["segmentations"]) == lengths[r["video_id"]] for r in streaming)
    assert 0 <= evaluate(gt, streaming, occlusion=True)["AP"] <= 1


def test_batched_frames_give_the_per_frame_outputs_and_results(tmp_path):
    # frame_batch > 1 segments consecutive frames in one pass: the segmenter is per frame, so each frame's
    # outputs equal a frame-by-frame call up to float rounding, and association (per frame, in order) agrees
    method = _method(num_classes=5, dataset="ovis",
                     tracker={"score_thresh": 0.0, "init_score_thresh": 0.0, "new_score_thresh": 0.0,
                              "class_score_thresh": 0.0}).eval()
    images = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(5)) * 255
    batched = method.segment_frames(images)
    for image, out in zip(images, batched, strict=True):
        single = method.segment_frame(image)
        assert single.keys() == out.keys()
        for key in single:
            torch.testing.assert_close(out[key], single[key], rtol=1e-4, atol=1e-4)
    generate(tmp_path, "ovis", seed=0, train_videos=0, valid_videos=2, frames=(5, 7), height=48, width=80)
    gt, root = tmp_path / "valid" / "instances.json", tmp_path / "valid" / "JPEGImages"
    results = {b: json.loads(run_inference(method, gt, root, tmp_path / f"b{b}.json", InferConfig(frame_batch=b),
                                           progress=False).read_text()) for b in (1, 3)}
    assert len(results[1]) == len(results[3]) > 0
    for a, b in zip(results[1], results[3], strict=True):
        assert (a["video_id"], a["category_id"]) == (b["video_id"], b["category_id"])
        assert abs(a["score"] - b["score"]) < 1e-4


def test_multiscale_reuses_a_single_scale_run_of_the_same_model_exactly(tmp_path):
    # the scales of the multi-scale test run independently until the merge, so the single-scale results of the
    # same model at the stored size stand for that scale: reusing them must change nothing but the work done
    method = _method(num_classes=5, dataset="ovis",
                     tracker={"score_thresh": 0.0, "init_score_thresh": 0.0, "new_score_thresh": 0.0,
                              "class_score_thresh": 0.0}).eval()
    generate(tmp_path, "ovis", seed=0, train_videos=0, valid_videos=2, frames=(4, 6), height=48, width=80)
    gt_path, root = tmp_path / "valid" / "instances.json", tmp_path / "valid" / "JPEGImages"
    gt = load_annotations(gt_path)
    frames = sum(len(v["file_names"]) for v in gt.videos.values())
    single_cfg, multi_cfg = InferConfig(frame_batch=2), InferConfig(scales=[48, 64], frame_batch=2)
    assert reusable_scales(gt, multi_cfg, single_cfg) == [48]  # stored 48 x 80: scale 48 is the stored size
    assert reusable_scales(gt, multi_cfg, InferConfig(frame_batch=1)) == []  # other settings: recompute
    assert reusable_scales(gt, multi_cfg, InferConfig(min_size=64, frame_batch=2)) == [64]
    # the merge reads soft masks: the single-scale run writes them to a sidecar, its results json stays official
    single = json.loads(run_inference(method, gt, root, tmp_path / "single.json", single_cfg, progress=False,
                                      soft_path=tmp_path / "single.soft.json").read_text())
    plain = json.loads(run_inference(method, gt, root, tmp_path / "plain.json", single_cfg,
                                     progress=False).read_text())
    assert single == plain and all(set(e) == {"video_id", "category_id", "score", "segmentations"} for e in single)
    soft = read_soft_results(tmp_path / "single.soft.json", multi_cfg)
    assert [e for v in soft.values() for e in v] != [] and all("soft_segmentations" in e for v in soft.values()
                                                               for e in v)
    assert read_soft_results(tmp_path / "single.soft.json", InferConfig(soft_levels=[0.3])) is None  # other levels
    assert read_soft_results(tmp_path / "missing.soft.json", multi_cfg) is None
    recomputed = run_inference(method, gt, root, tmp_path / "multi.json", multi_cfg, progress=False,
                               timing_path=tmp_path / "t_multi.json")
    reused = run_inference(method, gt, root, tmp_path / "reused.json", multi_cfg, progress=False,
                           timing_path=tmp_path / "t_reused.json", reuse={48: soft})
    assert json.loads(recomputed.read_text()) == json.loads(reused.read_text()) != []
    assert json.loads((tmp_path / "t_multi.json").read_text())["frames"] == 2 * frames
    assert json.loads((tmp_path / "t_reused.json").read_text())["frames"] == frames
