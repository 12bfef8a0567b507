"""A training run as the rest of vis_core reads it: its config and its trained weights.

``vis train`` writes a run directory: ``config.yaml`` (the resolved :class:`TrainConfig`), numbered
checkpoints, ``last.pth`` and ``model_final.pth`` (each also storing the config). :func:`load_trained_method`
is the one way to rebuild a trained method from it, used by ``vis infer``, ``vis stage``, ``vis bench`` and
the frame-level evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from torch import nn

from vis_core.engine.config import ConfigError, TrainConfig, apply_overrides, from_dict

__all__ = ["find_checkpoint", "load_trained_method"]


def find_checkpoint(run_dir: str | Path) -> Path:
    """``model_final.pth`` of a run directory, else its ``last.pth`` (an unfinished run)."""
    run_dir = Path(run_dir)
    for name in ("model_final.pth", "last.pth"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise ConfigError(f"{run_dir}: no model_final.pth or last.pth checkpoint")


def load_trained_method(run: str | Path, checkpoint: str | Path | None = None,
                        overrides: list[str] | None = None, device: str = "cpu") -> nn.Module:
    """Rebuild a trained method in eval mode.

    Args:
        run: a run directory, or a checkpoint file of one (its weights are loaded unless ``checkpoint`` is
            given). The config is the run's ``config.yaml``, or, without one, the config the checkpoint stores.
        checkpoint: weights to load (default: :func:`find_checkpoint`).
        overrides: ``KEY=VALUE`` overrides of the config (test-time keys, e.g. ``model.tracker.score_thresh``).
    Raises ConfigError naming the file when the config is missing or the checkpoint lacks model parameters
    (training-only heads may be absent at test time: only missing parameters are an error).
    """
    from vis_core.io.weights import load_state_dict_matching, load_torch_file
    from vis_core.methods.registry import build_method

    run = Path(run)
    run_dir = run.parent if run.is_file() else run
    checkpoint = Path(checkpoint) if checkpoint is not None else run if run.is_file() else find_checkpoint(run)
    state = load_torch_file(checkpoint)
    cfg_path = run_dir / "config.yaml"
    values: Any
    if cfg_path.is_file():
        values, where = yaml.safe_load(cfg_path.read_text()), str(cfg_path)
    elif isinstance(state, dict) and isinstance(state.get("config"), dict):
        values, where = state["config"], f"{checkpoint} config"
    else:
        raise ConfigError(f"{cfg_path}: no config.yaml in the run directory and {checkpoint} stores no config "
                          "(was it written by `vis train`?)")
    cfg = from_dict(TrainConfig, apply_overrides(values, overrides or [], where), where)
    method = build_method(cfg, where=f"{where}: model")
    missing, _ = load_state_dict_matching(method, state)
    if missing:
        raise ConfigError(f"{checkpoint}: checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    return method.to(device).eval()
