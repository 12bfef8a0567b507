"""``vis stage``: the steps of a reproduction's DVC pipeline, driven by its ``params.yaml``.

A reproduction directory holds ``params.yaml``::

    profile: smoke                      # which entry of `profiles` runs (smoke | full)
    dataset: {name: synthetic-ovis, split: valid}   # label of the reproduced numbers in the report
    seeds: [0, 1, 2]
    profiles:
      smoke:
        data: {kind: synthetic, preset: ovis, valid_videos: 60, ...}   # training clips are a generated stream
        pretrained: true                                         # start from reproductions/_pretrain
        train: {idol: {<TrainConfig keys>}, minvis: {...}}       # base recipe per method
        infer: {min_size: null, threads: 1}                      # test-time settings
        launcher: {nproc: 1, jobs: 3}        # nproc > 1: `torchrun --nproc_per_node N`; jobs: seeds at once
      full: {...}
    variants:                           # one entry per ablation row (+ ensemble members)
      baseline: {method: idol}
      quality:  {method: idol, model: {quality: {enabled: true}}}
      multiscale: {from: batchformer, infer: {scales: [720, 1080]}}
      ensemble: {ensemble: [multiscale, minvis_all]}

A variant is a method + config overrides on the profile's base recipe (one level: the variant's keys replace
the base's, dicts merged key by key), an inference-only variant of another's checkpoint (``from``), or a
result-level ensemble of other variants. What is trained, inferred and evaluated follows from the variants:
``dvc.yaml`` is generated from params.yaml (:mod:`vis_core.engine.pipeline`). Every stage first parses the
whole file strictly (:mod:`vis_core.engine.repro_params`): a misspelt or mistyped key anywhere fails at once,
naming the file, the variant or section and the key. Stages (run from the reproduction directory):

    vis stage data                           -> data/manifest.json (+ the stored eval split / held-out split)
    vis stage train  --variant V [--seed S]  -> runs/V/seedS/ (checkpoints, metrics.jsonl, config)
    vis stage infer  --variant V [--seed S]  -> outputs/V/seedS/results.json (+ timing.json; + results.soft.json,
                                                the soft masks, when a multi-scale variant reuses V's scale)
    vis stage eval   --variant V             -> metrics/V/seedS.json for every seed
    vis stage curve  --variant V             -> curves/V.json (AP vs fine-tuning iteration, from 0 = pre-trained)
    vis stage submit --variant V --seed S    -> submission/results.zip (CodaLab format)
    vis stage qualitative --variant V --seed S -> figures/qualitative.png (the most crowded, occluded video)
    vis stage pipeline [--check]             -> dvc.yaml, generated from params.yaml (--check: only compare)

Without ``--seed``, train / infer run every seed as concurrent processes (``launcher.jobs`` at a time, one torch
thread each; :mod:`vis_core.engine.jobs`). ``reproductions/_pretrain`` (same command, its own params.yaml)
holds ``vis stage pretrain --family F`` -> ``runs/F/``: the segmenter pre-training every variant of that family
fine-tunes from when the profile says ``pretrained: true``.
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

__all__ = ["load_params", "resolve_train_config", "pretraining", "add_arguments", "main"]

MANIFEST = Path("data/manifest.json")
PRETRAIN_DIR = "_pretrain"  # sibling of the reproduction directories
PRETRAIN_INFO = "pretrain.json"


class StageError(RuntimeError):
    """A reproduction's params.yaml or inputs are not usable; the message names the file and key."""


