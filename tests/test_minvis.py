"""MinVIS method: config, training losses + report-001 add-ons, BatchFormer two streams, inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vis_core.data.synthetic import generate, render_video
from vis_core.data.video_source import tensor_video_source
from vis_core.engine.config import ConfigError
from vis_core.engine.infer import InferConfig, infer_video, run_inference
from vis_core.eval import evaluate
from vis_core.methods.frame_segmenter import Mask2FormerFrame, instance_inference
from vis_core.methods.minvis import MinVIS, MinVISConfig, MinVISTracker, upsample_mask_logits
from vis_core.methods.registry import build_method
from vis_core.tracking.minvis_matching import softmax_drop_no_object

NUM_CLASSES = 5
BASE = {"preset": "tiny", "num_classes": NUM_CLASSES, "num_points": 256}
ADDONS = {"boundary": {"enabled": True}, "quality": {"enabled": True}}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors on a shared 2-core machine: OpenMP start-up and contention dominate with 2 threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method(seed: int = 0, **model) -> MinVIS:
    torch.manual_seed(seed)
    return build_method("minvis", {**BASE, **model})


def _batch(b: int = 2, t: int = 2, h: int = 64, w: int = 64, seed: int = 0) -> dict:
    """``collate_clips``-style batch: noise images, two or three rectangle instances per frame."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(b):
        clip = []
        for _ in range(t):
            n = int(torch.randint(2, 4, (1,), generator=g))
            masks = torch.zeros(n, h, w, dtype=torch.bool)
            for i in range(n):
                y, x = (int(v) for v in torch.randint(0, h // 2, (2,), generator=g))
                masks[i, y : y + h // 3, x : x + w // 3] = True
            clip.append({"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g), "masks": masks})
        targets.append(clip)
    return {"images": torch.rand(b, t, 3, h, w, generator=g) * 255, "targets": targets}


# ---------------------------------------------------------------------------------------------- config
def test_config_flat_keys_sub_dicts_and_errors():
    cfg = MinVISConfig.from_dict(
        {**BASE, "num_queries": 7, "class_weight": 3.0, "topk": 5, "batchformer": {"enabled": True}}
    )
    assert cfg.overrides == {"num_queries": 7} and cfg.class_weight == 3.0 and cfg.topk == 5
    # BatchFormerV2 after the last pixel-decoder encoder layer unless insert_idx says otherwise
    assert cfg.batchformer.insert_idx == [-1] and MinVISConfig().batchformer.insert_idx == [-1]
    cfg = MinVISConfig.from_dict({**BASE, "batchformer": {"enabled": True, "insert_idx": [1]}})
    assert cfg.batchformer.insert_idx == [1]
    assert MinVISConfig.from_dict(BASE).boundary.enabled is False  # add-ons are off by default
    with pytest.raises(ConfigError, match="boundary.*unknown key 'weight'"):
        build_method("minvis", {**BASE, "boundary": {"weight": 2.0}})
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        build_method("minvis", {**BASE, "bogus": 1})
    with pytest.raises(ConfigError, match="use_at_test needs quality.enabled"):
        build_method("minvis", {**BASE, "quality": {"use_at_test": True}})


# -------------------------------------------------------------------------------------------- training
def test_addon_losses_join_the_base_losses_and_train_the_segmenter():
    batch = _batch()
    method = _method(**ADDONS).train()
    plain = _method(seed=1).train()  # other init; gets the add-on model's weights below
    missing, unexpected = plain.load_state_dict(method.state_dict(), strict=False)
    assert not missing and all(k.startswith(("boundary_head.", "quality_head.")) for k in unexpected)

    torch.manual_seed(5)
    losses = method(batch)
    torch.manual_seed(5)
    base = plain(batch)
    assert set(losses) == set(base) | {"loss_boundary", "loss_quality"}
    # the add-ons add losses but change neither the base losses nor the training RNG stream
    for key, value in base.items():
        torch.testing.assert_close(losses[key], value, rtol=0, atol=0)
    assert losses["loss_boundary"] > 0 and 0 <= losses["loss_quality"] <= 1

    pred = method.segmenter
    for key in ("loss_boundary", "loss_quality"):
        method.zero_grad(set_to_none=True)
        losses[key].backward(retain_graph=True)
        grads = {n for n, p in method.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        # training-only heads reach the segmenter through the shared query embeddings...
        assert any(n.startswith("segmenter.predictor.transformer_") for n in grads), key
        assert pred.predictor.query_feat.weight.grad.abs().sum() > 0
        # ...but not through the class / mask heads they do not read
        assert not any(n.startswith(("segmenter.predictor.class_embed", "segmenter.predictor.mask_embed"))
                       for n in grads), key
    # the boundary map is the query kernel dotted with the mask features: the pixel decoder learns from it
    method.zero_grad(set_to_none=True)
    losses["loss_boundary"].backward(retain_graph=True)
    assert pred.pixel_decoder.mask_features.weight.grad.abs().sum() > 0
    assert method.boundary_head.kernel_mlp.layers[0].weight.grad.abs().sum() > 0

    method.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in method.parameters())  # nothing unused (DDP-safe)


def test_addons_use_the_criterions_final_layer_matching():
    method = _method(**ADDONS).train()
    calls, addon_indices = [], []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, outputs, targets):
            calls.append((outputs["pred_masks"], self.inner(outputs, targets)))
            return calls[-1][1]

    method.criterion.matcher = Recording(method.criterion.matcher)
    addon_losses = method.addon_losses

    def recording_addon_losses(outputs, targets, indices):
        addon_indices.append(indices)
        return addon_losses(outputs, targets, indices)

    method.addon_losses = recording_addon_losses
    method(_batch(seed=3))
    dec_layers = method.segmenter_cfg.dec_layers
    assert len(calls) == dec_layers + 1  # the criterion's matching only: final layer first, then the aux layers
    final_masks, final_indices = calls[0]
    assert len(addon_indices) == 1 and addon_indices[0] is final_indices
    assert final_masks.shape[0] == 2 * 2 and not any(masks is final_masks for masks, _ in calls[1:])


def test_quality_targets_are_the_matched_mask_ious():
    """A hand-built output: loss_quality is mean (S - IoU)^2 over the matched queries."""
    method = _method(quality={"enabled": True}).train()
    h4 = w4 = 4
    gt = torch.zeros(1, 16, 16, dtype=torch.bool)
    gt[0, :8, :8] = True  # stride-4 cells (0..1, 0..1)
    pred = torch.full((1, 3, h4, w4), -5.0)
    pred[0, 2, :2, :4] = 5.0  # query 2 predicts cells (0..1, 0..3): IoU 4 / 8
    embeds = torch.randn(1, 3, method.segmenter_cfg.hidden_dim)
    outputs = {"pred_masks": pred, "pred_embds": embeds}
    targets = [{"labels": torch.tensor([1]), "masks": gt}]
    indices = [(torch.tensor([2]), torch.tensor([0]))]
    loss = method.addon_losses(outputs, targets, indices)["loss_quality"]
    s = method.quality_head(embeds[0, 2])
    torch.testing.assert_close(loss, (s - 0.5) ** 2)


def test_batchformer_doubles_the_training_batch_and_is_a_no_op_at_test():
    batch = _batch(b=2, t=2)
    method = _method(batchformer={"enabled": True}, **ADDONS).train()
    seen = []
    method.segmenter.register_forward_hook(lambda mod, args, out: seen.append(out["pred_logits"].shape[0]))
    losses = method(batch)
    assert seen == [2 * 2 * 2]  # B * T frames, two streams
    sum(losses.values()).backward()
    block = method.segmenter.pixel_decoder.transformer.hooks["1"].block  # after the tiny preset's 1 layer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())  # stream 2 trained

    method.eval()
    seen.clear()
    with torch.no_grad():
        with_bf = method(batch)
        frame = method.segment_frame(batch["images"][0, 0])
        method.segmenter.pixel_decoder.transformer.set_hooks(None)  # the same weights, BatchFormer removed
        without = method(batch)
        frame_without = method.segment_frame(batch["images"][0, 0])
    assert seen[0] == 2 * 2
    for key in ("pred_logits", "pred_masks", "pred_embds"):
        torch.testing.assert_close(with_bf[key], without[key], rtol=0, atol=0)
    for key in frame:
        torch.testing.assert_close(frame[key], frame_without[key], rtol=0, atol=0)


def test_batchformer_mixes_the_pixel_decoder_tokens_not_the_queries():
    """The block runs on the output of the last pixel-decoder encoder layer (dense tokens of every frame,
    all B * T frames mixed: MinVIS trains image-level); the decoder then reads each stream's own mask
    features, so the streams differ from the first prediction on (the learned queries alone) onwards."""
    from vis_core.modeling.batchformer import BatchFormerHook

    method = _method(batchformer={"enabled": True, "dropout": 0.0}).train()
    last_layer = method.segmenter.pixel_decoder.transformer.encoder.layers[-1]
    seen, calls = {}, []
    last_layer.register_forward_hook(lambda mod, args, out: seen.__setitem__("tokens", out))
    method.segmenter.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out))
    hooks = [m for m in method.modules() if isinstance(m, BatchFormerHook)]
    for hook in hooks:
        hook.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0], out)))
    method(_batch(b=2, t=2))
    hook, x, _ = calls[0]
    assert torch.equal(x, seen["tokens"])  # dense tokens (B * T, S, C), not queries
    assert len(calls) == 1
    out = seen["out"]
    assert out["mask_features"].shape[0] == 2 * 4  # the decoder sees the two streams' own mask features
    first = out["aux_outputs"][0]["pred_masks"]
    assert not torch.allclose(first[4:], first[:4])
    with torch.no_grad():
        y = x.clone()
        y[1] += 1.0  # frame 1 of clip 0
        assert not torch.allclose(hook(y)[4 + 0], hook(x)[4 + 0])  # frame 0 (same clip) sees it


