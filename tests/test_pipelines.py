"""The reproductions' DVC pipelines: the literal `dvc repro reproductions/<name>` target, the full profile's
stage commands (dry run) and the full-profile training configs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vis_core.engine import stages
from vis_core.engine.config import TrainConfig, from_dict
from vis_core.engine.pipeline import variant_groups
from vis_core.methods.registry import get_method, method_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
# reproductions (each with a root stage and a report); `_pretrain` is the shared pre-training they depend on
REPROS = sorted(p.parent.name for p in (ROOT / "reproductions").glob("*/dvc.yaml") if not p.parent.name.startswith("_"))
SHARED = sorted(p.parent.name for p in (ROOT / "reproductions").glob("_*/dvc.yaml"))
DVC = str(Path(sys.executable).with_name("dvc"))


def test_every_reproduction_has_a_root_stage_named_by_its_path():
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert REPROS, "no reproductions found"
    for name in REPROS:
        stage = root[f"reproductions/{name}"]
        assert stage["deps"] == [f"reproductions/{name}/report"]
        assert list(stage["outs"][0]) == [f"reports/{name}"]


def _copy_repro(tmp_path: Path, name: str, profile: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "reproductions").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    for other in REPROS + SHARED:  # the root dvc.yaml names every reproduction; they depend on _pretrain
        shutil.copytree(ROOT / "reproductions" / other, repo / "reproductions" / other,
                        ignore=shutil.ignore_patterns("data", "runs", "outputs", "report", "dvc.lock", "*.png"))
    for params_path in (repo / "reproductions" / name / "params.yaml", repo / "reproductions/_pretrain/params.yaml"):
        params = yaml.safe_load(params_path.read_text())
        params["profile"] = profile
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    return repo


def _touch_outputs(repo: Path) -> None:
    """Create every declared output so that `dvc repro --dry` can walk the whole graph (a dry run does not
    simulate outputs of earlier stages)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            for out in stage.outs:
                path = Path(out.fs_path)
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "results.json").touch()


@pytest.mark.parametrize("name", REPROS)
def test_full_profile_dry_run_lists_every_stage_command(tmp_path, name):
    repo = _copy_repro(tmp_path, name, "full")
    _touch_outputs(repo)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([DVC, "repro", "--dry", "--force", f"reproductions/{name}"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    groups = variant_groups(stages.load_params(repo / "reproductions" / name / "params.yaml"))
    expected = ["vis stage data", "vis stage pretrain --family backbone", "vis stage infer --variant ensemble",
                "vis stage curve --variant baseline"]
    expected += [f"vis stage pretrain --family {t['family']}" for t in groups["trained"].values()]
    expected += [f"vis stage train --variant {v}" for v in groups["trained"]]
    expected += [f"vis stage infer --variant {v}" for v in groups["trained"]]
    expected += [f"vis stage eval --variant {v}" for v in groups["evaluated"]]
    expected += ["vis report build . --out report", "vis stage submit --variant ensemble --seed 0",
                 f"vis report publish reproductions/{name}/report reports/{name}"]
    missing = [cmd for cmd in expected if f"> {cmd}" not in out.stdout]
    assert not missing, f"stage commands missing from the dry run: {missing}"


@pytest.mark.parametrize("name", REPROS)
def test_full_profile_training_configs_build(name):
    params = stages.load_params(ROOT / "reproductions" / name / "params.yaml")
    params["profile"] = "full"
    paths = {k: f"/datasets/{k}" for k in ("train_json", "train_images", "coco_json", "coco_images")}
    for variant in variant_groups(params)["trained"]:
        phases = stages.resolve_train_config(params, variant, 0, paths)
        assert len(phases) == 2, "full recipe: COCO pseudo videos, then the challenge train set"
        assert phases[0]["data"]["kind"] == "coco_pseudo" and phases[1]["init_weights"].endswith("model_final.pth")
        for cfg_dict in phases:
            cfg = from_dict(TrainConfig, cfg_dict, f"{name} {variant}")
            assert cfg.solver.lr == 1e-4 and cfg.solver.batch_size in (8, 16)
            entry = get_method(cfg.method)
            model_cfg = method_config_from_dict(entry.config, cfg.model)
            assert getattr(model_cfg, "preset", "full") == "full"


def _fake_pretraining(params, family):
    return {"family": family, "profile": params["profile"], "weights": f"../_pretrain/runs/{family}/w.pth",
            "model": {"preset": "tiny", "hidden_dim": 64}}


def test_smoke_variants_differ_only_by_config(monkeypatch):
    """An ablation row is a params entry: trained variants of one method share the recipe except `model`, and
    every one starts from its family's shared pre-training, whose architecture it inherits."""
    monkeypatch.setattr(stages, "pretraining", _fake_pretraining)
    for name in REPROS:
        params = stages.load_params(ROOT / "reproductions" / name / "params.yaml")
        paths = {"train_stream": {"preset": "ovis", "seed": 0}}
        trained = variant_groups(params)["trained"]
        resolved = {v: stages.resolve_train_config(params, v, 0, paths)[-1] for v in trained}
        by_method: dict[str, list[dict]] = {}
        for variant, cfg in resolved.items():
            family = trained[variant]["family"]
            assert cfg["init_weights"] == f"../_pretrain/runs/{family}/w.pth"
            assert cfg["model"]["hidden_dim"] == 64 and cfg["data"]["kind"] == "synthetic"
            by_method.setdefault(cfg["method"], []).append(cfg)
        for cfgs in by_method.values():
            strip = [{k: v for k, v in c.items() if k not in ("model", "output_dir")} for c in cfgs]
            assert all(s == strip[0] for s in strip)


def test_pretrain_params_build_every_family():
    params = stages.load_params(ROOT / "reproductions" / "_pretrain" / "params.yaml")
    for family, spec in params["profiles"]["smoke"]["families"].items():
        entry = get_method(spec["method"])
        assert entry.factory.segmenter_family == family
        cfg = from_dict(TrainConfig, {**spec, "output_dir": "x"}, family)
        model = dict(cfg.model)
        model.pop("backbone_weights", None)
        model.get("backbone_kwargs", {}).pop("weights", None)
        method_config_from_dict(entry.config, {**model, "num_classes": 10})
    assert set(params["profiles"]["full"]["families"]) == set(params["profiles"]["smoke"]["families"])


@pytest.mark.parametrize(("name", "max_size"), [("ovis_2nd", 1333), ("ytvis22_long_1st", 768)])
def test_full_idol_recipes_follow_the_official_code(name, max_size):
    """VNext IDOL: SOLVER.CLIP_GRADIENTS CLIP_VALUE 0.01 (full model, L2), fp32, the per-frame crop (384, 600)
    of half the video clips; max_size 768 in its YouTube-VIS 2022 config. MinVIS keeps Mask2Former's AMP."""
    params = stages.load_params(ROOT / "reproductions" / name / "params.yaml")
    params["profile"] = "full"
    paths = {k: f"/datasets/{k}" for k in ("train_json", "train_images", "coco_json", "coco_images")}
    for variant, spec in variant_groups(params)["trained"].items():
        video = from_dict(TrainConfig, stages.resolve_train_config(params, variant, 0, paths)[-1], variant)
        if spec["method"] == "idol":
            assert video.solver.clip_grad == 0.01 and video.solver.amp is False
            assert video.data.crop_prob == 0.5 and video.data.crop_size_range == [384, 600]
            assert video.data.max_size == max_size
        else:
            assert video.solver.amp is True and video.data.crop_prob == 0.0
