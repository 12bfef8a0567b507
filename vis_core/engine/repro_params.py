"""Typed reproduction params: the dataclasses of a reproduction's (or ``_pretrain``'s) ``params.yaml`` and the
one strict parser :func:`vis_core.engine.stages.load_params` runs before any stage does work.

The layout (see :mod:`vis_core.engine.stages` for what each stage does with it)::

    ReproParams   profile, dataset {name, split, label}, seeds, curve {seeds, variant},
                  bench {lengths}, variants {name: Variant}, profiles {name: Profile}
    Profile       data (SyntheticData | RealData), pretrained, launcher {nproc, jobs}, infer (InferSettings),
                  variants (per-profile overrides of variants), train {method: recipe}, families (_pretrain)
    Variant       TrainedVariant (``method``), InferenceVariant (``from``) or EnsembleVariant (``ensemble``)

A variant's kind is decided by which of ``method`` / ``from`` / ``ensemble`` it has; a variant with several is
an error. Keys that are overrides merged onto something else (a variant's ``model`` / ``solver`` / ``data`` /
``infer``, a method's recipe) stay plain mappings here, since a dataclass would fill in defaults the merge must
not see; a profile's override of a variant is a variant of the same kind with every key optional. Overrides
are checked on their own and then as what they become: every (profile, variant) is merged exactly as the
stages merge it (:func:`~vis_core.engine.stages.train_recipe`, the ``from`` chain of
:func:`~vis_core.engine.stages._checkpoint_variant`) and parsed by the existing strict parsers:
:func:`vis_core.io.config.from_dict` for ``TrainConfig`` / ``InferConfig`` / ``EnsembleConfig`` and the
generator's keys, the method registry's config class for ``model``. Nothing here reads data, a manifest or a
pre-training from disk.

Every problem raises :class:`~vis_core.engine.stages.StageError` naming the file, the section (variant or
profile) and the key path, e.g.
``params.yaml: variants.quality: model.quality: unknown key 'enabeld' (known keys: enabled, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vis_core.data.synthetic import SynthConfig
from vis_core.engine.config import DataConfig, SolverConfig, TrainConfig
from vis_core.engine.infer import InferConfig
from vis_core.engine.stages import StageError, _checkpoint_variant, merge, train_recipe, variant_of
from vis_core.io.config import ConfigError, from_dict
from vis_core.tracking.ensemble import EnsembleConfig

__all__ = [
    "ReproParams", "Profile", "Dataset", "Curve", "Bench", "Launcher", "InferSettings", "SyntheticData",
    "RealData", "ReleasedWeights", "TrainedVariant", "InferenceVariant", "EnsembleVariant", "parse_params",
]


# ------------------------------------------------------------------------------------------------ sections
@dataclass
class Dataset:
    """``dataset``: the label of the reproduced numbers in the report."""

    name: str = ""
    split: str = ""
    label: str = ""


@dataclass
class Curve:
    """``curve``: AP vs fine-tuning iteration of one trained variant."""

    seeds: list[int] | None = None  # absent: the first seed
    variant: str = ""  # the plotted variant (read by vis_core.engine.pipeline; absent: the first trained one)


@dataclass
class Bench:
    """``bench``: the video lengths of ``vis bench --lengths ${bench.lengths}`` in dvc.yaml."""

    lengths: str | int = ""


@dataclass
class Launcher:
    """``launcher``: torchrun processes per run (``nproc``) and runs at once (``jobs``, default every seed)."""

    nproc: int = 1
    jobs: int | None = None


@dataclass
class InferSettings(InferConfig):
    """``infer``: every :class:`~vis_core.engine.infer.InferConfig` field (inherited, so fields added there are
    known here at once) plus the two keys the stage takes out before building the InferConfig."""

    threads: int = 0  # torch threads of the inference process (0: torch's default)
    model: dict | None = None  # test-time overrides of the trained run's ``model`` config (key -> value)


@dataclass(frozen=True)
class _StreamKeys(SynthConfig):
    """The keys of a synthetic generator spec (``preset``, ``seed`` and any :class:`SynthConfig` field) with
    their types; only used to check them (the preset's own values come from ``synth_config_from_dict``)."""

    seed: int = 0


@dataclass(frozen=True)
class _SyntheticDataKeys(_StreamKeys):
    """A reproduction's synthetic ``data`` section: the generator spec and its ``kind``."""

    kind: str = "synthetic"


@dataclass
class SyntheticData:
    """A synthetic data section: the generator config (the preset with the overrides) and seed, and the spec
    as written, which the data stage hands the training stream (``train_stream`` of the manifest)."""

    config: SynthConfig
    seed: int = 0
    stream: dict = field(default_factory=dict)


@dataclass
class RealData:
    """``data`` of kind ``real``: the dataset's files (the stage checks they exist when it runs)."""

    kind: str = "real"
    train_json: str = ""
    train_images: str = ""
    holdout_videos: int = 0  # the last train videos by id, held out for local evaluation
    submit_json: str = ""
    submit_images: str = ""
    coco_json: str = ""  # COCO pseudo-video phases (``data.source: coco``)
    coco_images: str = ""


@dataclass
class _PhaseData(DataConfig):
    """A recipe's or variant's ``data``: DataConfig keys plus ``source``, which the train stage takes out."""

    source: str = "train"  # "train" (the VIS train set / the synthetic stream) or e.g. "coco" (pseudo videos)


@dataclass
class ReleasedWeights:
    """A ``_pretrain`` family that points at released weights instead of training."""

    weights: str = ""


# ------------------------------------------------------------------------------------------------ variants
@dataclass
class TrainedVariant:
    """A trained row: ``method`` plus overrides on the profile's recipe for it (checked merged on it)."""

    method: str = ""
    model: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    infer: dict = field(default_factory=dict)  # its own test-time settings, on top of the profile's


@dataclass
class InferenceVariant:
    """An inference-only row: the checkpoint of another variant (``from``) with other test-time settings."""

    from_: str = ""  # ``from`` in params.yaml (a Python keyword)
    infer: dict = field(default_factory=dict)


@dataclass
class EnsembleVariant:
    """A result-level ensemble of other variants' results."""

    ensemble: list[str] = field(default_factory=list)
    ensemble_config: EnsembleConfig = field(default_factory=EnsembleConfig)
    weights: list[float] | None = None  # one per member (default: equal)


Variant = TrainedVariant | InferenceVariant | EnsembleVariant
KINDS: dict[str, type] = {"method": TrainedVariant, "from": InferenceVariant, "ensemble": EnsembleVariant}


# ---------------------------------------------------------------------------------------------- top level
@dataclass
class Profile:
    """One entry of ``profiles``. A reproduction's has ``data`` / ``infer`` / ``train`` (and ``variants``
    overrides); ``_pretrain``'s has ``families`` and the synthetic generator's ``data``."""

    data: SyntheticData | RealData | None = None
    pretrained: bool = False
    launcher: Launcher = field(default_factory=Launcher)
    infer: InferSettings = field(default_factory=InferSettings)
    variants: dict[str, Variant] | None = None  # overrides merged onto variants.<name> (fragments of its kind)
    train: dict[str, dict] = field(default_factory=dict)  # method -> TrainConfig keys (+ phases), checked merged
    families: dict[str, TrainConfig | ReleasedWeights] | None = None


@dataclass
class ReproParams:
    """A reproduction's params.yaml, or ``_pretrain``'s (only ``profile`` and ``profiles``)."""

    profile: str = ""
    profiles: dict[str, Profile] = field(default_factory=dict)
    dataset: Dataset = field(default_factory=Dataset)
    seeds: list[int] = field(default_factory=list)
    curve: Curve = field(default_factory=Curve)
    bench: Bench = field(default_factory=Bench)
    variants: dict[str, Variant] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- parser
def parse_params(raw: Any, file: str) -> ReproParams:
    """Parse a params.yaml mapping strictly: the first unknown, missing or mistyped key raises
    :class:`StageError` naming ``file``, the section and the key. Returns the typed params; ``raw`` is left
    untouched (the stages keep reading it)."""
    if not isinstance(raw, dict):
        raise StageError(f"{file}: expected a mapping at the top level, got {type(raw).__name__}")
    for key in ("profile", "profiles"):
        if key not in raw:
            raise StageError(f"{file}: missing key '{key}'")
    try:
        top = from_dict(ReproParams, _nulls_dropped(raw, "dataset", "curve"), file)
    except ConfigError as exc:
        # from_dict joins a nested key to `where` with a dot, which after a file name reads like its extension
        raise StageError(str(exc).replace(f"{file}.", f"{file}: ", 1)) from None
    if top.profile not in top.profiles:
        raise StageError(f"{file}: profile {top.profile!r} is not one of {sorted(top.profiles)}")
    top.variants = {name: _variant(spec, None, f"{file}: variants.{name}") for name, spec in top.variants.items()}
    top.profiles = {name: _profile(spec, top, f"{file}: profiles.{name}") for name, spec in top.profiles.items()}
    if not _pretraining(raw["profiles"][top.profile]):  # a reproduction has variants and seeds
        for key in ("variants", "seeds"):
            if key not in raw:
                raise StageError(f"{file}: missing key '{key}'")
        if not top.seeds:
            raise StageError(f"{file}: seeds: expected a non-empty list of integers, got {top.seeds!r}")
    for name, prof in top.profiles.items():
        if not _pretraining(raw["profiles"][name]):
            for variant in top.variants:
                _check_merged(raw, file, name, prof, variant, active=name == top.profile)
    return top


def _pretraining(profile: dict) -> bool:
    """``_pretrain``'s profiles hold ``families`` (of segmenter pre-trainings) instead of variants' recipes."""
    return "families" in profile


def _parse(cls: type, data: Any, where: str) -> Any:
    """``from_dict``, its ConfigError raised as the StageError every ``vis stage`` reports."""
    try:
        return from_dict(cls, data, where)
    except ConfigError as exc:
        raise StageError(str(exc)) from None


def _nulls_dropped(raw: dict, *keys: str) -> dict:
    """``raw`` without the null ones of ``keys``: sections the stages read as ``section or {}`` (null: the
    defaults). Typing them ``X | None`` instead would make from_dict report a typo inside one as a bare
    "is not a X | None", without the key."""
    return {k: v for k, v in raw.items() if not (k in keys and v is None)}


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StageError(f"{where}: expected a mapping, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- variants
def _variant(spec: Any, kind: type | None, where: str) -> Variant:
    """A variant (``kind`` None: decided by its keys), or a profile's override of one (``kind``: the variant's
    own, every key optional). Its fragments are checked on their own here, merged in :func:`_check_merged`."""
    spec = _mapping(spec, where)
    if kind is None:
        kind = _kind(spec, where)
    values = {("from_" if k == "from" else k): v for k, v in _nulls_dropped(spec, "ensemble_config").items()}
    variant = _parse(kind, values, where)
    if isinstance(variant, TrainedVariant):
        if "method" in spec:
            _method_entry(variant.method, f"{where}.method")
        _parse(SolverConfig, variant.solver, f"{where}.solver")
        _parse(_PhaseData, variant.data, f"{where}.data")
    if isinstance(variant, TrainedVariant | InferenceVariant):
        _parse(InferSettings, variant.infer, f"{where}.infer")
    return variant


def _kind(spec: dict, where: str) -> type:
    """The variant kind its keys say: ``method`` (trained), ``from`` (inference-only) or ``ensemble``."""
    marks = [key for key in KINDS if key in spec]
    if len(marks) > 1:
        raise StageError(f"{where}: mixes variant kinds ({', '.join(repr(k) for k in marks)}): a variant is "
                         f"trained ('method'), inference-only ('from') or an ensemble ('ensemble')")
    if not marks:
        raise StageError(f"{where}: a variant needs 'method' (trained), 'from' (inference-only from another "
                         f"variant's checkpoint) or 'ensemble' (a list of variants); keys: {sorted(spec)}")
    return KINDS[marks[0]]


def _method_entry(name: Any, where: str):
    """The registry entry of method ``name``."""
    from vis_core.methods.registry import get_method

    try:
        return get_method(name)
    except KeyError as exc:
        raise StageError(f"{where}: {exc.args[0]}") from None


def _method_config(method: str, model: Any, where: str) -> None:
    """``model`` parsed by the method's own config class, as ``build_method`` will parse it."""
    from vis_core.methods.registry import method_config_from_dict

    entry = _method_entry(method, f"{where}.method")
    if entry.config is None:
        return
    try:
        method_config_from_dict(entry.config, _mapping(model, f"{where}.model"), f"{where}: model")
    except ConfigError as exc:
        # some method configs already name their keys from "model" (e.g. IDOL's): say it once
        raise StageError(str(exc).replace(f"{where}: model: model", f"{where}: model", 1)) from None


# ---------------------------------------------------------------------------------------------- profiles
def _profile(raw: Any, top: ReproParams, where: str) -> Profile:
    """A profile: ``data`` by its kind, ``infer`` / ``launcher`` by from_dict, recipes and families checked on
    their own, variant overrides by the kind of the variant they override."""
    raw = dict(_mapping(raw, where))
    pretraining = _pretraining(raw)
    data = raw.get("data")
    if data is not None:
        raw["data"] = _data(data, pretraining, f"{where}.data")
    elif not pretraining:
        raise StageError(f"{where}: missing key 'data'")
    prof = _parse(Profile, _nulls_dropped(raw, "launcher", "infer"), where)
    for method, recipe in prof.train.items():
        _check_phases(recipe, method, prof.data, f"{where}.train.{method}")
    overrides = prof.variants or {}
    for name in overrides:
        if name not in top.variants:
            raise StageError(f"{where}.variants: no variant {name!r} to override (variants: {sorted(top.variants)})")
    prof.variants = {name: _variant(spec, type(top.variants[name]), f"{where}.variants.{name}")
                     for name, spec in overrides.items()}
    if prof.families is not None:
        prof.families = {name: _family(spec, name, data, f"{where}.families.{name}")
                         for name, spec in prof.families.items()}
    return prof


def _data(raw: Any, pretraining: bool, where: str) -> SyntheticData | RealData | None:
    """A reproduction's ``data`` (kind ``synthetic`` or ``real``), or ``_pretrain``'s synthetic generator spec
    (no kind: it becomes the ``synthetic`` of each family's data; empty when no family trains)."""
    raw = _mapping(raw, where)
    if pretraining:
        return _synthetic(raw, _StreamKeys, where) if raw else None
    kind = raw.get("kind", "synthetic")
    if kind == "real":
        return _parse(RealData, raw, where)
    if kind != "synthetic":
        raise StageError(f"{where}.kind must be synthetic or real, got {kind!r}")
    return _synthetic(raw, _SyntheticDataKeys, where)


def _synthetic(spec: Any, keys: type, where: str) -> SyntheticData:
    """A synthetic generator spec: its keys and their types (``keys``, a SynthConfig subclass), then the
    preset with these overrides, exactly as the training stream builds it."""
    from vis_core.data.synthetic_stream import synth_config_from_dict

    _parse(keys, _mapping(spec, where), where)
    try:
        config, seed = synth_config_from_dict({k: v for k, v in spec.items() if k != "kind"})
    except (TypeError, ValueError) as exc:
        raise StageError(f"{where}: {exc}") from None
    # what the data stage writes as the manifest's train_stream: the spec without the stored splits' sizes
    stream = {k: v for k, v in spec.items() if k not in ("kind", "train_videos", "valid_videos")}
    return SyntheticData(config, seed, stream)


def _sources(data: SyntheticData | RealData | None) -> set[str]:
    """The ``data.source`` values the data manifest of ``data`` can serve (``<source>_json`` / ``_images``)."""
    if isinstance(data, RealData) and data.coco_json:
        return {"train", "eval", "submit", "coco"}
    return {"train", "eval", "submit"}


def _check_phases(recipe: Any, method: str, data: SyntheticData | RealData | None, where: str) -> None:
    """A recipe (or a trained variant merged on one): every phase merged as ``resolve_train_config`` merges it
    is a TrainConfig, its ``model`` the method's config, its synthetic stream a generator spec."""
    cfg = dict(_mapping(recipe, where))
    for key in ("method", "seed", "output_dir"):  # resolve_train_config sets these: the recipe's are dropped
        if key in cfg:
            raise StageError(f"{where}: key {key!r} is set by the train stage (from the variant / --seed), "
                             f"remove it")
    phases = cfg.pop("phases", None) or [{}]
    if not isinstance(phases, list):
        raise StageError(f"{where}.phases: expected a list of mappings, got {phases!r}")
    for i, phase in enumerate(phases):
        at = f"{where}.phases[{i}]" if len(phases) > 1 else where
        merged = merge(cfg, _mapping(phase, at))
        data_spec = dict(_mapping(merged.get("data", {}), f"{at}.data"))
        source = data_spec.pop("source", "train")
        if source not in _sources(data):
            raise StageError(f"{at}.data.source: {source!r} is not a source of the profile's data "
                             f"(one of {sorted(_sources(data))}; coco needs data.coco_json)")
        if source == "train" and isinstance(data, SyntheticData):  # the stream, as resolve_train_config fills it
            data_spec.setdefault("kind", "synthetic")
            _synthetic(merge(data.stream, data_spec.get("synthetic", {})), _StreamKeys, f"{at}.data.synthetic")
        _parse(TrainConfig, {**merged, "data": data_spec, "method": method}, at)
        _method_config(method, merged.get("model", {}), at)


def _family(raw: Any, name: str, prof_data: Any, where: str) -> TrainConfig | ReleasedWeights:
    """A ``_pretrain`` family: released ``weights``, or a training run of a method of that family (its data
    gets the profile's generator spec as ``synthetic``, as ``stage_pretrain`` gives it)."""
    from vis_core.methods.registry import segmenter_family

    spec = _mapping(raw, where)
    if "weights" in spec:
        return _parse(ReleasedWeights, spec, where)
    if "method" not in spec:
        raise StageError(f"{where}: missing key 'method' (or 'weights': released weights instead of training)")
    if "output_dir" in spec:
        raise StageError(f"{where}: key 'output_dir' is set by the pretrain stage (runs/{name}), remove it")
    data = _mapping(spec.get("data", {}), f"{where}.data")
    if prof_data is not None:
        data = merge({"kind": "synthetic_pseudo", "synthetic": prof_data}, data)
    if str(data.get("kind", "")).startswith("synthetic"):
        _synthetic(data.get("synthetic", {}), _StreamKeys, f"{where}.data.synthetic")
    cfg = _parse(TrainConfig, {**spec, "data": data, "output_dir": f"runs/{name}"}, where)
    _method_config(cfg.method, cfg.model, where)
    try:
        family = segmenter_family(cfg.method)
    except KeyError:
        family = None
    if family != name:
        raise StageError(f"{where}.method: {cfg.method!r} is of family {family!r}, not {name!r} (the "
                         f"reproductions look the pre-training of a family up by its name)")
    return cfg


# ------------------------------------------------------------------------------------ merged, per profile
def _check_merged(raw: dict, file: str, profile: str, prof: Profile, name: str, active: bool) -> None:
    """Variant ``name`` as the stages see it under ``profile`` (its profile overrides merged in): its kind, the
    variants it refers to, its training config per phase and its test-time settings."""
    view = {**raw, "profile": profile, "_path": file}
    where = f"{file}: variants.{name}" + ("" if active else f" (profile {profile})")
    spec = variant_of(view, name)
    variant = _variant(spec, None, where)
    if isinstance(variant, EnsembleVariant):
        _check_ensemble(variant, view, name, where)
        return
    if isinstance(variant, TrainedVariant):
        method, cfg = train_recipe(view, name)
        _check_phases(cfg, method, prof.data, where)
    source = _checkpoint_source(view, name, where)
    _, infer = _checkpoint_variant(view, name)
    settings = _parse(InferSettings, infer, f"{where}.infer")
    if settings.model:  # test-time overrides of the source run's model config (key by key, as the stage does)
        method, cfg = train_recipe(view, source)
        _method_config(method, {**(cfg.get("model") or {}), **settings.model}, f"{where}.infer")


def _checkpoint_source(view: dict, name: str, where: str) -> str:
    """The trained variant whose checkpoint ``name`` runs, following ``from`` (no unknown name, no cycle)."""
    chain = [name]
    spec = variant_of(view, name)
    while "from" in spec:
        src = spec["from"]
        if src not in view["variants"]:
            raise StageError(f"{where}: from: unknown variant {src!r}; known: {sorted(view['variants'])}")
        if src in chain:
            raise StageError(f"{where}: from: a cycle {' -> '.join([*chain, src])}")
        chain.append(src)
        spec = variant_of(view, src)
    if "method" not in spec:
        raise StageError(f"{where}: from: {chain[-1]!r} is not a trained variant (its checkpoint is what runs)")
    return chain[-1]


def _check_ensemble(variant: EnsembleVariant, view: dict, name: str, where: str) -> None:
    """Members: existing variants other than itself; weights: one per member."""
    if not variant.ensemble:
        raise StageError(f"{where}: ensemble: expected a non-empty list of variants")
    for member in variant.ensemble:
        if member not in view["variants"] or member == name:
            raise StageError(f"{where}: ensemble: {member!r} is not another variant (known: "
                             f"{sorted(view['variants'])})")
    if variant.weights is not None and len(variant.weights) != len(variant.ensemble):
        raise StageError(f"{where}: weights: {len(variant.weights)} weights for {len(variant.ensemble)} members")

