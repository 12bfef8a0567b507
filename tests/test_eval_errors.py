"""Bad input is an error naming the file, the entry (index and ids) and the field, never a silent number."""

import copy
import json
import math

import numpy as np
import pytest

from vis_core.cli import main as vis_main
from vis_core.data.ytvis import VISFormatError, mask_to_rle, save_json
from vis_core.eval import evaluate
from vis_core.eval.synthetic_case import case_from_masks

# every test runs with the compiled kernels and with the numpy code (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("eval_kernels")

H, W = 6, 8


def _case():
    m = np.zeros((H, W), np.uint8)
    m[1:3, 2:5] = 1
    return case_from_masks(
        {1: (H, W, 2), 2: (H, W, 2)},
        [
            {"video_id": 1, "category_id": 1, "masks": [m, m], "occlusion": ["no_occlusion", None]},
            {"video_id": 2, "category_id": 1, "masks": [m, None], "occlusion": ["severe_occlusion", None]},
        ],
        [
            {"video_id": 1, "category_id": 1, "score": 0.9, "masks": [m, m]},
            {"video_id": 2, "category_id": 1, "score": 0.8, "masks": [m, None]},
        ],
    )


def _files(tmp_path, gt, res):
    return str(save_json(gt, tmp_path / "gt.json")), str(save_json(res, tmp_path / "res.json"))


def _expect_error(tmp_path, gt, res, *fragments, **kw):
    gt_path, res_path = _files(tmp_path, gt, res)
    with pytest.raises(VISFormatError) as info:
        evaluate(gt_path, res_path, **kw)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def test_valid_input_evaluates(tmp_path):
    gt, res = _case()
    assert evaluate(*_files(tmp_path, gt, res))["AP"] == pytest.approx(1.0, abs=1e-12)


def test_result_mask_of_the_wrong_size(tmp_path):
    # the official code scores such a mask 0 without a word; here it names file, entry, video and frame
    gt, res = _case()
    res[1]["segmentations"][0] = mask_to_rle(np.ones((H + 1, W), np.uint8))
    _expect_error(tmp_path, gt, res, "res.json", "entry 1", "video_id 2", "segmentations[0]", "size")


def test_result_track_of_the_wrong_length(tmp_path):
    gt, res = _case()
    res[0]["segmentations"].append(None)
    _expect_error(tmp_path, gt, res, "res.json", "entry 0", "video_id 1", "segmentations", "3", "2 frames")


def test_unknown_video_id(tmp_path):
    gt, res = _case()
    res[1]["video_id"] = 99
    _expect_error(tmp_path, gt, res, "res.json", "entry 1", "video_id 99", "unknown video_id")


@pytest.mark.parametrize("score", [math.nan, math.inf, -0.5])
def test_bad_scores(tmp_path, score):
    gt, res = _case()
    res[0]["score"] = score  # json.dump writes NaN / Infinity, json.load reads them back
    _expect_error(tmp_path, gt, res, "res.json", "entry 0", "video_id 1", "'score'")
    with pytest.raises(VISFormatError, match="score"):  # parsed inputs are checked the same way
        evaluate(gt, res)


def test_list_count_rle_in_results(tmp_path):
    gt, res = _case()
    res[0]["segmentations"][1] = {"size": [H, W], "counts": [10, 5, H * W - 15]}
    _expect_error(tmp_path, gt, res, "res.json", "entry 0", "segmentations[1]", "counts", "compressed string")


@pytest.mark.parametrize("field", ["video_id", "category_id", "score", "segmentations"])
def test_missing_result_field(tmp_path, field):
    gt, res = _case()
    del res[1][field]
    _expect_error(tmp_path, gt, res, "res.json", "entry 1", f"missing field '{field}'")


@pytest.mark.parametrize("field", ["segmentations", "areas", "video_id", "iscrowd"])
def test_missing_gt_annotation_field(tmp_path, field):
    gt, res = _case()
    del gt["annotations"][1][field]
    _expect_error(tmp_path, gt, res, "gt.json", "annotations[1]", "id 2", f"missing field '{field}'")


def test_missing_gt_video_field(tmp_path):
    gt, res = _case()
    del gt["videos"][0]["height"]
    _expect_error(tmp_path, gt, res, "gt.json", "videos[0]", "missing field 'height'")


def test_duplicate_annotation_ids(tmp_path):
    gt, res = _case()
    gt["annotations"][1]["id"] = gt["annotations"][0]["id"]
    _expect_error(tmp_path, gt, res, "gt.json", "annotations[1]", "duplicate annotation id")


def test_gt_track_of_the_wrong_length(tmp_path):
    gt, res = _case()
    gt["annotations"][0]["areas"].append(None)
    _expect_error(tmp_path, gt, res, "gt.json", "annotations[0]", "'areas'", "2 frames")


@pytest.mark.parametrize("which", ["gt", "res"])
def test_malformed_json(tmp_path, which):
    gt, res = _case()
    gt_path, res_path = _files(tmp_path, gt, res)
    bad = gt_path if which == "gt" else res_path
    text = open(bad).read()
    with open(bad, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(VISFormatError, match="malformed json") as info:
        evaluate(gt_path, res_path)
    assert bad in str(info.value)


def test_results_of_unknown_categories_are_dropped_with_a_count(tmp_path):
    gt, res = _case()
    extra = copy.deepcopy(res)
    for e in extra:
        e["category_id"] = 7
    with pytest.warns(UserWarning, match="dropped 2 result"):
        stats = evaluate(*_files(tmp_path, gt, res + extra))
    assert stats == evaluate(gt, res)  # dropped, not scored as false positives


def test_occlusion_needs_labels(tmp_path):
    gt, res = _case()
    del gt["annotations"][1]["occlusion"]
    _expect_error(tmp_path, gt, res, "gt.json", "annotations[1]", "id 2", "'occlusion'", occlusion=True)
    gt, res = _case()
    gt["annotations"][0]["occlusion"] = [None, None]
    _expect_error(tmp_path, gt, res, "annotations[0]", "'occlusion'", "no non-null label", occlusion=True)


def test_bad_occlusion_label(tmp_path):
    gt, res = _case()
    gt["annotations"][0]["occlusion"][0] = "partial"
    _expect_error(tmp_path, gt, res, "gt.json", "annotations[0]", "occlusion[0]", "partial")


def test_cli_reports_bad_input_with_status_2(tmp_path, capsys):
    gt, res = _case()
    res[0]["segmentations"][0] = mask_to_rle(np.ones((H, W + 2), np.uint8))
    gt_path, res_path = _files(tmp_path, gt, res)
    out_json = tmp_path / "metrics.json"
    assert vis_main(["eval", gt_path, res_path, "--json", str(out_json)]) == 2
    err = capsys.readouterr().err
    assert "res.json" in err and "entry 0" in err and "size" in err
    assert not out_json.exists()  # nothing written on failure


def test_unknown_implementation_name():
    gt, res = _case()
    with pytest.raises(ValueError, match="unknown evaluator implementation"):
        evaluate(gt, res, impl="official")
    json.dumps(gt)  # the fixture itself is valid json