# ---------------------------------------------------------------------------------------------- params
def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read and check a reproduction's (or ``_pretrain``'s) params.yaml; errors name the file and key.

    Every key of the file is parsed strictly (:func:`vis_core.engine.repro_params.parse_params`) before any
    stage does work: a misspelt or mistyped key anywhere fails here, not hours later inside a training job.
    The stages read the plain mapping returned here (with ``_path``, the file it came from)."""
    from vis_core.engine.repro_params import parse_params
    from vis_core.io.config import ConfigError, load_yaml_section

    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: params file not found (run `vis stage` from the reproduction directory)")
    try:
        params = load_yaml_section(path)
    except ConfigError as exc:  # invalid YAML, or not a mapping
        raise StageError(str(exc)) from None
    parse_params(params, str(path))
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


def _launcher(params: dict) -> tuple[int, int]:
    """(processes per run for torchrun, runs at once): several seeds at once only for single-process runs."""
    launcher = profile_of(params).get("launcher", {}) or {}
    nproc = int(launcher.get("nproc", 1))
    jobs = int(launcher.get("jobs", len(params.get("seeds", [0])))) if nproc == 1 else 1
    return nproc, max(1, jobs)


# ------------------------------------------------------------------------------------------------ data
def stage_data(params: dict) -> dict:
    """Synthetic profile: write the fixed evaluation split (training clips are rendered on the fly from the
    generator, a stream no model can memorise). Real profile: check the paths and hold out part of train for
    local evaluation (the official valid/test GT is server-only)."""
    spec = dict(profile_of(params)["data"])
    kind = spec.pop("kind", "synthetic")
    out = Path("data")
    if kind == "synthetic":
        from vis_core.data.synthetic import generate

        stream = {k: v for k, v in spec.items() if k not in ("train_videos", "valid_videos")}
        preset, seed = spec.pop("preset"), spec.pop("seed", 0)
        for key in ("frames", "objects"):
            if key in spec:
                spec[key] = tuple(spec[key])
        valid = spec.pop("valid_videos", None)
        spec.pop("train_videos", None)
        generate(out, preset, seed, train_videos=0, valid_videos=valid, workers=min(2, os.cpu_count() or 1),
                 **spec)
        paths = {
            "train_stream": stream,
            "eval_json": "data/valid/instances.json", "eval_images": "data/valid/JPEGImages",
            "submit_json": "data/valid/instances.json", "submit_images": "data/valid/JPEGImages",
        }
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


# -------------------------------------------------------------------------------------------- pretrain
def pretrain_dir(params: dict) -> Path:
    """``reproductions/_pretrain`` seen from the reproduction directory that ``params`` belongs to."""
    return Path(params["_path"]).resolve().parent.parent / PRETRAIN_DIR


def pretraining(params: dict, family: str) -> dict:
    """What ``family``'s shared pre-training (``reproductions/_pretrain/runs/<family>``) left: ``weights`` (the
    checkpoint, as a path relative to the reproduction directory) and, when it trained here, ``model`` (its
    architecture, which the fine-tuning recipes of that family inherit). Its profile must be the
    reproduction's."""
    root = pretrain_dir(params)
    info_path = root / "runs" / family / PRETRAIN_INFO
    rel_root = Path(os.path.relpath(root, Path(params["_path"]).resolve().parent))
    if not info_path.is_file():
        raise StageError(f"{rel_root / 'runs' / family / PRETRAIN_INFO}: not found; the {family} pre-training has "
                         f"not run (`dvc repro` runs it: stage pretrain@{family} of {rel_root}/dvc.yaml)")
    info = load_json(info_path)
    if info.get("profile") != params["profile"]:
        raise StageError(f"{params['_path']}: profile {params['profile']!r}, but the shared pre-training in "
                         f"{rel_root}/params.yaml ran profile {info.get('profile')!r}: set both to the same")
    weights = Path(info["weights"])
    return {**info, "weights": str(weights if weights.is_absolute() else rel_root / weights)}


def _architecture(model: dict) -> dict:
    """A model config without the paths of weights it was initialised from (those belong to the run that
    loaded them, not to the architecture a fine-tuning inherits)."""
    model = copy.deepcopy(model)
    model.pop("backbone_weights", None)
    (model.get("backbone_kwargs") or {}).pop("weights", None)
    return model


