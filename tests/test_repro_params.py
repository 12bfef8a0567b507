"""The strict parse of a reproduction's params.yaml: every real file parses; an unknown, misspelt or mistyped key
anywhere fails at once (before any data, pre-training or model is needed) with one message naming the file, the
section and the key."""

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vis_core.engine import stages
from vis_core.engine.infer import InferConfig
from vis_core.engine.repro_params import (
    EnsembleVariant,
    InferenceVariant,
    InferSettings,
    ReproParams,
    TrainedVariant,
    parse_params,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = sorted((ROOT / "reproductions").glob("*/params.yaml"))
OVIS = ROOT / "reproductions" / "ovis_2nd" / "params.yaml"
PRETRAIN = ROOT / "reproductions" / "_pretrain" / "params.yaml"
FILE = "reproductions/ovis_2nd/params.yaml"


def _raw(path: Path = OVIS) -> dict:
    return yaml.safe_load(path.read_text())


def _error(edit, path: Path = OVIS, file: str = FILE) -> str:
    """The StageError message of the params at ``path`` after ``edit``."""
    raw = copy.deepcopy(_raw(path))
    edit(raw)
    with pytest.raises(stages.StageError) as info:
        parse_params(raw, file)
    return str(info.value)


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.parent.name)
def test_every_real_params_file_parses(path):
    params = stages.load_params(path)
    typed = parse_params(_raw(path), str(path))
    assert isinstance(typed, ReproParams) and typed.profile == params["profile"]
    assert set(typed.profiles) == set(params["profiles"])
    for name, variant in typed.variants.items():
        spec = params["variants"][name]
        kind = TrainedVariant if "method" in spec else InferenceVariant if "from" in spec else EnsembleVariant
        assert isinstance(variant, kind)


def test_variant_kinds_of_ovis():
    typed = parse_params(_raw(), FILE)
    assert typed.variants["quality"].model == {"quality": {"enabled": True}}
    assert typed.variants["multiscale"].from_ == "batchformer"
    assert typed.variants["ensemble"].ensemble == ["multiscale", "minvis_all"]
    assert typed.variants["ensemble"].ensemble_config.score_mode == "all_models"
    assert typed.profiles["smoke"].variants["multiscale"].infer == {"scales": [96, 128]}
    assert typed.profiles["smoke"].launcher.jobs == 3 and typed.profiles["full"].launcher.nproc == 8


def test_only_the_source_of_a_multiscale_test_writes_soft_masks():
    # its single-scale run stands for a scale of the multi-scale test, whose merge reads the soft masks
    params = stages.load_params(OVIS)
    feeds = [v for v in params["variants"] if stages._feeds_multiscale(params, v)]
    assert feeds == ["batchformer"]
    assert stages._soft_name("results.json") == "results.soft.json"


