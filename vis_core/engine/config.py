"""Typed training configuration built from one section of a YAML file, plus ``--set key=value`` overrides.

A reproduction's ``params.yaml`` holds e.g.::

    train:
      method: mask2former_frame
      model: {num_classes: 40, num_queries: 100}
      data: {json: data/train.json, image_root: data/train/JPEGImages, num_frames: 2}
      solver: {lr: 1.0e-4, max_iter: 6000, steps: [4000], batch_size: 16, clip_grad: 0.01}
      output_dir: runs/m2f

and ``vis train --config params.yaml --section train --set model.num_queries=10`` builds a ``TrainConfig``
from it. There is exactly one level of override (the command line over the file section): no ``_BASE_``
chains. Unknown keys and values of the wrong type are errors naming the file, the section and the key.
``model`` is a plain dict here; the method registry turns it into the method's own dataclass (same checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vis_core.io.config import ConfigError, apply_overrides, from_dict, load_yaml_section, to_dict

__all__ = [
    "ConfigError",
    "DataConfig",
    "SolverConfig",
    "TrainConfig",
    "from_dict",
    "to_dict",
    "load_config",
    "load_yaml_section",
    "apply_overrides",
]


@dataclass
class DataConfig:
    """Training clips (see ``vis_core.data.clips.VISClipDataset``)."""

    # "vis" (video clips of an annotation file), "coco_pseudo" (pseudo videos from a COCO instance set),
    # "synthetic" (clips of videos rendered on the fly by the generator, a stream that is never repeated),
    # "synthetic_pseudo" (pseudo videos of synthetic still images rendered on the fly) or "synthetic_objects"
    # (object-centric synthetic images for backbone classification, the smoke profile's ImageNet)
    kind: str = "vis"
    json: str = ""  # YouTube-VIS / OVIS style annotation file (COCO instances file for coco_pseudo)
    image_root: str = ""  # folder holding <video>/<frame>.jpg as named in the json
    # synthetic kinds: the generator's preset, seed and knobs, e.g. {preset: ovis, seed: 0, height: 96}
    synthetic: dict = field(default_factory=dict)
    stream_length: int = 100_000  # synthetic kinds: distinct videos (images) in the stream, i.e. one epoch
    sampling: str = "clip"  # "pair" (IDOL key + reference frame) or "clip" (MinVIS/DVIS/VITA)
    num_frames: int = 2  # frames per training clip
    frame_range: int = 20  # max distance (frames) between the frames of a clip
    min_sizes: list[int] = field(default_factory=lambda: [288, 320, 352, 384, 416, 448, 480, 512])
    max_size: int = 768
    hflip: bool = True
    # IDOL's per-frame crop of video clips (vis_core.data.transforms.FrameCrop): the share of clips cropped and
    # the absolute range of the crop's height and width in source pixels (official: 0.5, [384, 600]); 0: off
    crop_prob: float = 0.0
    crop_size_range: list[int] = field(default_factory=lambda: [384, 600])
    num_workers: int = 0
    pseudo_mode: str = "crop_pair"  # coco_pseudo: "crop_pair" (IDOL, reports 000/001) or "rotate3" (SeqFormer)
    # coco_pseudo: COCO category id -> VIS category id (pairs); COCO categories not listed are dropped. Empty:
    # keep the COCO categories as they are.
    category_map: list[list[int]] = field(default_factory=list)
    vis_json: str = ""  # coco_pseudo: the VIS train json whose categories define the labels (with category_map)


@dataclass
class SolverConfig:
    """AdamW + step schedule (Mask2Former / IDOL recipe)."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0  # norm layers (Mask2Former: 0)
    weight_decay_embed: float = 0.0  # embeddings / position tables (Mask2Former: 0)
    backbone_multiplier: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_iter: int = 6000
    steps: list[int] = field(default_factory=list)  # iterations at which the LR is multiplied by gamma
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 1.0  # LR multiplier at iteration 0, linearly raised to 1 over warmup_iters
    clip_grad: float = 0.01  # max global grad norm (Mask2Former 0.01, IDOL 0.1); <= 0 disables
    batch_size: int = 16  # global batch (clips), split evenly over the DDP processes
    amp: bool = False  # mixed precision (float16 autocast + GradScaler); CUDA only, ignored on CPU


@dataclass
class TrainConfig:
    method: str = ""
    model: dict = field(default_factory=dict)  # the method's own options, checked by its config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    checkpoint_period: int = 1000
    checkpoint_keep: int = 0  # numbered checkpoints to keep besides last.pth; 0 keeps all
    log_period: int = 20
    seed: int = 0
    output_dir: str = "output"
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1, ...
    cpu_threads: int = 0  # torch intra-op threads per process; 0 keeps torch's default
    init_weights: str = ""  # checkpoint whose model weights initialise the method (e.g. COCO pre-training)
    find_unused_parameters: bool = False  # DDP option for methods with conditionally used heads


def load_config(
    path: str | Path, section: str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """``TrainConfig`` from ``section`` of the YAML file ``path`` with command-line ``overrides``."""
    data = apply_overrides(load_yaml_section(path, section), list(overrides or []))
    where = f"{path} [{section}]" if section else str(path)
    cfg = from_dict(TrainConfig, data, where)
    if not cfg.method:
        raise ConfigError(f"{where}: missing key 'method'")
    return cfg
