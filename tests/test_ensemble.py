"""Result-level ensembling on a hand-made video whose fused output is derived by hand below.

Frames are 4x4; M is the top-left 2x2 block, P the pixel (0, 2), Q the pixel (3, 3), R the bottom-right 2x2.
Video 1, three frames, three models (A, B, C):

    A1 cat 1 0.9 [M,   M,   M   ]     B1 cat 1 0.6 [M+P, M,   None]     C1 cat 1 0.3 [M+P, M+P, Q]
    A3 cat 1 0.5 [M,   M,   M   ]     B2 cat 2 0.8 [M,   M,   M   ]
    A2 cat 2 0.4 [R,   R,   R   ]

Video mask IoUs with A1: B1 8/13 = 0.615, C1 8/15 = 0.533, A3 1, B2 1, A2 0.

The hand-derived cases pin the clustering, NMS and voting mechanics under the legacy settings ``LEGACY``
(raw scores, a cluster's score the mean over the models that found it, votes by model weight). The defaults
(rank calibration, a missing model votes 0, score-weighted mask votes) have their own tests at the end: the
legacy rule let an object found by one model keep its full score and fused two members' masks into their
union, which is why the defaults changed.
"""

import json

import numpy as np
import pytest

from vis_core.cli import main as vis_main
from vis_core.data.ytvis import decode_segmentation, mask_to_rle
from vis_core.tracking.ensemble import EnsembleConfig, ensemble_files, ensemble_results, fuse_video

H = W = 4
LEGACY = {"score_mode": "members", "vote_weighting": "model", "calibration": "none"}


def _m(*pixels, block=None):
    a = np.zeros((H, W), dtype=np.uint8)
    if block == "M":
        a[:2, :2] = 1
    if block == "R":
        a[2:, 2:] = 1
    for y, x in pixels:
        a[y, x] = 1
    return a


M, MP, Q, R = _m(block="M"), _m((0, 2), block="M"), _m((3, 3)), _m(block="R")


def _entry(vid, cat, score, masks):
    return {
        "video_id": vid,
        "category_id": cat,
        "score": score,
        "segmentations": [None if m is None else mask_to_rle(m) for m in masks],
    }


A = [_entry(1, 1, 0.9, [M, M, M]), _entry(1, 1, 0.5, [M, M, M]), _entry(1, 2, 0.4, [R, R, R])]
B = [_entry(1, 1, 0.6, [MP, M, None]), _entry(1, 2, 0.8, [M, M, M])]
C = [_entry(1, 1, 0.3, [MP, MP, Q])]


def _masks(entry):
    return [None if s is None else decode_segmentation(s, H, W) for s in entry["segmentations"]]


def _same_masks(entry, expected):
    got = _masks(entry)
    return len(got) == len(expected) and all(
        (g is None and e is None) or (g is not None and e is not None and np.array_equal(g, e))
        for g, e in zip(got, expected, strict=True)
    )


def test_category_aware_fusion_hand_derived():
    out = fuse_video([A, B, C], cfg=EnsembleConfig(**LEGACY))
    # cluster {A1, B1, C1}: mean score 0.6; votes (need 2 of 3): f0 M+P (P has B and C), f1 M (P only C),
    # f2: M has one vote (A; B absent), Q one vote (C) -> None.
    # A3 cannot join A1's cluster (same model) -> singleton 0.5, IoU 8/13 = 0.615 with the fused one (< 0.7).
    # B2 (cat 2) singleton 0.8; A2 (cat 2) singleton 0.4, disjoint from B2.
    assert [(e["category_id"], round(e["score"], 6)) for e in out] == [(2, 0.8), (1, 0.6), (1, 0.5), (2, 0.4)]
    assert _same_masks(out[1], [MP, M, None])
    assert _same_masks(out[0], [M, M, M]) and _same_masks(out[2], [M, M, M])
    assert _same_masks(out[3], [R, R, R])
    assert all(e["video_id"] == 1 for e in out)
    json.dumps(out)  # json-ready
    # a tighter NMS removes the duplicate A3 (IoU 0.615 with the fused entry of its category)
    out = fuse_video([A, B, C], cfg=EnsembleConfig(nms_iou_threshold=0.6, **LEGACY))
    assert [(e["category_id"], round(e["score"], 6)) for e in out] == [(2, 0.8), (1, 0.6), (2, 0.4)]


def test_weights_change_score_and_votes():
    out = fuse_video([A, B, C], weights=[2, 1, 1], cfg=EnsembleConfig(**LEGACY))
    fused = next(e for e in out if e["category_id"] == 1 and _masks(e)[0].sum() == 5)
    # score (2 * 0.9 + 0.6 + 0.3) / 4; votes need 2 of 4: f2 M now carried by A alone (weight 2)
    assert fused["score"] == pytest.approx(2.7 / 4)
    assert _same_masks(fused, [MP, M, M])


