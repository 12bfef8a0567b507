"""A reproduction's DVC pipeline, derived from its params.yaml: ``vis stage pipeline`` writes ``dvc.yaml``.

What is trained, inferred, ensembled and evaluated follows from the variants alone (a variant with ``method``
is trained, one with ``from`` is an inference-only variant of another's checkpoint, one with ``ensemble``
fuses other variants' results; every variant is evaluated), so no list in params.yaml repeats the variant
graph and no stage is written by hand. ``tests/test_pipeline_yaml.py`` checks that every committed
``dvc.yaml`` is exactly what its params.yaml generates; after editing the variants run

    cd reproductions/<name> && vis stage pipeline      # rewrites dvc.yaml (``--check``: only compare)

Stages depend on the params keys they read, through ``profiles.${profile}``: a training run on its method's
recipe (``profiles.${profile}.train.<method>``) and its own variant, inference on the profile's test settings,
and so on. Editing the full profile therefore leaves every smoke stage up to date (and the other way round),
and editing one method's recipe retrains only that method's variants.

Stages of a reproduction (``@`` entries are DVC ``foreach`` over literal mappings of the variants)::

    data -> train@V (trained V) -> infer@V -> infer_from@V (inference-only V, reusing its source's results
    where the settings allow) -> ensemble[_V] -> eval@V (every V) -> curve, tables, bench, qualitative, submit
    -> report

``reproductions/_pretrain`` gets ``backbone`` and ``pretrain@<family>`` for the families of its profile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["variant_groups", "reproduction_pipeline", "pretrain_pipeline", "render_pipeline", "write_pipeline"]

# the generator's source: training clips and the eval split are rendered by it, so its code is a dependency
GENERATOR = ["../../vis_core/data/synthetic.py", "../../vis_core/data/shapes.py"]
STREAM = [*GENERATOR, "../../vis_core/data/synthetic_stream.py"]


def _error(params: dict, msg: str) -> Exception:
    from vis_core.engine.stages import StageError

    return StageError(f"{params.get('_path', 'params.yaml')}: {msg}")


def variant_groups(params: dict) -> dict[str, dict[str, Any]]:
    """The variant graph: ``trained`` {V: {method, family}}, ``inference`` {V: {from}}, ``ensemble``
    {V: [members]} and ``evaluated`` [every V, in params order]."""
    from vis_core.methods.registry import segmenter_family

    groups: dict[str, Any] = {"trained": {}, "inference": {}, "ensemble": {}, "evaluated": []}
    for name, spec in params["variants"].items():
        if "method" in spec:
            groups["trained"][name] = {"method": spec["method"], "family": segmenter_family(spec["method"])}
        elif "from" in spec:
            groups["inference"][name] = {"from": spec["from"]}
        elif "ensemble" in spec:
            groups["ensemble"][name] = list(spec["ensemble"])
        else:
            raise _error(params, f"variants.{name}: needs one of 'method', 'from' or 'ensemble'")
        groups["evaluated"].append(name)
    return groups


def _checkpoint_of(params: dict, variant: str) -> str:
    """The trained variant whose runs ``variant`` (trained or inference-only) infers with."""
    spec = params["variants"][variant]
    return _checkpoint_of(params, spec["from"]) if "from" in spec else variant


def _profile_overrides(params: dict, groups: dict) -> list[str]:
    """``profiles.${profile}.variants`` for the inference-only stages when the active profile overrides variants.

    DVC lists one params set per ``foreach`` stage, so a per-profile override of a *trained* variant would make
    every training run depend on every override; per-profile overrides are therefore for inference-only
    variants (the test sizes of a multi-scale test differ between profiles), and a trained variant that needs
    another recipe per profile is written as its own variant."""
    overrides = params["profiles"][params["profile"]].get("variants") or {}
    for name in overrides:
        if name not in groups["inference"]:
            raise _error(params, f"profiles.{params['profile']}.variants.{name}: per-profile overrides are for "
                                 "inference-only variants (with 'from'); write a separate variant instead")
    return ["profiles.${profile}.variants"] if overrides else []


def _headline(params: dict) -> str:
    """The variant the qualitative figure and the submission show: the last one (the report's final row)."""
    return list(params["variants"])[-1]


def _bench_cmd(params: dict, trained: dict[str, dict]) -> tuple[str, list[str]]:
    """``vis bench`` over every method of the trained variants, each with its first trained variant's seed-0
    weights."""
    first: dict[str, str] = {}
    for name, spec in trained.items():
        first.setdefault(spec["method"], name)
    runs = " ".join(f"--run {m}=runs/{v}/seed0" for m, v in first.items())
    cmd = f"vis bench --methods {' '.join(first)} {runs} --lengths ${{bench.lengths}} --out bench/latency.json"
    return cmd, [f"runs/{v}" for v in first.values()]


def reproduction_pipeline(params: dict) -> dict:
    """The ``dvc.yaml`` mapping of a reproduction."""
    g = variant_groups(params)
    overrides = _profile_overrides(params, g)
    stages: dict[str, Any] = {
        "data": {"cmd": "vis stage data", "deps": list(GENERATOR),
                 "params": ["profile", "profiles.${profile}.data"], "outs": ["data"]},
        "train": {"foreach": g["trained"], "do": {
            "cmd": "vis stage train --variant ${key}",
            "deps": ["data/manifest.json", "../_pretrain/runs/${item.family}", *STREAM],
            "params": ["profile", "seeds", "profiles.${profile}.pretrained", "profiles.${profile}.launcher",
                       "profiles.${profile}.train.${item.method}", "variants.${key}"],
            "outs": [{"runs/${key}": {"persist": True}}]}},
        "infer": {"foreach": list(g["trained"]), "do": {
            "cmd": "vis stage infer --variant ${item}",
            "deps": ["data", "runs/${item}"],
            "params": ["profile", "seeds", "profiles.${profile}.infer", "variants.${item}"],
            "outs": ["outputs/${item}"]}},
    }
    if g["inference"]:
        sources = {v: {"run": _checkpoint_of(params, v), "source": s["from"]} for v, s in g["inference"].items()}
        stages["infer_from"] = {"foreach": sources, "do": {
            "cmd": "vis stage infer --variant ${key}",
            # the source's results: a scale of a multi-scale test that equals them is reused, not recomputed
            "deps": ["data", "runs/${item.run}", "outputs/${item.source}"],
            "params": ["profile", "seeds", "profiles.${profile}.infer", "variants.${key}",
                       "variants.${item.source}", *overrides],
            "outs": ["outputs/${key}"]}}
    for name, members in g["ensemble"].items():
        stages["ensemble" if len(g["ensemble"]) == 1 else f"ensemble_{name}"] = {
            "cmd": f"vis stage infer --variant {name}",
            "deps": ["data", *(f"outputs/{m}" for m in members)],
            "params": ["seeds", f"variants.{name}"],
            "outs": [f"outputs/{name}"]}
    stages["eval"] = {"foreach": g["evaluated"], "do": {
        "cmd": "vis stage eval --variant ${item}", "deps": ["data", "outputs/${item}"],
        "metrics": [{"metrics/${item}": {"cache": False}}]}}
    curve = (params.get("curve") or {}).get("variant", next(iter(g["trained"])))
    family = g["trained"][curve]["family"]
    stages["curve"] = {
        "cmd": f"vis stage curve --variant {curve}",
        "deps": ["data", f"runs/{curve}", f"metrics/{curve}", f"../_pretrain/runs/{family}"],
        "params": ["curve"], "outs": [{f"curves/{curve}.json": {"cache": False}}]}
    stages["tables"] = {"cmd": "vis report tables . --out tables", "deps": ["paper.yaml", "metrics"],
                        "params": ["profile", "dataset"], "outs": [{"tables": {"cache": False}}]}
    bench_cmd, bench_deps = _bench_cmd(params, g["trained"])
    stages["bench"] = {"cmd": bench_cmd, "deps": bench_deps, "params": ["bench"],
                       "outs": [{"bench/latency.json": {"cache": False}}]}
    headline = _headline(params)
    stages["qualitative"] = {"cmd": f"vis stage qualitative --variant {headline} --seed 0",
                             "deps": ["data", f"outputs/{headline}"],
                             "outs": [{"figures/qualitative.png": {"cache": False}}]}
    stages["submit"] = {"cmd": f"vis stage submit --variant {headline} --seed 0",
                        "deps": [f"outputs/{headline}"], "outs": ["submission/results.zip"]}
    stages["report"] = {"cmd": "vis report build . --out report",
                        "deps": ["paper.yaml", "metrics", "tables", "runs", f"curves/{curve}.json",
                                 "bench/latency.json", "figures/qualitative.png", "submission/results.zip"],
                        "params": ["profile", "dataset"], "outs": [{"report": {"cache": False}}]}
    plots = [
        {"ap_vs_finetuning_iteration": {"template": "linear", "x": "iteration",
                                         "y": {f"curves/{curve}.json": ["AP", "AP50", "AP75"]}}},
        {"ms_per_frame_vs_video_length": {"template": "scatter", "x": "T",
                                           "y": {"bench/latency.json": "ms_per_frame"}}},
        {"peak_rss_vs_video_length": {"template": "scatter", "x": "T",
                                       "y": {"bench/latency.json": "peak_rss_mb"}}},
    ]
    return {"stages": stages, "plots": plots}


def pretrain_pipeline(params: dict) -> dict:
    """The ``dvc.yaml`` mapping of ``reproductions/_pretrain``: the backbone, then every segmenter family."""
    families = [f for f in params["profiles"][params["profile"]]["families"] if f != "backbone"]
    common = ["profile", "profiles.${profile}.data", "profiles.${profile}.launcher"]
    return {"stages": {
        "backbone": {"cmd": "vis stage pretrain --family backbone", "deps": list(STREAM),
                     "params": [*common, "profiles.${profile}.families.backbone"],
                     "outs": [{"runs/backbone": {"persist": True}}]},
        "pretrain": {"foreach": families, "do": {
            "cmd": "vis stage pretrain --family ${item}", "deps": ["runs/backbone", *STREAM],
            "params": [*common, "profiles.${profile}.families.${item}"],
            "outs": [{"runs/${item}": {"persist": True}}]}},
    }}


def render_pipeline(params: dict) -> str:
    """The text of ``dvc.yaml`` for ``params`` (a reproduction's or ``_pretrain``'s)."""
    name = Path(params.get("_path", "params.yaml")).resolve().parent.name
    is_pretrain = "families" in params["profiles"][params["profile"]]
    pipeline = pretrain_pipeline(params) if is_pretrain else reproduction_pipeline(params)
    header = (f"# reproductions/{name}: GENERATED from params.yaml by `vis stage pipeline` (vis_core/engine/"
              "pipeline.py):\n# do not edit; edit params.yaml and rerun it (a test checks that the two agree).\n")
    if not is_pretrain:
        header += f"# Run from the repo root: dvc repro reproductions/{name}\n"
    return header + yaml.safe_dump(pipeline, sort_keys=False, width=120)


def write_pipeline(params: dict, check: bool = False) -> Path:
    """Write (or with ``check``, compare) the ``dvc.yaml`` next to the params file; a stale file with
    ``check`` raises naming it."""
    from vis_core.io.atomic import atomic_write_text

    path = Path(params.get("_path", "params.yaml")).parent / "dvc.yaml"
    text = render_pipeline(params)
    if check:
        if not path.is_file() or path.read_text() != text:
            raise _error(params, f"{os.fspath(path)} is not what params.yaml generates: run `vis stage pipeline` "
                                 "in that directory")
        return path
    atomic_write_text(path, text)
    return path