def stage_pretrain(params: dict, family: str) -> Path:
    """Pre-train one segmenter family (run from ``reproductions/_pretrain``): train its recipe on pseudo videos
    of synthetic still images (smoke), or point at released weights (``weights:``, the full profile)."""
    from vis_core.engine.config import ConfigError

    prof = profile_of(params)
    families = prof.get("families") or {}
    if family not in families:
        raise StageError(f"{params['_path']}: profiles.{params['profile']}.families has no {family!r} "
                         f"(known: {sorted(families)})")
    spec = dict(families[family])
    out = Path("runs") / family
    info = {"family": family, "profile": params["profile"]}
    if "weights" in spec:
        weights = Path(spec["weights"])
        if not weights.is_file():
            raise StageError(f"{params['_path']}: profiles.{params['profile']}.families.{family}.weights: "
                             f"{weights}: file not found")
        out.mkdir(parents=True, exist_ok=True)
        save_json({**info, "weights": str(weights.resolve())}, out / PRETRAIN_INFO, indent=1)
        return out
    if "data" in prof:  # the synthetic generator every family pre-trains on (its still images, its objects)
        spec["data"] = merge({"kind": "synthetic_pseudo", "synthetic": prof["data"]}, spec.get("data", {}))
    cfg = {**spec, "output_dir": str(out), "seed": int(spec.get("seed", 0))}
    nproc = int((prof.get("launcher") or {}).get("nproc", 1))
    start = time.perf_counter()
    try:
        _train_run(cfg, nproc, f"{params['_path']} profiles.{params['profile']}.families.{family}")
    except ConfigError as exc:
        raise StageError(str(exc)) from None
    info.update(method=spec["method"], model=_architecture(spec.get("model", {})))
    if spec.get("data", {}).get("synthetic"):  # the label space every fine-tuning of this family must share
        from vis_core.data.synthetic_stream import synth_config_from_dict

        info["model"].setdefault("num_classes", len(synth_config_from_dict(spec["data"]["synthetic"])[0].shapes))
    weights = out / "model_final.pth"
    if family == "backbone":  # an ImageNet-style backbone: released as plain ``backbone.*`` tensors
        from vis_core.engine.checkpoint import export_weights

        weights = export_weights(weights, out / "backbone.pth", prefix="backbone.")
    save_json({**info, "weights": str(weights)}, out / PRETRAIN_INFO, indent=1)
    _write_timing(out, "pretrain", time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------------------------- train
TRAINED_KEYS = ("model", "solver", "data")  # what a trained variant puts on its method's recipe


def train_recipe(params: dict, variant: str) -> tuple[str, dict]:
    """(method, config) of a trained variant before its phases are expanded: the profile's recipe for its
    method with the variant's ``model`` / ``solver`` / ``data`` on top (dicts merged key by key). Shared by
    :func:`resolve_train_config` and the params parser, so both see the very same merge."""
    spec = variant_of(params, variant)
    if "method" not in spec:
        raise StageError(f"{params['_path']}: variants.{variant} is not a trained variant (no 'method')")
    method = spec["method"]
    base = (profile_of(params).get("train") or {}).get(method)
    if base is None:
        raise StageError(f"{params['_path']}: profiles.{params['profile']}.train has no recipe for {method!r}")
    return method, merge(base, {k: v for k, v in spec.items() if k in TRAINED_KEYS})


def resolve_train_config(params: dict, variant: str, seed: int, paths: dict) -> list[dict]:
    """The ``TrainConfig`` dicts of one (variant, seed): one per training phase (e.g. COCO pseudo videos, then
    the challenge train set), the later ones initialised from the earlier ones. When the profile says
    ``pretrained: true`` the first one starts from the shared pre-training of the method's segmenter family and
    inherits its architecture (the recipe's ``model`` keys go on top: dataset, add-ons)."""
    method, cfg = train_recipe(params, variant)
    prof = profile_of(params)
    init = None
    if prof.get("pretrained"):
        from vis_core.methods.registry import segmenter_family

        init = pretraining(params, segmenter_family(method))
        cfg["model"] = merge(init.get("model", {}), cfg.get("model", {}))  # the pre-trained architecture
        if "train_stream" in paths and "num_classes" in cfg["model"]:
            from vis_core.data.synthetic_stream import synth_config_from_dict

            k = len(synth_config_from_dict(paths["train_stream"])[0].shapes)
            if k != cfg["model"]["num_classes"]:
                raise StageError(f"{params['_path']}: profiles.{params['profile']}.data has {k} categories, the "
                                 f"shared pre-training {cfg['model']['num_classes']}: give both the same shapes")
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
        if source == "train" and "train_stream" in paths:
            data.setdefault("kind", "synthetic")
            data["synthetic"] = merge(paths["train_stream"], data.get("synthetic", {}))
        else:
            if f"{source}_json" not in paths:
                raise StageError(f"{params['_path']}: variants.{variant}: phase {i} reads data source {source!r}, "
                                 f"which the data manifest lacks (set profiles.{params['profile']}.data."
                                 f"{source}_json)")
            data.setdefault("json", paths[f"{source}_json"])
            data.setdefault("image_root", paths[f"{source}_images"])
            if data.get("kind") == "coco_pseudo":
                data.setdefault("vis_json", paths["train_json"])  # label space of the COCO -> VIS category map
        if i > 0:
            c["init_weights"] = str(Path(configs[-1]["output_dir"]) / "model_final.pth")
        elif init is not None:
            c["init_weights"] = init["weights"]
        configs.append(c)
    return configs


def _inputs_fingerprint(cfg: dict) -> str:
    """sha256 of what a run's outcome depends on besides its config: the vis_core source (model, losses,
    generator of on-the-fly training data) and the weights it starts from (checkpoint, backbone)."""
    import hashlib

    import vis_core

    h = hashlib.sha256()
    package = Path(vis_core.__file__).parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    model = cfg.get("model") or {}
    for weights in (cfg.get("init_weights"), model.get("backbone_weights"),
                    (model.get("backbone_kwargs") or {}).get("weights")):
        if weights and Path(weights).is_file():
            h.update(Path(weights).read_bytes())
    return h.hexdigest()


def _same_config(run_dir: Path, saved_cfg: dict) -> bool:
    saved = run_dir / "stage_config.json"
    return saved.is_file() and load_json(saved) == saved_cfg


def _train_run(cfg: dict, nproc: int, where: str) -> None:
    """Train one run directory (``cfg["output_dir"]``): skip it when finished with the same config and inputs,
    resume it when interrupted with the same config and inputs, start afresh (wiping it) otherwise (a changed
    config, code or starting checkpoint: never resume or keep a run across them)."""
    from vis_core.engine.config import TrainConfig, from_dict
    from vis_core.engine.trainer import train

    run_dir = Path(cfg["output_dir"])
    stamped = {**cfg, "_inputs_sha256": _inputs_fingerprint(cfg)}
    if (run_dir / "model_final.pth").is_file() and _same_config(run_dir, stamped):
        return
    if run_dir.exists() and not _same_config(run_dir, stamped):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(stamped, run_dir / "stage_config.json", indent=1)
    if nproc > 1:
        cfg_file = run_dir / "train_config.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "vis_core.cli",
               "train", "--config", str(cfg_file), "--resume"]
        subprocess.run(cmd, check=True)
    else:
        train(from_dict(TrainConfig, cfg, where), resume=True, where=where)