# ------------------------------------------------------------------------------------------- inference
def test_upsampling_matches_mask2former_instance_inference():
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(6, NUM_CLASSES + 1, generator=g), torch.randn(6, 9, 13, generator=g)
    ref = instance_inference(logits, masks, (33, 50), topk=6, output_size=(70, 101))
    scores = logits.softmax(-1)[:, :-1]
    queries = scores.flatten().topk(6).indices // NUM_CLASSES
    up = upsample_mask_logits(masks, (33, 50), (70, 101), stride=4)
    assert up.shape == (6, 70, 101)
    assert torch.equal(up[queries] > 0, ref["masks"])


def test_quality_at_test_multiplies_the_video_score():
    q, c, k = 3, 4, 2
    g = torch.Generator().manual_seed(0)
    embeds = torch.eye(q, c)
    frames = [
        {
            "pred_logits": torch.randn(q, k + 1, generator=g),
            "pred_masks": torch.randn(q, 3, 3, generator=g),
            "pred_embds": embeds,
            "image_size": torch.tensor([12, 12]),
            "pred_quality": torch.rand(q, generator=g),
        }
        for _ in range(3)
    ]
    plain, rescored = MinVISTracker(q, (12, 12), topk=6), MinVISTracker(q, (12, 12), topk=6, use_quality=True)
    for f in frames:
        plain.update(f)
        rescored.update(f)
    mean_logits = torch.stack([f["pred_logits"] for f in frames]).double().mean(0).numpy()
    quality = torch.stack([f["pred_quality"] for f in frames]).double().mean(0).numpy()
    expected = softmax_drop_no_object(mean_logits) * quality[:, None]  # (slot, class)
    got = rescored.finalize(1, [10, 20])
    want = sorted(expected.flatten(), reverse=True)
    np.testing.assert_allclose([r["score"] for r in got], want, rtol=1e-12)
    assert sorted(r["score"] for r in plain.finalize(1, [10, 20])) != sorted(r["score"] for r in got)