def test_category_agnostic_clustering_hand_derived():
    cfg = EnsembleConfig(category_aware=False, **LEGACY)
    out = fuse_video([A, B, C], cfg=cfg)
    # seed A1: model B's best match is B2 (IoU 1 > B1's 0.615), model C gives C1 -> {A1, B2, C1}:
    #   score (0.9 + 0.8 + 0.3) / 3, category votes cat1 1.2 vs cat2 0.8 -> 1, masks [M, M, M]
    #   (f2: M voted by A1 and B2).
    # seed B1 (0.6): A3 joins (IoU 0.615) -> {B1, A3}: score 0.55, cat 1, need 1 of 2 -> [M+P, M, M];
    #   then suppressed by the first one (same category, IoU 12/13 >= 0.7).
    # seed A2 (0.4): singleton.
    assert [(e["category_id"], round(e["score"], 6)) for e in out] == [(1, round(2.0 / 3, 6)), (2, 0.4)]
    assert _same_masks(out[0], [M, M, M])
    # without NMS the {B1, A3} cluster survives
    out = fuse_video([A, B, C], cfg=EnsembleConfig(category_aware=False, nms_iou_threshold=1.01, **LEGACY))
    assert [round(e["score"], 6) for e in out] == [round(2.0 / 3, 6), 0.55, 0.4]
    assert _same_masks(out[1], [MP, M, M])


def test_all_models_score_mode_and_any_per_model():
    out = fuse_video([A, B, C], cfg=EnsembleConfig(**{**LEGACY, "score_mode": "all_models"}))
    # a model that missed the object votes 0: singletons are divided by 3
    assert [e["score"] for e in out] == pytest.approx([0.6, 0.8 / 3, 0.5 / 3, 0.4 / 3])
    # any number per model: A3 joins A1's cluster -> {A1, A3, B1, C1}, mean 0.575, need 2 of 4:
    # f0 M+P (P: B, C), f1 M, f2 M (A1 and A3)
    out = fuse_video([A, B, C], cfg=EnsembleConfig(one_per_model=False, **LEGACY))
    fused = next(e for e in out if e["category_id"] == 1)
    assert fused["score"] == pytest.approx((0.9 + 0.5 + 0.6 + 0.3) / 4)
    assert _same_masks(fused, [MP, M, M])


def test_ensemble_results_per_video_and_max_per_video():
    extra = _entry(2, 1, 0.7, [R, None, M])
    out = ensemble_results([A + [extra], B, C], cfg=EnsembleConfig(max_per_video=2, **LEGACY))
    assert [(e["video_id"], e["category_id"]) for e in out] == [(1, 2), (1, 1), (2, 1)]
    assert out[2]["segmentations"] == extra["segmentations"]  # a lone entry passes through unchanged
    assert ensemble_results([[], []]) == []
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        fuse_video([A, B, C], weights=[1, 1])
    with pytest.raises(ValueError, match="score_mode"):
        EnsembleConfig(score_mode="max")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture
def files(tmp_path):
    gt = {
        "videos": [{"id": v, "width": W, "height": H, "length": 3} for v in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    return {
        "gt": _write(tmp_path / "gt.json", gt),
        "a": _write(tmp_path / "a.json", A),
        "b": _write(tmp_path / "b.json", B),
        "c": _write(tmp_path / "c.json", C),
        "out": str(tmp_path / "fused.json"),
        "dir": tmp_path,
    }


def test_cli_writes_fused_results(files, capsys):
    rc = vis_main(["ensemble", "--gt-videos", files["gt"], files["a"], files["b"], files["c"],
                   "--out", files["out"], "--no-progress"])
    assert rc == 0
    out = json.loads(open(files["out"]).read())
    assert out == json.loads(json.dumps(ensemble_results([A, B, C])))
    assert "wrote" in capsys.readouterr().out
    path = ensemble_files(files["gt"], [files["a"], files["b"]], files["dir"] / "w.json", weights=[1, 3],
                          cfg=EnsembleConfig(**LEGACY))
    fused = json.loads(path.read_text())
    top = next(e for e in fused if e["category_id"] == 1 and e["score"] == pytest.approx((0.9 + 1.8) / 4))
    assert _same_masks(top, [MP, M, None])  # B's weight 3 carries P in f0 and absence in f2


def test_cli_bad_input_names_file_and_field(files, capsys):
    bad = _write(files["dir"] / "bad.json", [_entry(1, 1, 0.5, [M, M])])  # 2 frames for a 3-frame video
    rc = vis_main(
        ["ensemble", "--gt-videos", files["gt"], files["a"], bad, "--out", files["out"], "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "bad.json" in err and "segmentations" in err
    rc = vis_main(["ensemble", "--gt-videos", files["gt"], files["a"], files["b"], "--weights", "1",
                   "--out", files["out"], "--no-progress"])
    assert rc == 1 and "1 weights given for 2 results files" in capsys.readouterr().err
    assert not (files["dir"] / "fused.json").exists()
    assert [p.name for p in files["dir"].iterdir() if p.name.startswith(".")] == []


def test_rank_calibration_puts_models_on_one_scale():
    from vis_core.tracking.ensemble import rank_calibrated

    entries = [{"video_id": 1, "category_id": 1, "score": s, "segmentations": [None]} for s in (0.9, 0.2, 0.5, 0.5)]
    # ranks by decreasing score: 0.9 -> 0, the two 0.5 share (1 + 2) / 2, 0.2 -> 3; quantile (N - r) / N
    assert [e["score"] for e in rank_calibrated(entries)] == [1.0, 0.25, 0.625, 0.625]
    assert rank_calibrated([]) == []
    # on a common scale (the longest list of an ensemble, here 8): the r-th best entries of all models agree
    assert [e["score"] for e in rank_calibrated(entries, scale=8)] == [1.0, 0.625, 0.8125, 0.8125]
    with pytest.raises(ValueError, match="below the number of entries"):
        rank_calibrated(entries, scale=3)
    with pytest.raises(ValueError, match="calibration"):
        EnsembleConfig(calibration="softmax")


def test_default_calibration_ranks_every_model_on_the_longest_list():
    # A writes 4 entries, B 2: B's second entry ranks 1 like A's second, so both score 1 - 1/4 (per-list
    # quantiles would give B's 1/2 and A's 3/4)
    a = [_entry(1, 1, s, [M, M]) for s in (0.9, 0.8, 0.2, 0.1)]
    b = [_entry(2, 1, 0.99, [M, M]), _entry(2, 1, 0.98, [R, R])]
    out = ensemble_results([a, b], cfg=EnsembleConfig(score_mode="members", nms_iou_threshold=1.01))
    assert sorted(e["score"] for e in out if e["video_id"] == 2) == [0.75, 1.0]
    assert sorted(e["score"] for e in out if e["video_id"] == 1) == [0.25, 0.5, 0.75, 1.0]
    quantile = ensemble_results([a, b], cfg=EnsembleConfig(score_mode="members", calibration="quantile",
                                                           nms_iou_threshold=1.01))
    assert sorted(e["score"] for e in quantile if e["video_id"] == 2) == [0.5, 1.0]


# ------------------------------------------------------------------------------------ default settings
# Two models, one video. X is found by both (A: M at 0.9, B: M+P at 0.3), Y only by A (cat 1, Q, 0.5),
# Z only by B (cat 2, R, 0.8). Rank calibration per model: A: X 1, Y 1/2; B: Z 1, X 1/2.
X_A, Y_A = _entry(1, 1, 0.9, [M, M]), _entry(1, 1, 0.5, [Q, Q])
X_B, Z_B = _entry(1, 1, 0.3, [MP, MP]), _entry(1, 2, 0.8, [R, R])


def test_agreement_outranks_a_single_model_and_masks_are_not_the_union():
    out = ensemble_results([[X_A, Y_A], [X_B, Z_B]])
    # X: (1 + 1/2) / 2 models = 0.75; Z: 1 / 2 = 0.5; Y: (1/2) / 2 = 0.25. The legacy rule gave X (0.9 + 0.3) / 2
    # = 0.6 below Z's 0.8 and Y's 0.5 kept in full.
    assert [(e["category_id"], e["score"]) for e in out] == [(1, 0.75), (2, 0.5), (1, 0.25)]
    # X's mask: A votes 1, B 1/2; P has only B's third of the vote -> M. The legacy half vote kept M + P.
    assert _same_masks(out[0], [M, M])
    legacy = ensemble_results([[X_A, Y_A], [X_B, Z_B]], cfg=EnsembleConfig(**LEGACY))
    assert [(e["category_id"], e["score"]) for e in legacy] == [(2, 0.8), (1, pytest.approx(0.6)), (1, 0.5)]
    assert _same_masks(legacy[1], [MP, MP])


def test_a_third_member_can_overrule_the_most_confident_one():
    # calibrated votes 1 (A: M), 1/2 (B: M+P), 1/2 (C: M+P): P holds half of the total vote 2 -> kept
    x_c = _entry(1, 1, 0.7, [MP, MP])
    out = ensemble_results([[X_A, Y_A], [X_B, Z_B], [x_c, _entry(1, 2, 0.9, [R, R])]])
    fused = next(e for e in out if e["category_id"] == 1 and e["score"] == pytest.approx((1 + 0.5 + 0.5) / 3))
    assert _same_masks(fused, [MP, MP])
    with pytest.raises(ValueError, match="vote_weighting"):
        EnsembleConfig(vote_weighting="area")