def stage_train(params: dict, variant: str, seed: int | None = None) -> Path:
    """Train every phase of (variant, seed); without a seed, every seed of params.yaml (concurrently)."""
    if seed is None:
        return _every_seed(params, "train", variant, _train_status)
    paths = manifest()
    nproc, _ = _launcher(params)
    start = time.perf_counter()
    for cfg in resolve_train_config(params, variant, seed, paths):
        _train_run(cfg, nproc, f"{params['_path']} variants.{variant}")
    out = Path("runs") / variant / f"seed{seed}"
    _write_timing(out, "train", time.perf_counter() - start)
    return out


def _train_status(variant: str, seed: int) -> str:
    """``it/max`` of a running job, from the last line of its training log."""
    log = Path("runs") / variant / f"seed{seed}" / "metrics.jsonl"
    try:
        last = log.read_text().strip().splitlines()[-1]
        return f"it {json.loads(last)['iteration']}"
    except (OSError, IndexError, ValueError, KeyError):
        return "starting"


def _infer_status(variant: str, seed: int) -> str:
    partial = Path("outputs") / variant / f"seed{seed}" / "results.json.partial.jsonl"
    try:
        return f"{sum(1 for _ in open(partial, encoding='utf-8'))} videos"
    except OSError:
        return "starting"


