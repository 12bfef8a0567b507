"""Frame-level mask AP (pycocotools), mask2former_frame plumbing, `vis train` end to end on synthetic data."""

import json

import numpy as np
import pytest
import torch

from vis_core.engine.frame_eval import frame_mask_ap


def _square(y, x, size=10, shape=(32, 32)):
    m = np.zeros(shape, dtype=bool)
    m[y : y + size, x : x + size] = True
    return m


def test_frame_mask_ap_perfect_wrong_and_partial():
    gt_masks = np.stack([_square(0, 0), _square(15, 15)])
    targets = [(np.array([0, 1]), gt_masks)]
    perfect = [[(0.9, 0, gt_masks[0]), (0.8, 1, gt_masks[1])]]
    assert frame_mask_ap(perfect, targets) == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    wrong_class = [[(0.9, 1, gt_masks[0]), (0.8, 0, gt_masks[1])]]
    assert frame_mask_ap(wrong_class, targets)["AP"] == 0.0
    # IoU of a 10x10 square shifted by 2 columns: 80 / 120 = 0.67 -> a hit at 0.5, a miss at 0.75
    shifted = [[(0.9, 0, _square(0, 2)), (0.8, 1, _square(15, 17))]]
    result = frame_mask_ap(shifted, targets)
    assert result["AP50"] == pytest.approx(100.0) and result["AP75"] == 0.0
    # thresholds 0.50, 0.55, 0.60, 0.65 of the ten hit: AP = 40
    assert result["AP"] == pytest.approx(40.0)
    assert frame_mask_ap([[]], targets) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_frame_mask_ap_ranking_matters_and_bad_input_is_named():
    gt = np.stack([_square(0, 0)])
    targets = [(np.array([0]), gt), (np.array([0]), gt)]
    # image 1 has a confident false positive ranked above the true positive of image 0
    preds = [[(0.5, 0, gt[0])], [(0.9, 0, _square(20, 20))]]
    assert 0 < frame_mask_ap(preds, targets)["AP50"] < 100
    with pytest.raises(ValueError, match="image 0 prediction 0: mask"):
        frame_mask_ap([[(0.5, 0, np.zeros((4, 4), bool))]], targets[:1])
    with pytest.raises(ValueError, match="score is nan"):
        frame_mask_ap([[(float("nan"), 0, gt[0])]], targets[:1])


def test_instance_inference_picks_confident_query_and_scores_mask():
    from vis_core.methods.frame_segmenter import instance_inference

    logits = torch.full((3, 4), -5.0)  # 3 queries, K = 3
    logits[1, 2] = 8.0
    masks = torch.full((3, 8, 8), -6.0)
    masks[1, 2:6, 2:6] = 6.0
    out = instance_inference(logits, masks, image_size=(30, 32), topk=2)
    assert out["labels"][0] == 2 and out["masks"].shape == (2, 30, 32)
    # stride 4: the 4x4 block of logits covers pixels 8..23; bilinear upsampling only rounds its corners
    mask = out["masks"][0]
    assert not mask[:8].any() and not mask[24:].any() and not mask[:, :8].any() and not mask[:, 24:].any()
    assert mask[9:23, 9:23].all() and mask.sum() > 0.9 * 16 * 16
    # score = class probability x mean mask probability inside the mask
    assert 0.9 < out["scores"][0] < 1.0 and out["scores"][1] < 0.01


def test_clip_batch_to_frames_pads_targets_to_the_mask_canvas():
    from vis_core.methods.frame_segmenter import clip_batch_to_frames

    images = torch.zeros(2, 2, 3, 30, 41)
    small = {"labels": torch.tensor([1]), "masks": torch.ones(1, 20, 41, dtype=torch.bool)}
    none = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 30, 41, dtype=torch.bool)}
    frames, targets = clip_batch_to_frames({"images": images, "targets": [[small, none], [none, small]]}, 4)
    assert frames.shape == (4, 3, 30, 41) and [len(t["labels"]) for t in targets] == [1, 0, 0, 1]
    assert targets[0]["masks"].shape == (1, 32, 44) and targets[0]["masks"].sum() == 20 * 41


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from vis_core.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, "ytvis", seed=0, train_videos=3, valid_videos=2, frames=(4, 6), height=48, width=64)
    return out


def test_vis_train_cli_and_frame_ap_on_synthetic(synthetic, tmp_path, capsys):
    from vis_core.cli import main
    from vis_core.engine.evaluate_frames import evaluate_frame_ap
    from vis_core.engine.runs import load_trained_method

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"train": {
        "method": "mask2former_frame",
        "model": {"preset": "tiny", "num_points": 64, "dec_layers": 1},
        "data": {"json": str(synthetic / "train" / "instances.json"),
                 "image_root": str(synthetic / "train" / "JPEGImages"), "min_sizes": [48], "max_size": 64},
        "solver": {"max_iter": 2, "batch_size": 2},
        "output_dir": str(tmp_path / "run"), "log_period": 1, "device": "cpu", "cpu_threads": 1,
    }}))
    threads = torch.get_num_threads()
    try:
        args = ["train", "--config", str(params), "--section", "train", "--set", "model.num_queries=5"]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    # class 2 / mask 5 / dice 5 on the final layer and the one auxiliary (initial-query) prediction
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"} <= set(rows[0])
    method = load_trained_method(tmp_path / "run" / "last.pth")
    assert method.segmenter.num_queries == 5 and method.segmenter.num_classes == 5  # filled from the json
    from vis_core.data.clips import VISClipDataset

    valid = VISClipDataset(synthetic / "valid" / "instances.json", synthetic / "valid" / "JPEGImages")
    result = evaluate_frame_ap(method, valid, max_images=5)
    assert result["images"] == 5 and 0.0 <= result["AP"] <= 100.0

    # unknown keys name the file, section and key; the CLI exits with 2
    assert main(["train", "--config", str(params), "--section", "train", "--set", "solver.lrr=1"]) == 2
    assert "params.yaml [train].solver: unknown key 'lrr'" in capsys.readouterr().err
    assert main(["train", "--config", str(params), "--section", "train", "--set", "model.depth=1"]) == 2
    assert "params.yaml [train].model: unknown key 'depth'" in capsys.readouterr().err
