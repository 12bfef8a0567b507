"""IDOL's Deformable-DETR segmenter: output contract, golden checks of the mask head, batch tiling, losses, overfit."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vis_core.modeling.box_ops import box_xyxy_to_cxcywh, masks_to_boxes
from vis_core.modeling.deformable_detr import DeformableDETR, DeformableDETRConfig, postprocess_frames
from vis_core.modeling.deformable_transformer import PositionEmbeddingSine
from vis_core.modeling.dynamic_mask_head import DynamicMaskHead, aligned_bilinear, compute_locations
from vis_core.modeling.idol_criterion import IDOLCriterion, downsample_target_masks, idol_weight_dict


@pytest.fixture(autouse=True)
def _one_thread():
    # the tensors here are tiny: intra-op threads only add synchronisation, which on a shared 2-core machine
    # turns a 0.05 s training step into 0.3 s or worse; restore the setting for the other test modules
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class ConvStack(nn.Module):
    """A trivial strided conv backbone with the backbone contract (res3..res5 + ``out_channels``)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=4, padding=1)
        self.res3 = nn.Conv2d(width, width * 2, 3, stride=2, padding=1)
        self.res4 = nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1)
        self.res5 = nn.Conv2d(width * 4, width * 8, 3, stride=2, padding=1)
        self.out_channels = {"res3": width * 2, "res4": width * 4, "res5": width * 8}

    def forward(self, x):
        x = F.relu(self.stem(x))
        r3 = F.relu(self.res3(x))
        r4 = F.relu(self.res4(r3))
        return {"res3": r3, "res4": r4, "res5": F.relu(self.res5(r4))}


def _cfg(**kw):
    base = dict(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6,
                num_classes=3, dropout=0.0, enc_n_points=2, dec_n_points=2)
    base.update(kw)
    return DeformableDETRConfig.tiny(**base)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return DeformableDETR(_cfg(**kw), backbone=ConvStack())


