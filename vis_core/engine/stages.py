"""``vis stage``: the steps of a reproduction's DVC pipeline, driven by its ``params.yaml``.

A reproduction directory holds ``params.yaml``::

    profile: smoke                      # which entry of `profiles` runs (smoke | full)
    dataset: {name: synthetic-ovis, split: valid}   # label of the reproduced numbers in the report
    seeds: [0, 1]
    profiles:
      smoke:
        data: {kind: synthetic, preset: ovis, train_videos: 60, valid_videos: 20, ...}
        train: {idol: {<TrainConfig keys>}, minvis: {...}}       # base recipe per method
        infer: {min_size: null, scales: [...]}                   # test-time settings
        launcher: {nproc: 1}                                     # > 1: `torchrun --nproc_per_node N`
      full: {...}
    variants:                           # one entry per ablation row (+ ensemble members)
      baseline: {method: idol}
      quality:  {method: idol, model: {quality: {enabled: true}}}
      multiscale: {from: batchformer, infer: {scales: [720, 1080]}}
      ensemble: {ensemble: [multiscale, minvis_all]}

A variant is a method + config overrides on the profile's base recipe (one level: the variant's keys replace
the base's, dicts merged key by key), an inference-only variant of another's checkpoint (``from``), or a
result-level ensemble of other variants. Stages (run from the reproduction directory):

    vis stage data                                   -> data/manifest.json (+ synthetic data / held-out split)
    vis stage train  --variant V --seed S            -> runs/V/seedS/ (checkpoints, metrics.jsonl, config)
    vis stage infer  --variant V --seed S            -> outputs/V/seedS/results.json (+ timing.json)
    vis stage eval   --variant V --seed S            -> metrics/V/seedS.json
    vis stage submit --variant V --seed S            -> submission/results.zip (CodaLab format)
    vis stage qualitative --variant V --seed S       -> figures/qualitative.png
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vis_core.data.ytvis import load_annotations, load_json, save_json

__all__ = ["load_params", "resolve_train_config", "add_arguments", "main"]

MANIFEST = Path("data/manifest.json")


class StageError(RuntimeError):
    """A reproduction's params.yaml or inputs are not usable; the message names the file and key."""


# ---------------------------------------------------------------------------------------------- params
def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: params file not found (run `vis stage` from the reproduction directory)")
    params = yaml.safe_load(path.read_text()) or {}
    for key in ("profile", "profiles", "variants", "seeds"):
        if key not in params:
            raise StageError(f"{path}: missing key '{key}'")
    if params["profile"] not in params["profiles"]:
        raise StageError(f"{path}: profile {params['profile']!r} is not one of {sorted(params['profiles'])}")
    params["_path"] = str(path)
    return params


def profile_of(params: dict) -> dict:
    return params["profiles"][params["profile"]]


def variant_of(params: dict, name: str) -> dict:
    """A variant's spec, with the profile's own overrides for it (``profiles.<p>.variants.<name>``) on top:
    e.g. the multi-scale test sizes differ between the smoke and the full profile."""
    if name not in params["variants"]:
        raise StageError(f"{params['_path']}: variants: unknown variant {name!r}; known: {sorted(params['variants'])}")
    return merge(params["variants"][name], (profile_of(params).get("variants") or {}).get(name, {}))


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: dicts merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def manifest() -> dict:
    if not MANIFEST.is_file():
        raise StageError(f"{MANIFEST}: not found; run `vis stage data` first")
    return load_json(MANIFEST)


def _write_timing(out_dir: Path, stage: str, seconds: float) -> None:
    save_json({stage: round(seconds, 3)}, out_dir / "timing.json")


# ------------------------------------------------------------------------------------------------ data
def stage_data(params: dict) -> dict:
    """Synthetic profile: generate the dataset. Real profile: check the paths and hold out part of train
    for local evaluation (the official valid/test GT is server-only)."""
    spec = dict(profile_of(params)["data"])
    kind = spec.pop("kind", "synthetic")
    out = Path("data")
    if kind == "synthetic":
        from vis_core.data.synthetic import generate

        preset, seed = spec.pop("preset"), spec.pop("seed", 0)
        for key in ("frames", "objects"):
            if key in spec:
                spec[key] = tuple(spec[key])
        summary = generate(out, preset, seed, workers=min(2, os.cpu_count() or 1), **spec)
        paths = {
            "train_json": "data/train/instances.json", "train_images": "data/train/JPEGImages",
            "eval_json": "data/valid/instances.json", "eval_images": "data/valid/JPEGImages",
            "submit_json": "data/valid/instances.json", "submit_images": "data/valid/JPEGImages",
        }
        if "coco" in summary["splits"]:
            paths.update(coco_json=summary["splits"]["coco"]["json"], coco_images=str(out / "coco"))
    elif kind == "real":
        paths = _real_data(spec, out, params["_path"])
    else:
        raise StageError(f"{params['_path']}: profiles.{params['profile']}.data.kind must be synthetic or real")
    save_json(paths, MANIFEST, indent=1)
    return paths


