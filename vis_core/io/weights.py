"""Reading checkpoint files without running code from them.

A pickle can name any importable callable and have the unpickler call it, so ``torch.load(weights_only=False)``
or ``pickle.load`` of a file downloaded from the web runs whatever the file says. Users of this project load
third-party weights (official IDOL / MinVIS / Mask2Former / DINOv2 / Swin checkpoints), so every checkpoint
read goes through the two functions below, which admit data and nothing else:

* :func:`load_torch_file`: ``torch.load(weights_only=True)`` (tensors, plain containers, numbers, strings),
  plus the numpy globals that rebuild an ``ndarray`` or a numpy scalar; the project's own training checkpoints
  hold numpy arrays in their RNG state, and rebuilding an array runs no code named by the file (the elements
  of an object array would need further globals, which stay refused).
* :func:`load_detectron2_pickle`: detectron2 model-zoo ``.pkl`` files (``{"model": {name: ndarray}, ...}``,
  Python-2-era pickles) through an unpickler whose ``find_class`` admits only numpy array / scalar / dtype
  reconstruction, ``collections.OrderedDict`` and ``_codecs.encode`` (how protocol 2 stores bytes).

Anything else inside raises :class:`UnsafeCheckpointError` naming the file and the refused global, before any
of it is executed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "UnsafeCheckpointError", "load_torch_file", "load_detectron2_pickle", "SAFE_NUMPY_GLOBALS",
    "load_model_weights", "load_state_dict_matching", "unwrap_model",
]


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than tensors, arrays and plain containers."""


_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy >= 2 keeps array internals in numpy._core

# What an ndarray or a numpy scalar pickles into: the reconstruct functions, the array class and the dtype
# (numpy >= 1.25 pickles a dtype through its own class, numpy.dtypes.Float32DType etc.).
SAFE_NUMPY_GLOBALS: list[Any] = [
    _NUMPY_CORE.multiarray._reconstruct, _NUMPY_CORE.multiarray.scalar, np.ndarray, np.dtype,
    *(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")),
]

_PICKLE_ALLOWED = {(obj.__module__, obj.__name__) for obj in SAFE_NUMPY_GLOBALS}
_PICKLE_ALLOWED |= {(m.replace("numpy._core", "numpy.core"), n) for m, n in _PICKLE_ALLOWED}  # older pickles
# protocol-2 pickles written by Python 3 store bytes (an array's buffer) as _codecs.encode(text, "latin1"):
# a data conversion, admitted by torch's own weights-only unpickler too
_PICKLE_ALLOWED |= {("collections", "OrderedDict"), ("_codecs", "encode")}


def _refusal(path: str | os.PathLike, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused to load this checkpoint: it holds {what}, not only tensors / arrays / plain "
        "containers, and loading it would run code named by the file. Re-save its weights as a plain "
        "state dict (torch.save({name: tensor}, path)) from a trusted environment."
    )


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` that refuses any pickled callable except the numpy array globals (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise _refusal(path, _unsafe_globals(path)) from None


def _unsafe_globals(path: Path) -> str:
    """Names of the globals in a torch file that the safe loader refuses (read without unpickling)."""
    safe = {f"{obj.__module__}.{obj.__name__}" for obj in SAFE_NUMPY_GLOBALS}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in safe]
    except Exception:  # not a zip-format torch file: the legacy format cannot be scanned
        names = []
    return f"the globals {', '.join(sorted(names))}" if names else "objects the safe loader does not admit"


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses every other global."""

    def __init__(self, file, path: str | os.PathLike):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise _refusal(self._path, f"the global {module}.{name}")


def load_detectron2_pickle(path: str | os.PathLike) -> Any:
    """Read a detectron2 model-zoo ``.pkl`` (numpy arrays in plain containers) without running code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(f, path).load()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def load_model_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Initialise ``model`` from the ``model`` entry of a checkpoint (or a bare state dict).

    Parameters whose shape differs (e.g. a class head trained for another dataset) are skipped and reported
    like missing keys. Returns ``(missing_keys, unexpected_keys)``.
    """
    return load_state_dict_matching(model, load_torch_file(path))


def load_state_dict_matching(model: nn.Module, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """:func:`load_model_weights` from an already-read checkpoint (a training state or a bare state dict)."""
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = unwrap_model(model)
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in shape_mismatch}
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys) + shape_mismatch, list(result.unexpected_keys)
