"""`vis eval` output: printed summary, --json keys, per-category numbers, CodaLab zip, 2022 challenge mAP."""

import json
import zipfile

import numpy as np
import pytest

from vis_core.cli import main as vis_main
from vis_core.data.ytvis import load_annotations, save_json
from vis_core.eval import challenge_2022_map, evaluate, write_codalab_zip
from vis_core.eval.synthetic_case import make_case

YTVIS_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
OVIS_KEYS = [
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AP_light",
    "AP_medium",
    "AP_heavy",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
    "AR_light",
    "AR_medium",
    "AR_heavy",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    gt, res = make_case(
        n_videos=3,
        n_frames=4,
        n_categories=3,
        crowded_objects=(3, 5),
        false_positives=3,
        occlusion=True,
        seed=3,
    )
    return str(save_json(gt, d / "gt.json")), str(save_json(res, d / "results.json")), gt, res


def test_cli_prints_official_summary_and_writes_json(files, tmp_path, capsys):
    gt_path, res_path, _, _ = files
    out = tmp_path / "metrics.json"
    assert vis_main(["eval", gt_path, res_path, "--json", str(out)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert len(lines) == 12
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    assert lines[6].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = ")
    metrics = json.loads(out.read_text())
    assert list(metrics) == YTVIS_KEYS
    assert all(0 <= v <= 1 or v == -1 for v in metrics.values())
    assert metrics == evaluate(gt_path, res_path)
    assert lines[0].endswith(f"{metrics['AP']:0.3f}")


def test_cli_occlusion_and_per_category(files, tmp_path, capsys):
    gt_path, res_path, gt, _ = files
    out = tmp_path / "metrics.json"
    assert vis_main(["eval", gt_path, res_path, "--occlusion", "--per-category", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| occ= heavy |" in text and "per category" in text
    metrics = json.loads(out.read_text())
    assert list(metrics) == OVIS_KEYS + ["per_category"]
    per_cat = metrics["per_category"]
    assert sorted(per_cat, key=int) == [str(c["id"]) for c in gt["categories"]]
    assert all(list(v) == ["AP", "AP50", "AP75", "AR100"] for v in per_cat.values())
    # the overall AP is the mean of the defined per-category APs (a mean over categories of means over
    # equally many IoU x recall cells)
    defined = [v["AP"] for v in per_cat.values() if v["AP"] > -1]
    assert metrics["AP"] == pytest.approx(np.mean(defined), abs=1e-12)


def test_cli_reference_implementation_gives_the_same_json(files, tmp_path):
    gt_path, res_path, _, _ = files
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert vis_main(["eval", gt_path, res_path, "--json", str(a)]) == 0
    assert vis_main(["eval", gt_path, res_path, "--json", str(b), "--impl", "reference"]) == 0
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_evaluate_takes_paths_dicts_and_loaded_annotations(files):
    gt_path, res_path, gt, res = files
    expected = evaluate(gt_path, res_path)
    assert evaluate(gt, res) == expected
    assert evaluate(load_annotations(gt_path), res_path) == expected


def test_codalab_zip_has_results_json_at_the_root(files, tmp_path):
    gt_path, res_path, _, res = files
    path = write_codalab_zip(res_path, tmp_path / "sub" / "results.zip", gt=gt_path)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["results.json"]
        assert json.loads(zf.read("results.json")) == res
    assert [p.name for p in path.parent.iterdir()] == ["results.zip"]  # no temp file left behind
    # a parsed list works too, and the zip evaluates like the original
    path2 = write_codalab_zip(res, tmp_path / "results2.zip")
    with zipfile.ZipFile(path2) as zf:
        assert evaluate(gt_path, json.loads(zf.read("results.json"))) == evaluate(gt_path, res_path)


def test_challenge_2022_map():
    # YouTube-VIS 2022: the mean of mAP on the short-video set and on the long-video set
    assert challenge_2022_map(0.6, 0.4) == pytest.approx(0.5)
    assert challenge_2022_map(0.0, 0.0) == 0.0
    for bad in (-1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            challenge_2022_map(bad, 0.3)