def _real_data(spec: dict, out: Path, where: str) -> dict:
    for key in ("train_json", "train_images"):
        if not spec.get(key) or not Path(spec[key]).exists():
            raise StageError(f"{where}: data.{key}: {spec.get(key)!r} does not exist (point it at the dataset)")
    train = load_annotations(spec["train_json"])
    holdout_n = int(spec.get("holdout_videos", 0))
    ids = train.video_ids
    held = set(ids[-holdout_n:]) if holdout_n > 0 else set()  # the last videos by id: fixed, reproducible

    def subset(keep: set[int]) -> dict:
        raw = train.raw
        return {**raw, "videos": [v for v in raw["videos"] if v["id"] in keep],
                "annotations": [a for a in raw.get("annotations", []) if a["video_id"] in keep]}

    save_json(subset(set(ids) - held), out / "train" / "instances.json")
    save_json(subset(held), out / "eval" / "instances.json")
    paths = {"train_json": str(out / "train" / "instances.json"), "train_images": spec["train_images"],
             "eval_json": str(out / "eval" / "instances.json"), "eval_images": spec["train_images"],
             "submit_json": spec.get("submit_json", ""), "submit_images": spec.get("submit_images", "")}
    for key in ("coco_json", "coco_images"):
        if spec.get(key):
            paths[key] = spec[key]
    return paths


# ----------------------------------------------------------------------------------------------- train
def resolve_train_config(params: dict, variant: str, seed: int, paths: dict) -> list[dict]:
    """The ``TrainConfig`` dicts of one (variant, seed): one per training phase (e.g. COCO pseudo videos, then
    the challenge train set), the later ones initialised from the earlier ones."""
    spec = variant_of(params, variant)
    if "method" not in spec:
        raise StageError(f"{params['_path']}: variants.{variant} is not a trained variant (no 'method')")
    prof = profile_of(params)
    method = spec["method"]
    base = prof["train"].get(method)
    if base is None:
        raise StageError(f"{params['_path']}: profiles.{params['profile']}.train has no recipe for {method!r}")
    cfg = merge(base, {k: v for k, v in spec.items() if k in ("model", "solver", "data")})
    phases = cfg.pop("phases", None) or [{}]
    out_dir = Path("runs") / variant / f"seed{seed}"
    configs = []
    for i, phase in enumerate(phases):
        c = merge(cfg, phase)
        c["method"] = method
        c["seed"] = seed
        c["output_dir"] = str(out_dir if i == len(phases) - 1 else out_dir / f"phase{i}")
        data = c.setdefault("data", {})
        source = data.pop("source", "train")  # "train" (the VIS train set) or "coco" (pseudo videos)
        if f"{source}_json" not in paths:
            raise StageError(f"{params['_path']}: variants.{variant}: phase {i} reads data source {source!r}, "
                             f"which the data manifest lacks (set profiles.{params['profile']}.data.{source}_json)")
        data.setdefault("json", paths[f"{source}_json"])
        data.setdefault("image_root", paths[f"{source}_images"])
        if data.get("kind") == "coco_pseudo":
            data.setdefault("vis_json", paths["train_json"])  # label space of the COCO -> VIS category map
        if i > 0:
            c["init_weights"] = str(Path(configs[-1]["output_dir"]) / "model_final.pth")
        configs.append(c)
    return configs


def _same_config(run_dir: Path, cfg: dict) -> bool:
    saved = run_dir / "stage_config.json"
    return saved.is_file() and load_json(saved) == cfg