def _images(b=2, h=64, w=96, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def test_output_contract_on_a_size_not_divisible_by_32():
    model = _model().eval()
    out = model(_images(2, 70, 100))
    assert out["pred_logits"].shape == (2, 6, 3)
    assert out["pred_boxes"].shape == (2, 6, 4)
    assert out["pred_masks"].shape == (2, 6, math.ceil(70 / 4), 25)
    assert out["pred_embds"].shape == (2, 6, 32)
    # aux layers carry what the criterion needs to predict their matched masks (IDOL); dense on request
    assert len(out["aux_outputs"]) == 1 and "pred_masks" not in out["aux_outputs"][0]
    assert out["aux_outputs"][0]["mask_params"].shape == (2, 6, 169)
    dense = _model(aux_masks=True).eval()(_images(2, 70, 100))
    assert dense["aux_outputs"][0]["pred_masks"].shape == out["pred_masks"].shape
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    # the focal prior: initial class probabilities are ~0.01
    assert out["pred_logits"].sigmoid().mean().item() == pytest.approx(0.01, rel=0.5)


def test_images_are_independent_within_a_batch():
    model = _model().eval()
    x = _images(3, 64, 96)
    sizes = [(64, 96), (50, 80), (64, 70)]
    with torch.no_grad():
        batch = model(x, image_sizes=sizes)
        for i in range(3):
            single = model(x[i : i + 1], image_sizes=sizes[i : i + 1])
            for key in ("pred_logits", "pred_boxes", "pred_masks", "pred_embds"):
                assert torch.allclose(batch[key][i], single[key][0], atol=1e-4), key


def test_pixels_outside_the_image_size_are_ignored():
    model = _model().eval()
    x = _images(1, 64, 96)
    y = x.clone()
    y[..., 40:, :] = 17.0  # garbage below and right of the valid area (what a collated batch may hold)
    y[..., :, 70:] = 230.0
    with torch.no_grad():
        a = model(x, image_sizes=[(40, 70)])
        b = model(y, image_sizes=[(40, 70)])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_dynamic_head_matches_grouped_conv_reference():
    torch.manual_seed(0)
    head = DynamicMaskHead(hidden_dim=32, mask_channels=4, dynamic_channels=8, num_layers=3)
    feats = torch.randn(4, 6, 10)
    params = torch.randn(5, head.num_gen_params) * 0.3
    refs = torch.rand(5, 2) * torch.tensor([80.0, 48.0])
    got = head(feats, params, refs)
    # reference: IDOL's grouped-conv formulation (one group per instance)
    locs = compute_locations(6, 10, stride=8)
    rel = (refs[:, None, :] - locs[None]).permute(0, 2, 1).reshape(5, 2, 6, 10)
    x = torch.cat([rel, feats[None].expand(5, -1, -1, -1)], 1).reshape(1, -1, 6, 10)
    sizes = [8 * 6, 8 * 8, 1 * 8, 8, 8, 1]
    chunks = torch.split(params, sizes, dim=1)
    ws = [chunks[0].reshape(5 * 8, 6, 1, 1), chunks[1].reshape(5 * 8, 8, 1, 1), chunks[2].reshape(5, 8, 1, 1)]
    bs = [chunks[3].reshape(-1), chunks[4].reshape(-1), chunks[5].reshape(-1)]
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        x = F.conv2d(x, w, b, groups=5)
        if i < 2:
            x = F.relu(x)
    ref = aligned_bilinear(x.reshape(5, 1, 6, 10), 2)[:, 0]
    assert torch.allclose(got, ref, atol=1e-4)


def test_aligned_bilinear_keeps_values_at_cell_centres():
    x = torch.randn(1, 2, 5, 7)
    y = aligned_bilinear(x, 2)
    assert y.shape == (1, 2, 10, 14)
    assert torch.allclose(y[..., 1::2, 1::2], x, atol=1e-6)


def test_relative_coordinates_make_masks_translation_equivariant():
    # with constant mask features the mask depends only on the offset from the reference point
    torch.manual_seed(0)
    head = DynamicMaskHead(hidden_dim=32, mask_channels=4)
    feats = torch.ones(4, 12, 16)
    params = torch.randn(1, head.num_gen_params) * 0.2
    a = head(feats, params, torch.tensor([[40.0, 36.0]]))
    b = head(feats, params, torch.tensor([[56.0, 44.0]]))  # +16 px in x, +8 px in y = +4 / +2 stride-4 cells
    assert torch.allclose(a[0, 2:18, 2:24], b[0, 4:20, 6:28], atol=1e-4)


def test_position_embedding_depends_on_the_valid_area_only():
    pos = PositionEmbeddingSine(8)
    mask = torch.zeros(1, 6, 9, dtype=torch.bool)
    padded = torch.ones(1, 8, 12, dtype=torch.bool)
    padded[:, :6, :9] = False
    assert torch.allclose(pos(mask), pos(padded)[..., :6, :9])


class Doubler(nn.Module):
    """Two-stream encoder hook: ``cat([x, x + offset])`` along the batch."""

    def __init__(self, offset=None):
        super().__init__()
        self.offset = offset
        self.calls = 0

    def forward(self, src, pos=None, reference_points=None, padding_mask=None):
        self.calls += 1
        assert pos.shape == src.shape and padding_mask.shape == src.shape[:2]
        assert reference_points.shape[:2] == src.shape[:2]
        return torch.cat([src, src if self.offset is None else src + self.offset])


def test_batch_doubling_encoder_hook_tiles_everything_downstream():
    model = _model(enc_layers=2).eval()
    x = _images(2, 64, 96)
    sizes = [(64, 96), (40, 60)]
    with torch.no_grad():
        plain = model(x, image_sizes=sizes)
        model.encoder.set_hooks({1: Doubler()})  # after encoder layer 0
        doubled = model(x, image_sizes=sizes)
    assert model.encoder.hooks["1"].calls == 1
    for key in ("pred_logits", "pred_boxes", "pred_masks", "pred_embds"):
        assert doubled[key].shape[0] == 4
        # identical streams: both halves equal the plain output, in the same image order
        assert torch.allclose(doubled[key][:2], plain[key], atol=1e-4), key
        assert torch.allclose(doubled[key][2:], plain[key], atol=1e-4), key
    with torch.no_grad():
        # a per-channel offset (LayerNorm does not cancel it) changes only the second stream
        model.encoder.set_hooks({0: Doubler(torch.randn(32, generator=torch.Generator().manual_seed(1)))})
        other = model(x, image_sizes=sizes)
    assert torch.allclose(other["pred_logits"][:2], plain["pred_logits"], atol=1e-4)
    assert not torch.allclose(other["pred_logits"][2:], plain["pred_logits"], atol=1e-3)
    with torch.no_grad():
        model.encoder.set_hooks({2: Doubler()})  # after the last layer: the memory itself is doubled
        last = model(x, image_sizes=sizes)
    assert torch.allclose(last["pred_logits"][2:], plain["pred_logits"], atol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        model.encoder.set_hooks({3: Doubler()})


def _targets_from_masks(masks_per_image, labels_per_image, h, w):
    targets = []
    for m, lab in zip(masks_per_image, labels_per_image, strict=True):
        boxes = box_xyxy_to_cxcywh(masks_to_boxes(m, exclusive=True)) / torch.tensor([w, h, w, h])
        targets.append({"labels": torch.tensor(lab), "masks": m, "boxes": boxes})
    return targets


def _two_square_targets(h=64, w=96):
    m0 = torch.zeros(2, h, w, dtype=torch.bool)
    m0[0, 8:30, 10:40] = True
    m0[1, 35:60, 50:90] = True
    m1 = torch.zeros(1, h, w, dtype=torch.bool)
    m1[0, 20:50, 30:70] = True
    return _targets_from_masks([m0, m1], [[0, 2], [1]], h, w)


def test_target_masks_are_sampled_at_stride_centres():
    m = torch.zeros(1, 9, 10, dtype=torch.bool)
    m[0, 2, 6] = True
    d = downsample_target_masks(m, 4, (3, 3))
    assert d.shape == (1, 3, 3)
    assert d[0, 0, 1] == 1 and d.sum() == 1  # pixel (2, 6) = (4*0+2, 4*1+2)


def test_criterion_losses_are_finite_and_every_parameter_gets_a_gradient():
    model = _model()
    targets = _two_square_targets()
    crit = IDOLCriterion(3, weight_dict=idol_weight_dict(num_aux=1), mask_head=model.mask_head)
    losses = crit(model(_images(2, 64, 96)), targets)
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
                           for s in ("", "_0")}
    total = sum(crit.weighted(losses).values())
    assert torch.isfinite(total)
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_matched_query_masks_equal_dense_masks():
    # aux layers without dense masks: the criterion predicts matched queries only, with the same result
    dense_model = _model(aux_masks=True).eval()
    lazy_model = _model(aux_masks=False).eval()
    lazy_model.load_state_dict(dense_model.state_dict())
    targets = _two_square_targets()
    x = _images(2, 64, 96)
    with torch.no_grad():
        dense_out, lazy_out = dense_model(x), lazy_model(x)
    assert "pred_masks" not in lazy_out["aux_outputs"][0]
    dense = IDOLCriterion(3, weight_dict=idol_weight_dict(num_aux=1))(dense_out, targets)
    lazy = IDOLCriterion(3, weight_dict=idol_weight_dict(num_aux=1), mask_head=lazy_model.mask_head)(
        lazy_out, targets)
    for key in dense:
        assert dense[key].item() == pytest.approx(lazy[key].item(), rel=1e-4, abs=1e-5), key
    with pytest.raises(KeyError, match="mask_head"):
        IDOLCriterion(3, weight_dict=idol_weight_dict(num_aux=1))(lazy_out, targets)


def test_perfect_outputs_give_zero_box_losses_and_low_mask_losses():
    targets = _two_square_targets()
    q, k, h4, w4 = 5, 3, 16, 24
    logits = torch.full((2, q, k), -8.0)
    boxes = torch.full((2, q, 4), 0.05)
    boxes[..., :2] = torch.tensor([0.95, 0.95])
    masks = torch.full((2, q, h4, w4), -20.0)
    for b, t in enumerate(targets):
        for i, (lab, box, m) in enumerate(zip(t["labels"], t["boxes"], t["masks"], strict=True)):
            logits[b, i, lab] = 8.0
            boxes[b, i] = box
            masks[b, i] = downsample_target_masks(m[None], 4, (h4, w4))[0] * 40 - 20
    losses = IDOLCriterion(3, weight_dict=idol_weight_dict())({"pred_logits": logits, "pred_boxes": boxes,
                                                               "pred_masks": masks}, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_dice"].item() < 1e-3 and losses["loss_mask"].item() < 1e-6
    assert losses["loss_ce"].item() < 1e-3


def test_config_presets_and_errors():
    tiny = DeformableDETRConfig.tiny()
    assert (tiny.hidden_dim, tiny.enc_layers, tiny.dec_layers, tiny.num_queries) == (32, 1, 2, 20)
    full = DeformableDETRConfig.full("ovis")
    assert (full.num_classes, full.hidden_dim, full.num_queries, full.dim_feedforward) == (25, 256, 300, 1024)
    assert (full.enc_layers, full.dec_layers, full.nheads, full.enc_n_points, full.num_feature_levels) == (
        6, 6, 8, 4, 4)
    assert full.backbone == "swin_l" and full.min_size_test == 720
    assert DeformableDETRConfig.preset("full_ytvis21").num_classes == 40
    with pytest.raises(ValueError, match="unknown key"):
        tiny.replace(num_querys=3)
    with pytest.raises(ValueError, match="preset"):
        DeformableDETRConfig.preset("huge")


def test_postprocess_returns_topk_masks_at_input_size():
    model = _model().eval()
    with torch.no_grad():
        out = model(_images(2, 70, 100))
    res = postprocess_frames(out, [(70, 100), (60, 90)], topk=4)
    assert res[0]["masks"].shape == (4, 70, 100) and res[1]["masks"].shape == (4, 60, 90)
    assert (res[0]["scores"][:-1] >= res[0]["scores"][1:]).all()
    flat = out["pred_logits"][0].sigmoid()
    for s, lab, qi in zip(res[0]["scores"], res[0]["labels"], res[0]["query_idx"], strict=True):
        assert s.item() == pytest.approx(flat[qi, lab].item())
    assert np.isfinite(res[0]["boxes"].numpy()).all()


def test_method_two_stream_losses_equal_single_stream_losses():
    # identical streams double every sum and every normaliser: the losses do not change
    from vis_core.methods.detr_segmenter import DeformableDETRFrame

    torch.manual_seed(0)
    method = DeformableDETRFrame(_cfg(enc_layers=2), backbone=ConvStack())
    targets = _two_square_targets()
    batch = {"images": _images(2, 64, 96)[:, None], "targets": [[targets[0]], [targets[1]]]}
    plain = method(batch)
    method.model.encoder.set_hooks({1: Doubler()})
    doubled = method(batch)
    assert set(plain) == set(doubled)
    for key in plain:
        assert doubled[key].item() == pytest.approx(plain[key].item(), rel=1e-4, abs=1e-6), key


def test_registered_method_builds_from_a_plain_dict():
    from vis_core.methods.registry import build_method

    method = build_method("deformable_detr_frame", {"preset": "tiny", "num_classes": 4,
                                                    "overrides": {"num_queries": 7}})
    assert method.model.cfg.num_classes == 4 and method.model.query_embed.weight.shape[0] == 7
    with pytest.raises(ValueError, match="unknown key"):
        build_method("deformable_detr_frame", {"preset": "tiny", "overrides": {"hiden_dim": 8}})


def _synthetic_clip_batch(frames=2):
    """One clip of A's synthetic generator at 192x320 with few, large objects (3 instances of 3 categories,
    4400-6600 px each). At the 96x160 smoke size the objects are too small for AP[.5:.95] >= 90 at all: the
    dynamic head predicts at stride 8, and even each GT's exact signed distance sampled on that grid (put where
    the head's x2 ``aligned_bilinear`` puts it) reaches IoU 0.80-0.90 there; on this clip that bound is AP 100
    (IoUs 0.96-0.98)."""
    from vis_core.data.synthetic import make_config, render_video

    cfg = make_config("ytvis", height=192, width=320, radius=(0.3, 0.4), objects=(2, 3))
    video = render_video(cfg, seed=0, index=29)
    h, w = video.height, video.width
    ids = sorted(video.masks)
    images = torch.from_numpy(video.frames[:frames]).permute(0, 3, 1, 2).float()
    targets = []
    for t in range(frames):
        keep = [i for i in ids if video.masks[i][t].any()]
        masks = torch.from_numpy(np.stack([video.masks[i][t] for i in keep]))
        boxes = box_xyxy_to_cxcywh(masks_to_boxes(masks, exclusive=True)) / torch.tensor([w, h, w, h])
        labels = torch.tensor([video.categories[i] - 1 for i in keep])
        targets.append({"labels": labels, "masks": masks, "boxes": boxes})
    return {"images": images[None], "targets": [targets], "image_sizes": [(h, w)]}


def _clip_mask_ap(method, batch) -> dict:
    """Image-level COCO mask AP (percent) of ``method.predict_frames`` on the clip's frames."""
    from vis_core.engine.frame_eval import frame_mask_ap

    images = batch["images"][0]
    h, w = batch["image_sizes"][0]
    method.eval()
    preds = method.predict_frames(images, [(h, w)] * len(images), topk=20)
    method.train()
    predictions = [list(zip(p["scores"], p["labels"], p["masks"], strict=True)) for p in preds]
    gts = [(t["labels"], t["masks"]) for t in batch["targets"][0]]
    return frame_mask_ap(predictions, gts, num_classes=10)


def test_tiny_segmenter_overfits_one_synthetic_clip():
    from vis_core.methods.detr_segmenter import DeformableDETRFrame, DetrFrameConfig

    batch = _synthetic_clip_batch()
    assert [len(t["labels"]) for t in batch["targets"][0]] == [3, 3]
    torch.manual_seed(0)
    # 10 queries instead of 20: SimOTA gives a GT as many positives as its summed top IoUs, so with many spare
    # queries 2-3 of them converge on each object with near-equal scores, and a duplicate in one frame can
    # outrank the true positive of the same class in the other frame (an FP before full recall)
    method = DeformableDETRFrame(DetrFrameConfig(preset="tiny", overrides={"num_queries": 10}))
    max_steps, every = 250, 25
    optim = torch.optim.AdamW(method.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=2e-3, total_steps=max_steps, pct_start=0.1)
    history = []
    for step in range(1, max_steps + 1):
        loss = sum(method(batch).values())
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 0.1)
        optim.step()
        sched.step()
        if step % every == 0:
            history.append((step, _clip_mask_ap(method, batch)))
            if history[-1][1]["AP"] >= 90.0:
                break
    # seeds 0-4 all pass 90 by step 75-125 (then plateau at AP 95-97, AP50 100)
    assert history[-1][1]["AP"] >= 90.0, history


def test_frames_without_instances_train_the_classifier_only():
    model = _model()
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4),
             "masks": torch.zeros(0, 64, 96, dtype=torch.bool)}
    crit = IDOLCriterion(3, weight_dict=idol_weight_dict(num_aux=1), mask_head=model.mask_head)
    out = model(_images(2, 64, 96))
    losses = crit(out, [empty, empty])
    for key, value in losses.items():
        assert torch.isfinite(value), key
        if not key.startswith("loss_ce"):
            assert value.item() == 0.0, key
    assert losses["loss_ce"].item() > 0  # every query is pushed towards "no object"
    sum(losses.values()).backward()
    mixed = crit(model(_images(2, 64, 96)), [_two_square_targets()[0], empty])
    assert all(torch.isfinite(v) for v in mixed.values())
