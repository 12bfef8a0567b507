"""AdamW parameter groups and the warmup + multi-step LR schedule of Mask2Former / IDOL.

Parameter groups (as ``mask2former/train_net.py: build_optimizer``):
* backbone parameters get ``lr * backbone_multiplier`` (0.1);
* normalisation-layer parameters get ``weight_decay_norm`` (0) and embeddings (``nn.Embedding``, position
  tables) get ``weight_decay_embed`` (0); everything else ``weight_decay`` (0.05).

A method decides what "backbone" means by defining ``param_groups_key(name) -> "backbone" | "default"``;
otherwise parameters whose name starts with ``backbone.`` are the backbone.
"""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch import nn

from vis_core.engine.config import SolverConfig
from vis_core.methods.base import VISMethod

__all__ = ["build_param_groups", "build_optimizer", "build_lr_scheduler", "lr_factor"]

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
_EMBED_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed")


def _is_norm(module: nn.Module) -> bool:
    # also catches FrozenBatchNorm-like modules defined in vis_core (no trainable params there anyway)
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def build_param_groups(model: nn.Module, cfg: SolverConfig) -> list[dict]:
    """AdamW groups, one per distinct (lr, weight_decay), with the parameter names kept for inspection."""
    # a VISMethod names its backbone parameters (vis_core.methods.base); any other module: a ``backbone.*`` prefix
    key_fn = model.param_groups_key if isinstance(model, VISMethod) else None
    groups: dict[tuple[float, float], dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            kind = key_fn(name) if key_fn is not None else ("backbone" if name.startswith("backbone.") else "")
            lr = cfg.lr * (cfg.backbone_multiplier if kind == "backbone" else 1.0)
            if _is_norm(module):
                wd = cfg.weight_decay_norm
            elif isinstance(module, nn.Embedding) or any(e in param_name for e in _EMBED_NAMES):
                wd = cfg.weight_decay_embed
            else:
                wd = cfg.weight_decay
            group = groups.setdefault((lr, wd), {"params": [], "names": [], "lr": lr, "weight_decay": wd})
            group["params"].append(param)
            group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.AdamW:
    groups = build_param_groups(model, cfg)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(iteration: int, cfg: SolverConfig) -> float:
    """LR multiplier at ``iteration``: linear warmup from ``warmup_factor``, then ``gamma`` per step."""
    factor = cfg.gamma ** bisect_right(sorted(cfg.steps), iteration)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SolverConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration scheduler: call ``step()`` once after every optimizer step.

    The schedule is a plain closure on purpose: ``LambdaLR.state_dict`` skips functions, so a resumed run
    follows the schedule of its (possibly edited) config and the checkpoint only restores the iteration.
    """
    for step in cfg.steps:
        if step <= 0:
            raise ValueError(f"solver.steps must be positive iterations, got {cfg.steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: lr_factor(iteration, cfg))