def _every_seed(params: dict, stage: str, variant: str, status) -> Path:
    """Run ``vis stage <stage> --variant V --seed S`` for every seed as concurrent jobs; logs go next to the
    outputs (``runs/V/seedS.log`` for train, ``outputs/V/seedS.log`` for infer)."""
    from vis_core.engine.jobs import Job, JobError, run_jobs, vis_command

    _, jobs = _launcher(params)
    root = Path("runs" if stage == "train" else "outputs") / variant
    todo = [Job(f"seed{s}", vis_command("stage", stage, "--params", params["_path"], "--variant", variant,
                                        "--seed", str(s)),
                root / f"seed{s}.log", status=lambda s=s: status(variant, s))
            for s in params["seeds"]]
    try:
        run_jobs(todo, jobs, f"{stage} {variant}")
    except JobError as exc:
        raise StageError(str(exc)) from None
    return root


# ----------------------------------------------------------------------------------------------- infer
def _checkpoint_variant(params: dict, variant: str) -> tuple[str, dict]:
    """The trained variant whose checkpoint ``variant`` runs, and the merged test-time settings."""
    spec = variant_of(params, variant)
    infer = merge(profile_of(params).get("infer", {}) or {}, spec.get("infer", {}))
    if "from" in spec:
        src, src_infer = _checkpoint_variant(params, spec["from"])
        return src, merge(src_infer, spec.get("infer", {}))
    return variant, infer


def _load_for_inference(params: dict, variant: str, seed: int, checkpoint: str | None = None):
    """(method, InferConfig) of a trained variant's run, with the variant's test-time settings applied."""
    from vis_core.engine.infer import InferConfig
    from vis_core.engine.runs import load_trained_method

    src, infer = _checkpoint_variant(params, variant)
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in (infer.pop("model", {}) or {}).items()]
    threads = int(infer.pop("threads", 0))
    if threads:
        import torch

        torch.set_num_threads(threads)
    method = load_trained_method(Path("runs") / src / f"seed{seed}", checkpoint=checkpoint, overrides=overrides,
                                 device=infer.get("device", "cpu"))
    return method, InferConfig(**infer)


def _soft_name(out_name: str) -> str:
    """The soft-mask sidecar next to a results json (``results.json`` -> ``results.soft.json``)."""
    return out_name.replace(".json", ".soft.json")


def _feeds_multiscale(params: dict, variant: str) -> bool:
    """Whether a multi-scale variant runs ``variant``'s checkpoint (``from: variant``, two scales or more):
    then ``variant``'s single-scale run also writes its soft masks, which that test reuses for its scale."""
    return any(variant_of(params, name).get("from") == variant
               and len(_checkpoint_variant(params, name)[1].get("scales") or []) > 1
               for name in params["variants"])


def _reused_scales(params: dict, variant: str, seed: int, gt, out_name: str, cfg) -> dict:
    """``{scale: {video_id: entries}}`` of the multi-scale test of ``variant`` that its ``from`` variant's own
    single-scale results already hold (same checkpoint and settings; ``infer.reusable_scales``), read with their
    soft masks from the sidecar in ``outputs/<from>/seedS`` (absent or of other levels: recomputed). The
    multi-scale stage depends on those outputs in dvc.yaml."""
    from vis_core.engine.infer import InferConfig, read_soft_results, reusable_scales

    spec = variant_of(params, variant)
    source = Path("outputs") / str(spec.get("from")) / f"seed{seed}" / _soft_name(out_name)
    if "from" not in spec or not cfg.scales or not source.is_file():
        return {}
    _, single = _checkpoint_variant(params, spec["from"])
    _, multi = _checkpoint_variant(params, variant)
    # the keys _load_for_inference takes out of the InferConfig: reusable_scales compares the rest
    outside = ("threads", "model")
    same = all(single.get(k) == multi.get(k) for k in outside)
    single_cfg = InferConfig(**{k: v for k, v in single.items() if k not in outside})
    scales = reusable_scales(gt, cfg, single_cfg) if same else []
    by_video = read_soft_results(source, cfg) if scales else None
    if by_video is None:
        return {}
    print(f"vis stage infer: {variant} seed {seed}: scale(s) {scales} from {source}", file=sys.stderr)
    return {s: by_video for s in scales}


