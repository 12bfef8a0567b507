"""Every reproduction's dvc.yaml is what its params.yaml generates (vis_core.engine.pipeline)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vis_core.engine.pipeline import render_pipeline, variant_groups, write_pipeline
from vis_core.engine.stages import StageError, load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = sorted((ROOT / "reproductions").glob("*/params.yaml"))


def test_every_reproduction_is_found():
    names = {p.parent.name for p in PARAMS}
    assert {"_pretrain", "ovis_2nd", "ytvis22_long_1st"} <= names


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.parent.name)
def test_committed_dvc_yaml_is_the_generated_one(path):
    write_pipeline(load_params(path), check=True)  # raises naming the file when they differ


def _ovis() -> dict:
    return load_params(ROOT / "reproductions" / "ovis_2nd" / "params.yaml")


def test_stages_follow_the_variants():
    params = _ovis()
    groups = variant_groups(params)
    assert list(groups["trained"]) == ["baseline", "quality", "boundary", "batchformer", "minvis_all"]
    assert groups["inference"] == {"multiscale": {"from": "batchformer"}}
    assert groups["ensemble"] == {"ensemble": ["multiscale", "minvis_all"]}
    assert groups["evaluated"] == list(params["variants"])

    # a new row is a params entry: it is trained, inferred and evaluated without touching dvc.yaml by hand
    params = copy.deepcopy(params)
    params["variants"]["quality_at_test"] = {"method": "idol", "model": {"quality": {"enabled": True,
                                                                              "use_at_test": True}}}
    stages = yaml.safe_load(render_pipeline(params))["stages"]
    assert stages["train"]["foreach"]["quality_at_test"] == {"method": "idol", "family": "deformable_detr"}
    assert "quality_at_test" in stages["infer"]["foreach"] and "quality_at_test" in stages["eval"]["foreach"]


def test_stages_depend_on_the_keys_they_read():
    stages = yaml.safe_load(render_pipeline(_ovis()))["stages"]
    train = stages["train"]["do"]["params"]
    # one method's recipe, never the whole profile (the full profile or another method's recipe)
    assert "profiles.${profile}.train.${item.method}" in train
    assert all(not p.startswith("profiles.full") and p not in ("profiles", "profiles.${profile}",
                                                               "profiles.${profile}.train") for p in train)
    # per-profile test sizes of the multi-scale test touch only the inference-only variants
    assert "profiles.${profile}.variants" in stages["infer_from"]["do"]["params"]
    assert "profiles.${profile}.variants" not in train + stages["infer"]["do"]["params"]


def test_a_per_profile_override_of_a_trained_variant_is_refused():
    params = copy.deepcopy(_ovis())
    params["profiles"]["smoke"]["variants"]["quality"] = {"solver": {"max_iter": 10}}
    with pytest.raises(StageError, match=r"profiles.smoke.variants.quality: per-profile overrides are for "
                                         r"inference-only variants"):
        render_pipeline(params)


def test_write_pipeline_check_names_a_stale_file(tmp_path):
    params = _ovis()
    params["_path"] = str(tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(StageError, match="dvc.yaml is not what params.yaml generates"):
        write_pipeline(params, check=True)
    write_pipeline(params)
    write_pipeline(params, check=True)
