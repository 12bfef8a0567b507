"""Process-group helpers for training under ``torchrun`` (NCCL on GPU, gloo on CPU).

``torchrun --nproc_per_node N -m vis_core.cli train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR/PORT``; ``init_distributed`` reads them. A plain ``python`` run is a world of one and needs no
process group, so every helper here also works without one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_gather_object",
    "reduce_mean_dict",
    "cleanup",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str = "auto") -> torch.device:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` and pick this process's device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:K``. Under torchrun a CUDA device
            becomes ``cuda:LOCAL_RANK``.
    Returns:
        the ``torch.device`` this process trains on.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        index = local_rank if world_size > 1 else torch.device(device).index or 0
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return dev


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """List of ``obj`` from every process (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def reduce_mean_dict(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Average a dict of floats over the processes (same keys on every process, sorted for a fixed order)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= get_world_size()
    return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
