"""Atomic training checkpoints with a ``last.pth`` entry for resuming.

Layout of an output directory::

    model_0001000.pth   numbered checkpoints (every ``checkpoint_period`` iterations)
    last.pth            the newest checkpoint (a hard link to it, or a copy where links are not supported)
    model_final.pth     written when training reaches ``max_iter``

Every file is written to a temporary name in the same directory and renamed with ``os.replace``, so a job
killed mid-write leaves the previous checkpoint intact and ``last.pth`` always names a complete file.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vis_core.io.atomic import atomic_path
from vis_core.io.weights import load_model_weights, load_state_dict_matching, load_torch_file, unwrap_model

__all__ = [
    "atomic_torch_save",
    "CheckpointManager",
    "capture_rng_state",
    "restore_rng_state",
    "load_model_weights",
    "load_state_dict_matching",
    "numbered_checkpoints",
    "export_weights",
    "unwrap_model",
]

LAST = "last.pth"
_NUMBERED = re.compile(r"^model_(\d+)\.pth$")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`vis_core.io.atomic.atomic_path` (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, falling back to a copy), atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def numbered_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the numbered checkpoints ``model_<iteration>.pth`` of a run, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NUMBERED.match(p.name)))


def export_weights(checkpoint: str | Path, out: str | Path, prefix: str = "") -> Path:
    """Write the model tensors of a training checkpoint whose names start with ``prefix`` as a plain state
    dict (no optimizer or RNG state): the form in which released weights are read, e.g. a backbone's
    (``prefix="backbone."``, see ``vis_core.modeling.backbones.build.read_checkpoint``)."""
    state = load_torch_file(checkpoint)
    model = state["model"] if isinstance(state, dict) and "model" in state else state
    kept = {k: v for k, v in model.items() if k.startswith(prefix)}
    if not kept:
        raise ValueError(f"{checkpoint}: no model tensor starts with {prefix!r}")
    atomic_torch_save(kept, out)
    return Path(out)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device) of this process."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class CheckpointManager:
    """Saves numbered checkpoints, keeps ``last.pth`` current and prunes old ones.

    Args:
        output_dir: directory of the run.
        keep: number of numbered checkpoints to keep (0 keeps all); ``last.pth`` and ``model_final.pth`` are
            never pruned.
    """

    def __init__(self, output_dir: str | Path, keep: int = 0):
        self.output_dir = Path(output_dir)
        self.keep = keep

    @property
    def last_path(self) -> Path:
        return self.output_dir / LAST

    def has_checkpoint(self) -> bool:
        return self.last_path.is_file()

    def save(self, state: dict[str, Any], iteration: int, final: bool = False) -> Path:
        """Write ``state`` as ``model_{iteration:07d}.pth`` (or ``model_final.pth``) and point ``last.pth``
        at it."""
        name = "model_final.pth" if final else f"model_{iteration:07d}.pth"
        path = self.output_dir / name
        atomic_torch_save(state, path)
        _atomic_link(path, self.last_path)
        self._prune()
        return path

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for _, path in numbered_checkpoints(self.output_dir)[: -self.keep]:
            path.unlink(missing_ok=True)

    def load(self, path: str | Path | None = None, map_location: Any = "cpu") -> dict[str, Any]:
        path = Path(path) if path is not None else self.last_path
        # full training state (optimizer, RNG tuples, numpy arrays): data only, no code runs (vis_core.io)
        return load_torch_file(path, map_location=map_location)
