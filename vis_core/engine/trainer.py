"""Iteration-based training loop for registered methods (single process or DDP under ``torchrun``).

One iteration: take the next global batch of clips (this process's share), ``loss_dict = method(batch)``, sum,
backward (float16 autocast + GradScaler when ``solver.amp`` on CUDA), clip the global gradient norm
(``solver.clip_grad``), AdamW step, per-iteration LR schedule step.

Determinism and resume. The data order is a function of ``(seed, position)`` only: the sampler walks through
epoch permutations seeded by ``seed + epoch``, and every sample is loaded with python/numpy/torch RNGs seeded
from ``(seed, position)`` (so augmentation does not depend on workers, prefetching or interruptions). A
checkpoint stores model, optimizer, LR scheduler, GradScaler, the iteration, the sampler position and the RNG
states of every process; resuming from it continues bit-identically on CPU (``tests/test_trainer.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vis_core.engine import distributed as du
from vis_core.engine.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_model_weights,
    restore_rng_state,
    unwrap_model,
)
from vis_core.engine.config import ConfigError, TrainConfig, to_dict
from vis_core.engine.metrics_log import MetricsLogger
from vis_core.engine.optim import build_lr_scheduler, build_optimizer
from vis_core.methods.base import VISMethod

__all__ = ["Trainer", "TrainingBatchSampler", "SeededSampleDataset", "seed_all", "move_to_device", "train"]

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sample_seed(seed: int, position: int) -> int:
    # a stable 63-bit mix of (seed, position): independent of process, worker and python hash seed
    return zlib.crc32(f"{seed}:{position}".encode()) * 2654435761 % 2**63


class TrainingBatchSampler:
    """Infinite stream of this process's share of every global batch, as ``(position, index)`` pairs.

    Position ``p`` of the global sample stream is dataset index ``perm_e[p % N]`` with ``e = p // N`` and
    ``perm_e`` a permutation seeded by ``seed + e``. Global batch ``i`` covers positions
    ``[start + i * B, start + (i + 1) * B)`` and process ``r`` takes the ``r``-th slice of ``B / world``, so
    the union over processes equals the single-process batch.

    Args:
        size: dataset length ``N``.
        global_batch: ``B``, divisible by ``world_size``.
        rank, world_size: this process and the number of processes.
        seed: data-order seed.
        start_position: first global position (``iteration * B`` when resuming).
        shuffle: False walks the dataset in order (useful for tests and debugging).
    """

    def __init__(
        self, size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
        start_position: int = 0, shuffle: bool = True,
    ):
        if size <= 0:
            raise ValueError("TrainingBatchSampler: the dataset is empty")
        if global_batch % world_size:
            raise ValueError(
                f"solver.batch_size {global_batch} is not divisible by the {world_size} training processes"
            )
        self.size, self.global_batch, self.rank, self.world_size = size, global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.seed, self.start_position, self.shuffle = seed, start_position, shuffle
        self._perm_epoch, self._perm = -1, None

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=g).tolist(), epoch
        return self._perm[offset]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.start_position + self.rank * self.local_batch
        while True:
            yield [(p, self.index_at(p)) for p in range(start, start + self.local_batch)]
            start += self.global_batch


class SeededSampleDataset(Dataset):
    """Wraps a map-style dataset so that item ``(position, index)`` is loaded under RNGs seeded by
    ``(seed, position)``; the caller's RNG states are restored afterwards. Datasets that draw their own
    randomness from ``(seed, epoch, index)`` (``VISClipDataset``) get ``set_epoch(position // len)`` first, so
    every pass over the data sees fresh augmentation."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        position, index = item
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(position // len(self.dataset))
        s = _sample_seed(self.seed, position)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                # CPU generator only (what fork_rng restores); data loading does not draw CUDA randomness
                random.seed(s)
                np.random.seed(s % 2**32)
                torch.default_generator.manual_seed(s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Recursively move the tensors of nested dicts / lists / tuples to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        moved = [move_to_device(v, device) for v in obj]
        return type(obj)(moved) if isinstance(obj, tuple) and not hasattr(obj, "_fields") else moved
    return obj


class Trainer:
    """Trains ``model`` on ``dataset`` following ``cfg`` (see module docstring).

    Args:
        cfg: the typed training config.
        model: a method (``nn.Module`` returning a dict of weighted losses from ``model(batch)``).
        dataset: map-style dataset of training clips.
        collate_fn: turns a list of dataset items into the batch the method takes.
        device: training device; default from ``init_distributed(cfg.device)``.
        shuffle: shuffle the data order (True for training).
    """

    def __init__(
        self, cfg: TrainConfig, model: nn.Module, dataset: Dataset, collate_fn: Callable | None = None,
        device: torch.device | None = None, shuffle: bool = True,
    ):
        self.cfg = cfg
        self.device = device if device is not None else du.init_distributed(cfg.device)
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self.output_dir = Path(cfg.output_dir)
        if du.is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.dataset, self.collate_fn, self.shuffle = dataset, collate_fn, shuffle
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.solver)
        self.amp = bool(cfg.solver.amp and self.device.type == "cuda")
        if cfg.solver.amp and not self.amp:
            logger.warning("solver.amp is set but the device is %s: training in float32", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.checkpoints = CheckpointManager(self.output_dir, keep=cfg.checkpoint_keep)
        self.iteration = 0  # number of completed iterations
        self._position = 0  # position in the global sample stream of the next batch's first sample
        self.history: list[dict[str, float]] = []  # this process's per-iteration losses (not reduced)
        self._ddp_model: nn.Module | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Full training state; collective under DDP (gathers the RNG states of every process)."""
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "sampler": {"position": self._position, "seed": self.cfg.seed},
            "rng": du.all_gather_object(capture_rng_state()),
            "world_size": self.world_size,
            "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self._position = int(state["sampler"]["position"])
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            logger.warning(
                "checkpoint from %d processes resumed on %d: RNG streams are re-seeded",
                len(rng), self.world_size,
            )
            seed_all(self.cfg.seed + self.rank + 7919 * self.iteration)

    def save_checkpoint(self, final: bool = False) -> None:
        state = self.state_dict()  # collective: every process takes part
        if du.is_main_process():
            path = self.checkpoints.save(state, self.iteration, final=final)
            logger.info("saved %s", path)
        du.barrier()

    def resume_or_load(self, resume: bool = False) -> bool:
        """Resume from ``output_dir/last.pth`` when ``resume`` and it exists; otherwise load
        ``cfg.init_weights`` (model only) if given. Returns True when a run was resumed."""
        if resume and self.checkpoints.has_checkpoint():
            # CPU first: RNG states must stay CPU tensors; the optimizer moves its state to the params' device
            self.load_state_dict(self.checkpoints.load(map_location="cpu"))
            logger.info("resumed from %s at iteration %d", self.checkpoints.last_path, self.iteration)
            return True
        if self.cfg.init_weights:
            # a method may know foreign checkpoint formats (e.g. official Mask2Former .pkl files)
            model = unwrap_model(self.model)
            if isinstance(model, VISMethod):
                report = model.load_pretrained(self.cfg.init_weights)
                logger.info("initialised from %s: %s", self.cfg.init_weights, report)
            else:
                missing, unexpected = load_model_weights(self.model, self.cfg.init_weights)
                logger.info(
                    "initialised from %s (%d missing, %d unexpected keys)",
                    self.cfg.init_weights, len(missing), len(unexpected),
                )
        return False

    # ------------------------------------------------------------------ loop
    def _build_loader(self) -> Iterator:
        sampler = TrainingBatchSampler(
            len(self.dataset), self.cfg.solver.batch_size, self.rank, self.world_size, self.cfg.seed,
            start_position=self._position, shuffle=self.shuffle,
        )
        loader = DataLoader(
            SeededSampleDataset(self.dataset, self.cfg.seed),
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.cfg.data.num_workers > 0,
            # its own generator: creating the loader must not consume the (restored) global torch RNG
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        return iter(loader)

    def _wrapped_model(self) -> nn.Module:
        if self.world_size > 1 and self._ddp_model is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.cfg.find_unused_parameters
            )
        return self._ddp_model if self._ddp_model is not None else self.model

    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def run_step(self, model: nn.Module, batch: Any) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the float value of every loss and their sum."""
        with self._autocast():
            loss_dict = model(batch)
        if not isinstance(loss_dict, dict) or not loss_dict:
            raise TypeError(f"method {self.cfg.method!r} must return a non-empty dict of losses (train mode)")
        total = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        values["loss"] = float(total.detach())
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"iteration {self.iteration + 1}: non-finite loss {values}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.solver.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.solver.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def train(self, until: int | None = None) -> list[dict[str, float]]:
        """Train from ``self.iteration`` to ``solver.max_iter`` (or stop after ``until`` iterations, saving a
        checkpoint, which is how tests simulate an interrupted job). Returns ``self.history``."""
        cfg = self.cfg
        max_iter = cfg.solver.max_iter
        stop = max_iter if until is None else min(until, max_iter)
        metrics = MetricsLogger(self.output_dir, self.iteration if self.iteration > 0 else None) \
            if du.is_main_process() else None
        model = self._wrapped_model()
        model.train()
        data = self._build_loader()
        progress = _progress(self.iteration, max_iter, enabled=du.is_main_process())
        window: list[dict[str, float]] = []
        window_start, data_time = time.perf_counter(), 0.0
        try:
            while self.iteration < stop:
                t0 = time.perf_counter()
                batch = move_to_device(next(data), self.device)
                data_time += time.perf_counter() - t0
                values = self.run_step(model, batch)
                self.iteration += 1
                self._position += cfg.solver.batch_size
                self.history.append(values)
                window.append(values)
                progress.update(1)
                progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{self._lr():.2e}", refresh=False)
                if self.iteration % cfg.log_period == 0 or self.iteration == stop:
                    elapsed = time.perf_counter() - window_start
                    self._log(metrics, window, elapsed, data_time)
                    window, window_start, data_time = [], time.perf_counter(), 0.0
                if self.iteration % cfg.checkpoint_period == 0 or self.iteration == stop:
                    self.save_checkpoint(final=self.iteration == max_iter)
        finally:
            progress.close()
        return self.history

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _log(self, metrics: MetricsLogger | None, window: list[dict], elapsed: float, data_time: float):
        keys = sorted({k for row in window for k in row})
        means = {k: sum(row.get(k, 0.0) for row in window) / len(window) for k in keys}
        means = du.reduce_mean_dict(means, self.device if self.device.type == "cuda" else None)
        if metrics is None:
            return
        row = {"iteration": self.iteration, "lr": self._lr(), **means}
        row["time"] = elapsed / len(window)
        row["data_time"] = data_time / len(window)
        row["it_per_s"] = len(window) / elapsed if elapsed > 0 else float("nan")
        if self.device.type == "cuda":
            row["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        metrics.log(row)


def _progress(initial: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train",
                unit="it", mininterval=1.0)


def build_train_dataset(cfg: TrainConfig, where: str = "config") -> tuple[Dataset, Callable]:
    """The clip dataset (``VISClipDataset``) and collate function described by ``cfg.data``."""
    from vis_core.data.clips import VISClipDataset, collate_clips

    data = cfg.data
    if data.kind in ("synthetic", "synthetic_pseudo", "synthetic_objects"):
        return _synthetic_dataset(cfg, where), collate_clips
    for key in ("json", "image_root"):
        if not getattr(data, key):
            raise ConfigError(f"{where}: data.{key} is empty (path of the training annotations / frames)")
    if not Path(data.json).is_file():
        raise ConfigError(f"{where}: data.json: {data.json}: file not found")
    if not Path(data.image_root).is_dir():
        raise ConfigError(f"{where}: data.image_root: {data.image_root}: directory not found")
    if data.kind == "coco_pseudo":
        return _pseudo_video_dataset(cfg, where), collate_clips
    if data.kind != "vis":
        raise ConfigError(f"{where}: data.kind must be 'vis', 'coco_pseudo', 'synthetic', 'synthetic_pseudo' or "
                          f"'synthetic_objects', got {data.kind!r}")
    dataset = VISClipDataset(
        data.json, data.image_root, sampling=data.sampling, num_frames=data.num_frames,
        frame_range=data.frame_range, min_sizes=tuple(data.min_sizes), max_size=data.max_size,
        hflip_prob=0.5 if data.hflip else 0.0, seed=cfg.seed, crop=_frame_crop(data, where),
    )
    return dataset, collate_clips


def _frame_crop(data, where: str):
    """The per-frame crop of video clips from ``data.crop_prob`` / ``data.crop_size_range`` (None when off)."""
    from vis_core.data.transforms import FrameCrop

    if data.crop_prob <= 0:
        return None
    if len(data.crop_size_range) != 2:
        raise ConfigError(f"{where}: data.crop_size_range: expected [min, max], got {data.crop_size_range}")
    try:
        return FrameCrop(data.crop_prob, tuple(data.crop_size_range))
    except ValueError as exc:
        raise ConfigError(f"{where}: data: {exc}") from None


def _synthetic_dataset(cfg: TrainConfig, where: str) -> Dataset:
    """Training items rendered on the fly by the synthetic generator (``data.synthetic`` is its spec)."""
    from vis_core.data.synthetic_stream import (
        SyntheticClipDataset,
        SyntheticObjectDataset,
        SyntheticPseudoVideoDataset,
    )

    data = cfg.data
    common = dict(min_sizes=tuple(data.min_sizes), max_size=data.max_size,
                  hflip_prob=0.5 if data.hflip else 0.0, seed=cfg.seed, length=data.stream_length)
    try:
        if data.kind == "synthetic_pseudo":
            return SyntheticPseudoVideoDataset(data.synthetic, mode=data.pseudo_mode, **common)
        if data.kind == "synthetic_objects":
            return SyntheticObjectDataset(data.synthetic, size=min(data.min_sizes), **common)
        return SyntheticClipDataset(data.synthetic, sampling=data.sampling, num_frames=data.num_frames,
                                    frame_range=data.frame_range, crop=_frame_crop(data, where), **common)
    except ValueError as exc:
        raise ConfigError(f"{where}: data.synthetic: {exc}") from exc


def _pseudo_video_dataset(cfg: TrainConfig, where: str) -> Dataset:
    """COCO images as pseudo-video clips (the reports' first training stage), labels in the VIS label space
    when ``data.category_map`` maps COCO categories onto the VIS train set's."""
    from vis_core.data.pseudo_video import PseudoVideoDataset
    from vis_core.data.ytvis import load_annotations, load_json

    data = cfg.data
    coco = load_json(data.json)
    category_ids = None
    if data.category_map:
        if not data.vis_json:
            raise ConfigError(f"{where}: data.category_map needs data.vis_json (the VIS train annotations)")
        vis = load_annotations(data.vis_json)
        mapping = {int(a): int(b) for a, b in data.category_map}
        unknown = sorted(set(mapping.values()) - set(vis.category_ids))
        if unknown:
            raise ConfigError(f"{where}: data.category_map: VIS category ids {unknown} not in {data.vis_json}")
        coco = {**coco, "categories": vis.raw["categories"],
                "annotations": [{**a, "category_id": mapping[a["category_id"]]}
                                for a in coco["annotations"] if a["category_id"] in mapping]}
        category_ids = vis.category_ids
    return PseudoVideoDataset(
        coco, data.image_root, mode=data.pseudo_mode, category_ids=category_ids,
        min_sizes=tuple(data.min_sizes), max_size=data.max_size, hflip_prob=0.5 if data.hflip else 0.0,
        seed=cfg.seed,
    )


def _with_dataset_classes(cfg: TrainConfig, dataset: Dataset, where: str) -> TrainConfig:
    """Fill ``model.num_classes`` from the dataset when the config leaves it out; reject a smaller one."""
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        return cfg
    given = cfg.model.get("num_classes")
    if given is None:
        return dataclasses.replace(cfg, model={**cfg.model, "num_classes": int(num_classes)})
    if int(given) < num_classes:
        raise ConfigError(
            f"{where}: model.num_classes={given} but {cfg.data.json or f'the {cfg.data.kind} data'} has "
            f"{num_classes} categories"
        )
    return cfg


def train(cfg: TrainConfig, resume: bool = False, where: str = "config") -> Trainer:
    """Build the method and data from ``cfg`` and train (the body of ``vis train``); ``where`` names the
    config file and section in error messages."""
    from vis_core.methods.registry import build_method

    if cfg.cpu_threads > 0:
        # small models on shared CPUs run much faster without intra-op thread oversubscription
        torch.set_num_threads(cfg.cpu_threads)
    device = du.init_distributed(cfg.device)
    seed_all(cfg.seed + du.get_rank())
    dataset, collate = build_train_dataset(cfg, where)
    cfg = _with_dataset_classes(cfg, dataset, where)
    model = build_method(cfg, where=f"{where}.model")
    trainer = Trainer(cfg, model, dataset, collate, device=device)
    trainer.resume_or_load(resume)
    if du.is_main_process():
        _write_config(cfg, trainer.output_dir)
    trainer.train()
    return trainer


def _write_config(cfg: TrainConfig, output_dir: Path) -> None:
    import yaml

    from vis_core.io.atomic import atomic_write_text

    atomic_write_text(output_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
