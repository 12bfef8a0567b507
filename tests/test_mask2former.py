"""Mask2Former: output contract, masked attention, pixel-decoder encoder hooks, VITA outputs, deep supervision,
weights, overfit."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from torch import nn

from vis_core.data.shapes import SHAPE_NAMES
from vis_core.data.synthetic import make_config, render_video
from vis_core.engine.frame_eval import frame_mask_ap
from vis_core.methods.frame_segmenter import instance_inference
from vis_core.modeling.criterion import build_criterion
from vis_core.modeling.mask2former import (
    PIXEL_MEAN,
    CrossAttentionLayer,
    Mask2FormerConfig,
    build_mask2former,
    load_mask2former_weights,
    masked_attention_mask,
    unmask_empty_rows,
)


@pytest.fixture(autouse=True)
def one_thread():
    # small tensors on a shared 2-core machine: OpenMP start-up and contention dominate with 2 threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(seed: int = 0, num_classes: int = 10, **overrides):
    torch.manual_seed(seed)
    return build_mask2former(Mask2FormerConfig.tiny(num_classes=num_classes, **overrides))


def _images(b=2, h=96, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255


def test_output_contract():
    cfg = Mask2FormerConfig.tiny(num_classes=10)
    model = _tiny().eval()
    with torch.no_grad():
        out = model(_images())
    q, c = cfg.num_queries, cfg.hidden_dim
    assert out["pred_logits"].shape == (2, q, cfg.num_classes + 1)
    assert out["pred_masks"].shape == (2, q, 24, 40)
    assert out["pred_embds"].shape == (2, q, c)
    assert out["mask_features"].shape == (2, cfg.mask_dim, 24, 40)
    assert len(out["aux_outputs"]) == cfg.dec_layers
    predictor = model.predictor
    # logits and masks are read off the normalised query embeddings that MinVIS / VITA consume
    torch.testing.assert_close(out["pred_logits"], predictor.class_embed(out["pred_embds"]))
    mask_embed = predictor.mask_embed(out["pred_embds"])
    expected_masks = torch.einsum("bqc,bchw->bqhw", mask_embed, out["mask_features"])
    torch.testing.assert_close(out["pred_masks"], expected_masks, rtol=1e-4, atol=1e-4)
    # aux_outputs[0] is the prediction on the learnable initial queries: the same for every image
    first = out["aux_outputs"][0]
    initial = predictor.decoder_norm(predictor.query_feat.weight)
    torch.testing.assert_close(first["pred_embds"], initial.expand(2, -1, -1))
    torch.testing.assert_close(first["pred_logits"], predictor.class_embed(initial).expand(2, -1, -1))
    # the images differ, so the last layer's predictions do
    assert not torch.allclose(out["pred_logits"][0], out["pred_logits"][1])


def test_normalisation_and_padding_inside():
    """H, W not multiples of 32: the model pads the normalised image with zeros, i.e. the same as padding the
    raw image with the pixel mean, and crops its stride-4 outputs to ceil(H/4) x ceil(W/4)."""
    model = _tiny().eval()
    images = _images(1, 90, 150)
    canvas = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1).expand(1, 3, 96, 160).clone()
    canvas[..., :90, :150] = images
    with torch.no_grad():
        out = model(images)
        ref = model(canvas)
    assert out["pred_masks"].shape[-2:] == (23, 38) and out["mask_features"].shape[-2:] == (23, 38)
    torch.testing.assert_close(out["pred_masks"], ref["pred_masks"][..., :23, :38], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(images[:, :1])


def test_attention_mask_from_masks_and_all_masked_rule():
    logits = torch.full((1, 3, 8, 8), -5.0)
    logits[0, 1, :, :4] = 5.0  # query 1: left half
    logits[0, 2] = 5.0  # query 2: everywhere
    mask = masked_attention_mask(logits, (4, 4))
    assert mask.shape == (1, 3, 16) and mask.dtype == torch.bool
    left = torch.tensor([True, True, False, False] * 4)
    assert mask[0, 0].all()  # empty mask: masked everywhere ...
    assert torch.equal(mask[0, 1], ~left) and not mask[0, 2].any()
    fixed = unmask_empty_rows(mask)
    assert not fixed[0, 0].any()  # ... so the rule lets it attend everywhere
    assert torch.equal(fixed[0, 1:], mask[0, 1:])


def test_masked_cross_attention_ignores_masked_memory():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 4).eval()
    tgt, query_pos = torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    memory, pos = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    attn_mask = torch.tensor([[[False, False, False, True, True, True], [True] * 6]])
    changed = memory.clone()
    changed[0, 3:] += 10.0  # only positions query 0 may not see
    # without the rule an all-masked query reads nothing from the memory (NaN in older torch versions,
    # a zero attention update in newer ones)
    raw, raw_changed = (layer(tgt, m, attn_mask, pos, query_pos)[0, 1] for m in (memory, changed))
    assert torch.isnan(raw).all() or torch.equal(raw, raw_changed)
    fixed = unmask_empty_rows(attn_mask)
    out = layer(tgt, memory, fixed, pos, query_pos)
    out2 = layer(tgt, changed, fixed, pos, query_pos)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out2[0, 0], out[0, 0])  # query 0 is blind to the masked positions
    assert not torch.allclose(out2[0, 1], out[0, 1])  # query 1 (unmasked by the rule) sees them


class _Streams(nn.Module):
    """A batch-multiplying encoder hook: ``cat([x, 2 x, 3 x, ...])`` (``k`` streams); records its input and
    the keyword context the encoder passes."""

    def __init__(self, k: int):
        super().__init__()
        self.k, self.inputs, self.context = k, [], []

    def forward(self, x, **context):
        self.inputs.append(x)
        self.context.append(context)
        return torch.cat([x * (j + 1) for j in range(self.k)])


def test_encoder_hook_runs_on_the_tokens_after_its_depth():
    """Depth d: the output of pixel-decoder encoder layer d - 1 (0: the encoder input); what it returns is
    what the next layer reads."""
    model = _tiny(enc_layers=2).eval()
    layers = model.pixel_decoder.transformer.encoder.layers
    seen = {}
    layers[0].register_forward_hook(lambda mod, args, out: seen.__setitem__("out0", out))
    layers[1].register_forward_pre_hook(lambda mod, args: seen.__setitem__("in1", args[0]))
    at0, at1 = _Streams(1), _Streams(1)
    model.pixel_decoder.transformer.set_hooks({0: at0, 1: at1})
    with torch.no_grad():
        model(_images(2))
    assert torch.equal(at1.inputs[0], seen["out0"]) and torch.equal(seen["in1"], seen["out0"])
    assert at0.inputs[0].shape == seen["out0"].shape and not torch.equal(at0.inputs[0], seen["out0"])
    assert set(at1.context[0]) == {"pos", "reference_points"}  # no padding mask in the pixel decoder


def test_batch_multiplying_encoder_hook_gives_k_streams():
    images, k = _images(2), 3
    model = _tiny().eval()
    with torch.no_grad():
        plain = model(images)
    model.pixel_decoder.transformer.set_hooks({1: _Streams(k)})  # after the (single) encoder layer
    with torch.no_grad():
        out = model(images, num_query_layers=4)
    # every output, the pixel-decoder maps included, has k * B samples
    for key in ("pred_logits", "pred_masks", "pred_embds", "mask_features", "pixel_features"):
        assert out[key].shape[0] == k * 2, key
    assert out["pred_queries"].shape[:2] == (4, k * 2)
    assert all(a["pred_masks"].shape[0] == k * 2 for a in out["aux_outputs"])
    # stream 0 (x * 1) is the plain model: positions, reference points and the FPN lateral were tiled
    for key in ("pred_logits", "pred_masks", "pred_embds", "mask_features"):
        torch.testing.assert_close(out[key][:2], plain[key], rtol=1e-4, atol=1e-4)
    # the other streams went through the hook and differ, already in the first prediction (their own masks)
    for j in range(1, k):
        assert not torch.allclose(out["pred_logits"][2 * j: 2 * j + 2], out["pred_logits"][:2])
        first = out["aux_outputs"][0]["pred_masks"]
        assert not torch.allclose(first[2 * j: 2 * j + 2], first[:2])
    model.train()
    model(_images(1))["pred_logits"].sum().backward()  # gradients flow through the tiled path


def test_encoder_hook_errors():
    model = _tiny()
    with pytest.raises(ValueError, match="depth 2 out of range"):
        model.pixel_decoder.transformer.set_hooks({2: nn.Identity()})

    class _AddSample(nn.Module):
        def forward(self, x, **context):
            return torch.cat([x, x[:1]])

    model.pixel_decoder.transformer.set_hooks({0: _AddSample()})
    with pytest.raises(ValueError, match="hook at depth 0 returned shape"):
        model(_images(2))
    model.pixel_decoder.transformer.set_hooks(None)
    assert len(model.pixel_decoder.transformer.hooks) == 0


def test_pred_queries_are_the_normalised_queries_of_the_last_layers():
    cfg = Mask2FormerConfig.tiny(num_classes=10)
    model = _tiny().eval()
    with torch.no_grad():
        out = model(_images(2))
        every = model(_images(2), num_query_layers=cfg.dec_layers + 1)
    assert out["pred_queries"].shape == (1, 2, cfg.num_queries, cfg.hidden_dim)
    assert torch.equal(out["pred_queries"][-1], out["pred_embds"])
    # all dec_layers + 1 predictions, oldest first: the aux layers' embeddings, then the final ones
    assert every["pred_queries"].shape == (cfg.dec_layers + 1, 2, cfg.num_queries, cfg.hidden_dim)
    expected = [a["pred_embds"] for a in every["aux_outputs"]] + [every["pred_embds"]]
    assert torch.equal(every["pred_queries"], torch.stack(expected))
    assert torch.equal(every["pred_queries"][-1], out["pred_embds"])
    with pytest.raises(ValueError, match="num_query_layers"):
        model(_images(1), num_query_layers=cfg.dec_layers + 2)


def test_pixel_features_project_to_the_mask_features():
    cfg = Mask2FormerConfig.tiny(num_classes=10)
    model = _tiny().eval()
    with torch.no_grad():
        out = model(_images(2, 90, 150))
        projected = model.pixel_decoder.mask_features(out["pixel_features"])
    assert out["pixel_features"].shape == (2, cfg.conv_dim, 23, 38)  # stride 4, cropped like mask_features
    torch.testing.assert_close(projected, out["mask_features"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dec_layers", [1, 3, 9])
def test_deep_supervision_count(dec_layers):
    """``aux_outputs`` holds the initial prediction plus one per layer but the last: ``dec_layers`` entries,
    so ``dec_layers + 1`` predictions in all = the official ``DEC_LAYERS`` (10 for 9 transformer layers)."""
    model = _tiny(dec_layers=dec_layers)
    out = model(_images(1, 64, 64))
    assert len(out["aux_outputs"]) == dec_layers
    criterion = build_criterion(10, num_points=64)
    targets = [{"labels": torch.tensor([3]), "masks": torch.zeros(1, 64, 64, dtype=torch.bool)}]
    targets[0]["masks"][0, 10:30, 10:30] = True
    losses = criterion(out, targets)
    assert len(losses) == 3 * (dec_layers + 1) and f"loss_dice_{dec_layers - 1}" in losses


def test_every_parameter_gets_a_gradient():
    model = _tiny(dec_layers=3)
    out = model(_images(1, 64, 96))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_whole_model_weights_round_trip_official_names(tmp_path):
    src = _tiny(seed=0)
    # lay the state out as detectron2's MaskFormer does: heads under sem_seg_head, a criterion buffer
    state = {}
    for key, value in src.state_dict().items():
        if key.startswith(("pixel_decoder.", "predictor.")):
            key = "sem_seg_head." + key
        state[key] = value.numpy().copy()
    state["criterion.empty_weight"] = np.ones(11, np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    dst = _tiny(seed=1)
    report = load_mask2former_weights(dst, path)
    assert report.unexpected == ["criterion.empty_weight"] and report.missing == [] and not report.mismatched
    images = _images(1)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(images)["pred_masks"], src.eval()(images)["pred_masks"])
    # a checkpoint of another dataset: the class head does not fit and is reported, the rest loads
    other = _tiny(seed=2, num_classes=4)
    report = load_mask2former_weights(other, path)
    mismatched = [k for k, _, _ in report.mismatched]
    assert mismatched == ["predictor.class_embed.bias", "predictor.class_embed.weight"]


def test_config_presets():
    tiny = Mask2FormerConfig.tiny()
    assert (tiny.min_size_train, tiny.max_size_train) == ((96,), 160)
    assert tiny.backbone == "resnet_tiny" and tiny.dec_layers <= 3 and tiny.num_queries <= 20
    full = Mask2FormerConfig.full("ovis")
    assert (full.backbone, full.num_queries, full.num_classes, full.hidden_dim) == ("swin_l", 200, 25, 256)
    assert (full.enc_layers, full.dec_layers) == (6, 9)
    assert (full.enc_dim_feedforward, full.dim_feedforward) == (1024, 2048)
    assert Mask2FormerConfig.full("ytvis").num_classes == 40
    from_yaml = Mask2FormerConfig.from_dict({"preset": "full", "dataset": "ytvis", "num_queries": 100})
    assert (from_yaml.num_queries, from_yaml.num_classes) == (100, 40)
    assert Mask2FormerConfig.from_dict({"preset": "tiny", "num_classes": 3}).num_classes == 3
    with pytest.raises(ValueError, match="num_querys"):
        Mask2FormerConfig.from_dict({"preset": "tiny", "num_querys": 3})
    with pytest.raises(ValueError, match="preset"):
        Mask2FormerConfig.from_dict({"preset": "huge"})


def _synthetic_clip(num_frames: int = 2):
    """Two frames of synthetic clip 1 of the ten-shape ytvis set (four instances, three of one category)."""
    video = render_video(make_config("ytvis", shapes=SHAPE_NAMES), seed=0, index=1)
    frames = list(range(0, video.length, video.length // num_frames))[:num_frames]
    images = torch.from_numpy(video.frames[frames]).permute(0, 3, 1, 2).float()
    targets = []
    for t in frames:
        ids = [k for k in sorted(video.masks) if video.masks[k][t].any()]
        targets.append({
            "labels": torch.tensor([video.categories[k] - 1 for k in ids]),
            "masks": torch.from_numpy(np.stack([video.masks[k][t] for k in ids])),
        })
    return images, targets


def _frame_ap(model, images, targets) -> float:
    model.eval()
    with torch.no_grad():
        out = model(images)
    model.train()
    preds = []
    for i in range(images.shape[0]):
        size = tuple(images.shape[-2:])
        r = instance_inference(out["pred_logits"][i], out["pred_masks"][i], size, topk=100)
        preds.append(list(zip(r["scores"].tolist(), r["labels"].tolist(), r["masks"], strict=True)))
    return frame_mask_ap(preds, [(t["labels"], t["masks"]) for t in targets], num_classes=10)["AP"]


def test_tiny_mask2former_overfits_a_synthetic_clip():
    """Done criterion: the tiny model reaches image-level mask AP >= 0.9 (90 %) on one synthetic clip."""
    images, targets = _synthetic_clip()
    assert [len(t["labels"]) for t in targets] == [4, 4]
    model = _tiny(seed=0)
    criterion = build_criterion(10, num_points=2048)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    start, history = time.perf_counter(), []
    for step in range(1, 301):
        losses = criterion(model(images), targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 50 == 0:
            history.append((step, _frame_ap(model, images, targets)))
            if history[-1][1] >= 90.0:
                break
    seconds = time.perf_counter() - start
    print(f"overfit: AP {history[-1][1]:.1f} after {history[-1][0]} steps in {seconds:.1f}s; {history}")
    assert history[0][1] < history[-1][1]
    assert history[-1][1] >= 90.0, history