def test_the_multiscale_stage_reuses_a_scale_only_from_a_soft_sidecar(tmp_path, monkeypatch):
    from vis_core.data.ytvis import save_json, validate_annotations

    params = stages.load_params(OVIS)
    gt = validate_annotations({"videos": [{"id": 1, "width": 160, "height": 96, "length": 1,
                                           "file_names": ["v/0.jpg"]}],
                               "annotations": [], "categories": [{"id": 1, "name": "a"}]}, "gt.json")
    _, infer = stages._checkpoint_variant(params, "multiscale")
    multi = InferConfig(**{k: v for k, v in infer.items() if k not in ("threads", "model")})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "outputs" / "batchformer" / "seed0"
    out.mkdir(parents=True)
    save_json([], out / "results.json")  # binary results alone cannot stand for a scale of the soft merge
    assert stages._reused_scales(params, "multiscale", 0, gt, "results.json", multi) == {}
    entry = {"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [None], "soft_segmentations": [None]}
    save_json({"soft_levels": [0.3], "results": [entry]}, out / "results.soft.json")
    assert stages._reused_scales(params, "multiscale", 0, gt, "results.json", multi) == {}  # other levels
    save_json({"soft_levels": multi.soft_levels, "results": [entry]}, out / "results.soft.json")
    assert stages._reused_scales(params, "multiscale", 0, gt, "results.json", multi) == {96: {1: [entry]}}


def test_infer_settings_know_every_infer_config_field():
    known = {f.name for f in dataclasses.fields(InferSettings)}
    assert {f.name for f in dataclasses.fields(InferConfig)} <= known
    assert {"threads", "model"} <= known


@pytest.mark.parametrize("edit, expected", [
    # a misspelt key of the variant itself (once silently dropped by resolve_train_config)
    (lambda p: p["variants"]["quality"].update(modle={}), ["variants.quality", "unknown key 'modle'"]),
    # a misspelt key inside the method's config, checked merged on the profile's recipe
    (lambda p: p["variants"]["quality"].update(model={"quality": {"enabeld": True}}),
     ["variants.quality", "model.quality", "unknown key 'enabeld'"]),
    (lambda p: p["variants"]["quality"].update(solver={"lrr": 1.0}), ["variants.quality.solver", "'lrr'"]),
    (lambda p: p["variants"]["quality"].update(solver={"lr": "abc"}),
     ["variants.quality.solver.lr", "expected a number", "'abc'"]),
    (lambda p: p["variants"]["quality"].update(model={"quality": {"enabled": "yes"}}),
     ["variants.quality", "model.quality.enabled", "expected true/false"]),
    (lambda p: p["variants"]["minvis_all"].update(model={"quality": {"enabeld": True}}),
     ["variants.minvis_all", "model", "unknown key 'enabeld'"]),
    (lambda p: p["variants"]["multiscale"].update(infer={"scale": [96]}),
     ["variants.multiscale.infer", "unknown key 'scale'"]),
    (lambda p: p["variants"]["ensemble"].update(ensemble_config={"score_mod": "all_models"}),
     ["variants.ensemble.ensemble_config", "unknown key 'score_mod'"]),
    (lambda p: p["variants"]["quality"].update({"from": "baseline"}), ["variants.quality", "mixes variant kinds"]),
    (lambda p: p["variants"]["ensemble"].update(method="idol"), ["variants.ensemble", "mixes variant kinds"]),
    (lambda p: p["variants"]["ensemble"].update(ensemble=["multiscale", "nope"]), ["variants.ensemble", "'nope'"]),
    (lambda p: p["variants"].update(a={"from": "b"}, b={"from": "a"}), ["variants.a", "cycle"]),
    (lambda p: p.update(seeds=[0, "1"]), ["seeds[1]", "expected an integer"]),
    (lambda p: p.update(variant={}), ["unknown key 'variant'"]),
    (lambda p: p["profiles"]["smoke"]["infer"].update(threds=1), ["profiles.smoke.infer", "unknown key 'threds'"]),
    (lambda p: p["profiles"]["smoke"]["data"].update(heigth=96), ["profiles.smoke.data", "unknown key 'heigth'"]),
    (lambda p: p["profiles"]["smoke"]["launcher"].update(nprocs=1), ["profiles.smoke.launcher", "'nprocs'"]),
    (lambda p: p["profiles"]["smoke"]["train"]["idol"]["solver"].update(max_iters=5),
     ["profiles.smoke.train.idol.solver", "unknown key 'max_iters'"]),
    (lambda p: p["profiles"]["smoke"]["variants"].update(multiscal={"infer": {}}),
     ["profiles.smoke.variants", "'multiscal'"]),
    # the profile that does not run is checked too
    (lambda p: p["profiles"]["full"]["train"]["idol"]["phases"][0]["data"].update(knd="coco_pseudo"),
     ["profiles.full.train.idol.phases[0].data", "unknown key 'knd'"]),
])
def test_a_wrong_key_anywhere_names_file_section_and_key(edit, expected):
    message = _error(edit)
    assert message.startswith(f"{FILE}: "), message
    for part in expected:
        assert part in message, message


def test_a_wrong_key_in_the_pretraining_params_names_the_family():
    def edit(raw):
        raw["profiles"]["smoke"]["families"]["deformable_detr"]["model"]["hiden_dim"] = 64

    message = _error(edit, PRETRAIN, "reproductions/_pretrain/params.yaml")
    assert "reproductions/_pretrain/params.yaml: profiles.smoke.families.deformable_detr" in message
    assert "'hiden_dim'" in message


def test_the_variant_graph_is_not_repeated_in_params(tmp_path):
    """What is trained and evaluated follows from the variants (vis_core.engine.pipeline): a hand-written
    ``trained`` list, the old way, is an unknown key."""
    raw = _raw()
    raw["trained"] = {"minvis_all": "deformable_detr"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(stages.StageError, match="unknown key 'trained'"):
        stages.load_params(path)


def test_vis_stage_train_fails_at_once_on_a_misspelt_key(tmp_path):
    """`vis stage train` in a copy of the reproduction with no data, no pre-training and no runs: it fails in
    load_params, with the message and a non-zero exit code, and writes nothing."""
    repro = tmp_path / "reproductions" / "ovis_2nd"
    repro.mkdir(parents=True)
    (tmp_path / "reproductions" / "_pretrain").mkdir()
    shutil.copy(PRETRAIN, tmp_path / "reproductions" / "_pretrain" / "params.yaml")
    raw = _raw()
    raw["variants"]["quality"]["model"] = {"quality": {"enabeld": True}}
    (repro / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's vis_core
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "vis_core.cli", "stage", "train", "--variant", "quality",
                          "--seed", "0"], cwd=repro, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "params.yaml: variants.quality: model.quality: unknown key 'enabeld'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert time.perf_counter() - start < 60
    assert sorted(p.name for p in repro.iterdir()) == ["params.yaml"]  # no runs/, no data/