def stage_infer(params: dict, variant: str, seed: int | None = None, split: str = "eval") -> Path:
    """Results json of (variant, seed) on ``split``; without a seed, every seed (concurrently)."""
    from vis_core.engine.infer import run_inference

    if seed is None:
        return _every_seed(params, "infer", variant, _infer_status)
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
        method, cfg = _load_for_inference(params, variant, seed)
        gt = load_annotations(paths[f"{split}_json"])
        feeds = len(cfg.scales) < 2 and _feeds_multiscale(params, variant)
        soft = out_dir / _soft_name(out_name) if feeds else None
        run_inference(method, gt, paths[f"{split}_images"], out_dir / out_name, cfg,
                      timing_path=out_dir / f"timing_{split}.json", progress=sys.stderr.isatty(),
                      reuse=_reused_scales(params, variant, seed, gt, out_name, cfg), soft_path=soft)
    _write_timing(out_dir, "infer", time.perf_counter() - start)
    return out_dir / out_name


def _evaluate(results: Path) -> dict:
    from vis_core.eval import evaluate

    gt = load_annotations(manifest()["eval_json"])
    return evaluate(gt, str(results), occlusion=gt.has_occlusion())


def stage_eval(params: dict, variant: str, seed: int | None = None) -> Path:
    """metrics/V/seedS.json for the given seed, or for every seed of params.yaml."""
    for s in params["seeds"] if seed is None else [seed]:
        stats = _evaluate(Path("outputs") / variant / f"seed{s}" / "results.json")
        save_json(stats, Path("metrics") / variant / f"seed{s}.json", indent=1)
    return Path("metrics") / variant


# ----------------------------------------------------------------------------------------------- curve
def curve_points(params: dict, variant: str, seed: int) -> list[tuple[int, str]]:
    """(fine-tuning iteration, checkpoint) pairs of a run: 0 = the pre-trained weights it started from, then
    every numbered checkpoint before the final one (the final AP is the variant's own metrics)."""
    from vis_core.engine.checkpoint import numbered_checkpoints

    run = Path("runs") / variant / f"seed{seed}"
    cfg = load_json(run / "stage_config.json")
    points = [(0, cfg["init_weights"])] if cfg.get("init_weights") else []
    final = int(cfg["solver"]["max_iter"])
    points += [(it, str(path)) for it, path in numbered_checkpoints(run) if it < final]
    return points


def stage_curve(params: dict, variant: str, seed: int | None = None, iteration: int | None = None) -> Path:
    """AP vs fine-tuning iteration of a trained variant (``curve.seeds``, default the first seed): every point
    of :func:`curve_points` is inferred and evaluated on the eval split as a concurrent job, the last point is
    the run's own final metrics. Writes ``curves/V.json``."""
    from vis_core.engine.infer import run_inference

    out_root = Path("curves") / variant
    if iteration is not None:  # one point (a job of the parent call below)
        ckpt = dict(curve_points(params, variant, seed))[iteration]
        method, cfg = _load_for_inference(params, variant, seed, checkpoint=ckpt)
        results = out_root / f"seed{seed}" / f"it{iteration}.json"
        run_inference(method, manifest()["eval_json"], manifest()["eval_images"], results, cfg, progress=False)
        save_json(_evaluate(results), results.with_suffix(".metrics.json"), indent=1)
        return results
    from vis_core.engine.jobs import Job, JobError, run_jobs, vis_command

    seeds = [seed] if seed is not None else (params.get("curve") or {}).get("seeds", params["seeds"][:1])
    todo, final = [], {}
    for s in seeds:
        for it, _ in curve_points(params, variant, s):
            todo.append(Job(f"seed{s}@{it}", vis_command("stage", "curve", "--params", params["_path"], "--variant",
                                                         variant, "--seed", str(s), "--iteration", str(it)),
                            out_root / f"seed{s}" / f"it{it}.log"))
        cfg = load_json(Path("runs") / variant / f"seed{s}" / "stage_config.json")
        final[s] = int(cfg["solver"]["max_iter"])
    try:
        run_jobs(todo, _launcher(params)[1], f"curve {variant}")
    except JobError as exc:
        raise StageError(str(exc)) from None
    points = []  # one flat list (seed, iteration, AP...): what `dvc plots` reads (vis_core.report.plots)
    for s in seeds:
        points += [{"seed": s, "iteration": it,
                    **_ap_keys(load_json(out_root / f"seed{s}" / f"it{it}.metrics.json"))}
                   for it, _ in curve_points(params, variant, s)]
        points.append({"seed": s, "iteration": final[s],
                       **_ap_keys(load_json(Path("metrics") / variant / f"seed{s}.json"))})
    return save_json({"variant": variant, "pretrained": bool(profile_of(params).get("pretrained")),
                      "points": points}, Path("curves") / f"{variant}.json", indent=1)