def stage_train(params: dict, variant: str, seed: int) -> Path:
    """Train every phase; a phase whose run dir holds the same config resumes from its last checkpoint."""
    from vis_core.engine.config import TrainConfig, from_dict
    from vis_core.engine.trainer import train

    paths = manifest()
    launcher = profile_of(params).get("launcher", {}) or {}
    nproc = int(launcher.get("nproc", 1))
    start = time.perf_counter()
    for cfg in resolve_train_config(params, variant, seed, paths):
        run_dir = Path(cfg["output_dir"])
        if (run_dir / "model_final.pth").is_file() and _same_config(run_dir, cfg):
            continue  # phase already done (an interrupted multi-phase stage restarted)
        if run_dir.exists() and not _same_config(run_dir, cfg):
            shutil.rmtree(run_dir)  # stale run with other settings: never resume across configs
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(cfg, run_dir / "stage_config.json", indent=1)
        if nproc > 1:
            cfg_file = run_dir / "train_config.yaml"
            cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
            cmd = ["torchrun", f"--nproc_per_node={nproc}", "-m", "vis_core.cli", "train",
                   "--config", str(cfg_file), "--resume"]
            subprocess.run(cmd, check=True)
        else:
            train(from_dict(TrainConfig, cfg, f"{params['_path']} variants.{variant}"), resume=True,
                  where=f"{params['_path']} variants.{variant}")
    out = Path("runs") / variant / f"seed{seed}"
    _write_timing(out, "train", time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------------------------- infer
def _checkpoint_variant(params: dict, variant: str) -> tuple[str, dict]:
    """The trained variant whose checkpoint ``variant`` runs, and the merged test-time settings."""
    spec = variant_of(params, variant)
    infer = merge(profile_of(params).get("infer", {}) or {}, spec.get("infer", {}))
    if "from" in spec:
        src, src_infer = _checkpoint_variant(params, spec["from"])
        return src, merge(src_infer, spec.get("infer", {}))
    return variant, infer


def stage_infer(params: dict, variant: str, seed: int, split: str = "eval") -> Path:
    from vis_core.engine.cli_infer import load_trained_method
    from vis_core.engine.infer import InferConfig, run_inference

    paths = manifest()
    spec = variant_of(params, variant)
    out_dir = Path("outputs") / variant / f"seed{seed}"
    out_name = "results.json" if split == "eval" else f"results_{split}.json"
    start = time.perf_counter()
    if "ensemble" in spec:
        from vis_core.tracking.ensemble import EnsembleConfig, ensemble_files

        members = [Path("outputs") / m / f"seed{seed}" / out_name for m in spec["ensemble"]]
        missing = [str(m) for m in members if not m.is_file()]
        if missing:
            raise StageError(f"variants.{variant}: ensemble members not inferred yet: {missing}")
        cfg = EnsembleConfig(**(spec.get("ensemble_config") or {}))
        ensemble_files(paths[f"{split}_json"], members, out_dir / out_name, spec.get("weights"), cfg)
    else:
        src, infer = _checkpoint_variant(params, variant)
        overrides = [f"model.{k}={json.dumps(v)}" for k, v in (infer.pop("model", {}) or {}).items()]
        threads = int(infer.pop("threads", 0))
        if threads:
            import torch

            torch.set_num_threads(threads)
        method = load_trained_method(Path("runs") / src / f"seed{seed}", overrides=overrides,
                                     device=infer.get("device", "cpu"))
        run_inference(method, paths[f"{split}_json"], paths[f"{split}_images"], out_dir / out_name,
                      InferConfig(**infer), timing_path=out_dir / f"timing_{split}.json")
    _write_timing(out_dir, "infer", time.perf_counter() - start)
    return out_dir / out_name


def stage_eval(params: dict, variant: str, seed: int) -> Path:
    from vis_core.eval import evaluate

    paths = manifest()
    gt = load_annotations(paths["eval_json"])
    stats = evaluate(gt, str(Path("outputs") / variant / f"seed{seed}" / "results.json"),
                     occlusion=gt.has_occlusion())
    return save_json(stats, Path("metrics") / variant / f"seed{seed}.json", indent=1)


def stage_submit(params: dict, variant: str, seed: int) -> Path:
    """CodaLab-ready zip of the submission split (full: the official valid set; smoke: the synthetic valid
    split, the same code path)."""
    from vis_core.eval import write_codalab_zip

    paths = manifest()
    if not paths.get("submit_json"):
        raise StageError("data manifest has no submit_json (set data.submit_json in params.yaml)")
    if paths["submit_json"] == paths["eval_json"]:
        results = Path("outputs") / variant / f"seed{seed}" / "results.json"
    else:
        results = stage_infer(params, variant, seed, split="submit")
    return write_codalab_zip(results, Path("submission") / "results.zip", gt=paths["submit_json"])


def stage_qualitative(params: dict, variant: str, seed: int, video_index: int = 0) -> Path:
    from vis_core.data.visualize import show_video

    paths = manifest()
    gt = load_annotations(paths["eval_json"])
    vid = gt.video_ids[min(video_index, len(gt.video_ids) - 1)]
    results = Path("outputs") / variant / f"seed{seed}" / "results.json"
    out = Path("figures") / "qualitative.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    show_video(gt, paths["eval_images"], vid, out=out, results=load_json(results), score_threshold=0.3)
    return out


# ------------------------------------------------------------------------------------------------- cli
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=("data", "train", "infer", "eval", "submit", "qualitative"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    from vis_core.data.ytvis import VISFormatError
    from vis_core.engine.config import ConfigError

    try:
        params = load_params(args.params)
        if args.stage == "data":
            out = stage_data(params)
        else:
            if args.variant is None:
                raise StageError(f"vis stage {args.stage}: --variant is required")
            fn = {"train": stage_train, "infer": stage_infer, "eval": stage_eval, "submit": stage_submit,
                  "qualitative": stage_qualitative}[args.stage]
            out = fn(params, args.variant, args.seed)
    except (StageError, ConfigError, VISFormatError) as e:
        print(f"vis stage {args.stage}: {e}", file=sys.stderr)
        return 1
    print(f"vis stage {args.stage}: {out}")
    return 0
