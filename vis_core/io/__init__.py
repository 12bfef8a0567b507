"""File I/O shared by every part of vis_core: checkpoint reading that never runs code from the file."""

from vis_core.io.weights import SAFE_NUMPY_GLOBALS, UnsafeCheckpointError, load_detectron2_pickle, load_torch_file

__all__ = ["SAFE_NUMPY_GLOBALS", "UnsafeCheckpointError", "load_detectron2_pickle", "load_torch_file"]