class _ShuffledQueries:
    """Wraps a method and permutes the query order of the segmenter output of frame ``frame``."""

    kind = "online"

    def __init__(self, method: MinVIS, frame: int, perm: torch.Tensor):
        self.method, self.frame, self.perm, self.count = method, frame, perm, 0

    def segment_frame(self, image):
        out = dict(self.method.segment_frame(image))
        if self.count == self.frame:
            out = {k: (v if k == "image_size" else v[self.perm]) for k, v in out.items()}
        self.count += 1
        return out

    def new_associator(self, output_size):
        return self.method.new_associator(output_size)


@pytest.mark.parametrize("frame", [0, 2])
def test_results_are_invariant_to_the_query_order_of_a_frame(frame):
    video = render_video("ovis", seed=0, index=1, split="valid")
    frames = torch.from_numpy(video.frames[:5]).permute(0, 3, 1, 2).float()
    method = _method(quality={"enabled": True, "use_at_test": True}).eval()
    perm = torch.randperm(method.segmenter.num_queries, generator=torch.Generator().manual_seed(frame))
    assert not torch.equal(perm, torch.arange(len(perm)))

    def run(m):
        return infer_video(m, tensor_video_source(frames, video_id=7), list(range(1, NUM_CLASSES + 1)))

    reference = run(method)
    shuffled = run(_ShuffledQueries(method, frame, perm))
    assert len(reference) == method.cfg.topk
    # frame 0 fixes the slot numbers, so only the order of exactly tied scores may change there
    key = lambda r: (-r["score"], r["category_id"], json.dumps(r["segmentations"]))  # noqa: E731
    if frame == 0:
        reference, shuffled = sorted(reference, key=key), sorted(shuffled, key=key)
    assert json.dumps(shuffled) == json.dumps(reference)


@pytest.mark.parametrize("scales", [[], [96, 128]])  # the multi-scale test keeps soft masks per (slot, frame)
def test_streaming_and_hold_all_give_identical_results(tmp_path, scales):
    generate(tmp_path, "ovis", seed=0, train_videos=0, valid_videos=3, frames=(4, 6))
    gt, root = tmp_path / "valid" / "instances.json", tmp_path / "valid" / "JPEGImages"
    method = _method(**ADDONS, num_classes=5)
    paths = {}
    for mode in ("streaming", "hold_all"):
        paths[mode] = run_inference(method, gt, root, tmp_path / f"{mode}.json",
                                    InferConfig(mode=mode, scales=scales), progress=False)
    streaming, hold_all = (json.loads(paths[m].read_text()) for m in ("streaming", "hold_all"))
    assert streaming == hold_all
    assert len(streaming) >= 3 * method.cfg.topk if scales else len(streaming) == 3 * method.cfg.topk
    assert all(len(r["segmentations"]) == len(json.loads(gt.read_text())["videos"][0]["file_names"])
               for r in streaming if r["video_id"] == 1)
    metrics = evaluate(gt, streaming, occlusion=True)  # a valid results file for the official evaluator
    assert 0 <= metrics["AP"] <= 1


def test_method_is_a_mask2former_frame_with_minvis_inference():
    method = _method()
    assert isinstance(method, Mask2FormerFrame)
    assert method.boundary_head is None and method.quality_head is None
    tracker = method.new_associator((96, 160))
    assert tracker.associator.topk == 10 and tracker.associator.mask_threshold == 0.0
