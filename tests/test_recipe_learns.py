"""The smoke recipe learns: pre-training + fine-tuning, at a reduced budget, beats the untrained model on a
held-out split by a wide margin. Runs the real stages (``vis stage pretrain/data/train/infer/eval``) on copies
of the committed params with fewer iterations, so a recipe or pipeline change that stops learning fails here.
Slow (a few minutes on 2 CPU cores): ``pytest -m slow``."""

import os
from pathlib import Path

import pytest
import yaml

from vis_core.engine import stages
from vis_core.engine.checkpoint import atomic_torch_save
from vis_core.engine.config import TrainConfig, from_dict
from vis_core.engine.infer import InferConfig, run_inference
from vis_core.engine.runs import load_trained_method
from vis_core.eval import evaluate
from vis_core.methods.registry import build_method

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _copy_params(src: Path, dst: Path, edit) -> Path:
    params = yaml.safe_load(src.read_text())
    edit(params)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst / "params.yaml"


def _scale_solver(recipe: dict, max_iter: int) -> None:
    recipe["solver"] = {**recipe["solver"], "max_iter": max_iter, "steps": [int(0.8 * max_iter)],
                        "warmup_iters": min(recipe["solver"].get("warmup_iters", 0), max_iter // 10)}
    recipe["checkpoint_period"] = max_iter


def test_pretrain_then_finetune_beats_the_untrained_model(tmp_path, monkeypatch):
    repros = tmp_path / "reproductions"

    def pretrain_edit(params):
        families = params["profiles"]["smoke"]["families"]
        _scale_solver(families["backbone"], 300)
        _scale_solver(families["mask2former"], 400)

    def repro_edit(params):
        smoke = params["profiles"]["smoke"]
        params["seeds"] = [0]
        smoke["data"]["valid_videos"] = 16
        smoke["launcher"]["jobs"] = 1
        _scale_solver(smoke["train"]["minvis"], 150)

    pre = _copy_params(ROOT / "reproductions/_pretrain/params.yaml", repros / "_pretrain", pretrain_edit)
    rep = _copy_params(ROOT / "reproductions/ovis_2nd/params.yaml", repros / "ovis_2nd", repro_edit)

    monkeypatch.chdir(pre.parent)
    pre_params = stages.load_params(pre)
    for family in ("backbone", "mask2former"):
        stages.stage_pretrain(pre_params, family)

    monkeypatch.chdir(rep.parent)
    params = stages.load_params(rep)
    stages.stage_data(params)
    paths = stages.manifest()
    # the baseline MinVIS row (no add-ons): the smoke recipe of the mask2former family, end to end
    params["variants"]["minvis_plain"] = {"method": "minvis"}
    run = stages.stage_train(params, "minvis_plain", seed=0)
    results = stages.stage_infer(params, "minvis_plain", seed=0)
    trained = evaluate(paths["eval_json"], str(results), occlusion=True)

    # the same architecture without any training, on the same held-out split
    untrained_dir = tmp_path / "untrained"
    untrained_dir.mkdir()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["init_weights"] = ""
    (untrained_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    method = build_method(from_dict(TrainConfig, cfg, "untrained"))
    atomic_torch_save({"model": method.state_dict()}, untrained_dir / "model_final.pth")
    baseline = load_trained_method(untrained_dir)
    out = run_inference(baseline, paths["eval_json"], paths["eval_images"], tmp_path / "untrained.json",
                        InferConfig(frame_batch=4), progress=False)
    untrained = evaluate(paths["eval_json"], str(out), occlusion=True)
    print(f"held-out AP: trained {trained['AP']:.3f} (light {trained['AP_light']:.3f}, heavy "
          f"{trained['AP_heavy']:.3f}), untrained {untrained['AP']:.3f}")
    assert untrained["AP"] < 0.02, untrained["AP"]
    assert trained["AP"] > 0.15 and trained["AP"] > untrained["AP"] + 0.12, (trained["AP"], untrained["AP"])
    assert trained["AP_light"] > trained["AP_heavy"]
    assert os.path.isfile(run / "model_final.pth")