def _ap_keys(stats: dict) -> dict:
    return {k: stats[k] for k in ("AP", "AP50", "AP75", "AR10") if k in stats}


# ----------------------------------------------------------------------------------------- submit, show
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


def crowded_video(gt) -> int:
    """The eval video with the most instances, ties broken by the most severely occluded instance-frames (and
    then by the smaller id): what a qualitative figure of tracking under occlusion should show."""
    def key(vid: int):
        anns = gt.anns_by_video[vid]
        severe = sum(o == "severe_occlusion" for a in anns for o in (a.get("occlusion") or []))
        return (-len(anns), -severe, vid)

    return min(gt.video_ids, key=key)


def stage_qualitative(params: dict, variant: str, seed: int) -> Path:
    from vis_core.data.visualize import show_video

    paths = manifest()
    gt = load_annotations(paths["eval_json"])
    results = Path("outputs") / variant / f"seed{seed}" / "results.json"
    out = Path("figures") / "qualitative.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    show_video(gt, paths["eval_images"], crowded_video(gt), out=out, results=load_json(results),
               score_threshold=0.3, with_gt=True)
    return out


# ------------------------------------------------------------------------------------------------- cli
STAGES = ("data", "pretrain", "train", "infer", "eval", "curve", "submit", "qualitative", "pipeline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--family", default=None, help="pretrain: the segmenter family")
    parser.add_argument("--seed", type=int, default=None,
                        help="one seed (train / infer / eval / curve: default every seed; submit / qualitative: 0)")
    parser.add_argument("--iteration", type=int, default=None, help=argparse.SUPPRESS)  # one curve point
    parser.add_argument("--check", action="store_true",
                        help="pipeline: compare dvc.yaml with what params.yaml generates, write nothing")


def main(args: argparse.Namespace) -> int:
    from vis_core.data.ytvis import VISFormatError
    from vis_core.engine.config import ConfigError
    from vis_core.io.weights import UnsafeCheckpointError

    try:
        params = load_params(args.params)
        if args.stage == "data":
            out = stage_data(params)
        elif args.stage == "pipeline":
            from vis_core.engine.pipeline import write_pipeline

            out = write_pipeline(params, check=args.check)
        elif args.stage == "pretrain":
            if args.family is None:
                raise StageError("vis stage pretrain: --family is required")
            out = stage_pretrain(params, args.family)
        else:
            if args.variant is None:
                raise StageError(f"vis stage {args.stage}: --variant is required")
            if args.stage == "curve":
                out = stage_curve(params, args.variant, args.seed, args.iteration)
            elif args.stage in ("submit", "qualitative"):
                fn = stage_submit if args.stage == "submit" else stage_qualitative
                out = fn(params, args.variant, 0 if args.seed is None else args.seed)
            else:
                fn = {"train": stage_train, "infer": stage_infer, "eval": stage_eval}[args.stage]
                out = fn(params, args.variant, args.seed)
    except (StageError, ConfigError, VISFormatError, UnsafeCheckpointError) as e:
        print(f"vis stage {args.stage}: {e}", file=sys.stderr)
        return 1
    print(f"vis stage {args.stage}: {out}")
    return 0
