"""The method contract: everything the trainer, the inference runner, ``vis bench`` and the report call on a
method, named in one place.

A method is an ``nn.Module`` subclass of :class:`VISMethod`, registered by name
(:func:`vis_core.methods.registry.register_method`). It declares its **kind**, which says how the one inference
runner (:mod:`vis_core.engine.infer`) drives it over a :class:`~vis_core.data.video_source.VideoSource` and how
its inference memory grows with the video length T:

========== ================================================= =====================================================
kind       inference hooks                                   memory in T
========== ================================================= =====================================================
``online`` ``segment_frame(s)`` + ``new_associator(size)``:  O(1) besides the RLE output: the runner segments a
           per-frame outputs, then ``update(frame_out)``     frame (or a few, ``frame_batch``), associates it and
           frame by frame and ``finalize`` (IDOL, MinVIS,    drops it (``streaming``; ``hold_all`` keeps every
           DVIS's referring tracker)                         frame's outputs, the official codes' behaviour)
``clip``   ``segment_frame(s)`` + ``new_clip_associator``:   bounded by the window W: the runner caches per-frame
           windows of ``window`` frames every ``stride``     outputs while a window covers them (each frame is
           frames, ``update_window(start, outs,              segmented once) and tells the associator which frames
           final_before)`` and ``finalize`` (VITA)           no later window covers, so it can write them out
``offline`` ``infer_offline(source, category_ids, timing)``  grows with T, declared by ``memory_bytes(T, (h, w))``:
           with random access to the whole video (DVIS's     the runner refuses a video whose predicted peak
           temporal refiner, Propose-Reduce, VITA offline)   exceeds ``InferConfig.memory_budget_mb``
``None``   none: a frame-level or pre-training method        (no video inference)
========== ================================================= =====================================================

Results leave every kind as RLE through one sink, :class:`vis_core.tracking.track_state.TrackStore`: a mask is
encoded the moment it is final for its frame (online: at once; clip: when no later window covers the frame;
offline: when the method writes its sequences), and ``finalize`` turns the store into YouTube-VIS results entries.

Hooks of every method:

* ``forward(batch) -> dict[str, Tensor]``: the training hook. In train mode, the weighted losses of a
  ``collate_clips`` batch (their sum is minimised); eval-mode behaviour is the method's own.
* ``num_classes``: K, the number of object classes (contiguous labels ``0..K-1``).

Optional hooks, with their defaults here:

* ``load_pretrained(path) -> str``: ``init_weights`` of a training config (default: the matching entries of a
  vis_core or plain state-dict checkpoint); returns a one-line report for the log.
* ``param_groups_key(name) -> str``: the optimiser group of a parameter (``"backbone"`` trains with
  ``solver.backbone_multiplier``; default: ``"backbone"`` for ``backbone.*``, else ``"default"``).
* ``predict_frames(images, image_sizes, output_sizes)``: per-image instances for frame-level mask AP.
* ``segment_frames(images (N, 3, h, w))``: online / clip methods; default: ``segment_frame`` frame by frame
  (override with one batched pass).
* ``memory_bytes(frames_held, (h, w))`` on a clip method: its predicted peak for one window, checked against
  the budget like an offline method's; ``lower_memory_modes(T, (h, w)) -> {description: bytes}`` on a clip
  or offline method: the cheaper modes a refusal suggests (e.g. Propose-Reduce's bounded memory).
* ``record_soft_masks(codec)`` on an online or clip associator (IDOL's and MinVIS' have it): also keep each
  mask's soft encoding (:mod:`vis_core.tracking.soft_masks`; ``TrackStore.record_soft_masks``), which the
  multi-scale test averages; an associator without it gives binary masks, 0/1 probabilities in that merge.

Class attributes: ``kind`` (above) and ``segmenter_family`` (``deformable_detr`` / ``mask2former``: methods of a
family start from one shared pre-training of that segmenter).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "KINDS", "REQUIRED_HOOKS", "VISMethod", "Associator", "ClipAssociator", "check_contract", "method_kind",
]

KINDS = ("online", "clip", "offline")

# inference hooks a method of each kind must define (checked when it is registered)
REQUIRED_HOOKS: dict[str | None, tuple[str, ...]] = {
    "online": ("segment_frame", "new_associator"),
    "clip": ("segment_frame", "new_clip_associator", "window", "stride"),
    "offline": ("infer_offline", "memory_bytes"),
    None: (),
}


class Associator(Protocol):
    """Per-video state of an online method (returned by ``new_associator(output_size)``)."""

    def update(self, frame_out: dict[str, Tensor]) -> Any:
        """Consume the next frame's ``segment_frame`` outputs (frames arrive in order, each once)."""

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        """The video's YouTube-VIS results entries (``category_ids[k]`` is contiguous label k's id)."""


class ClipAssociator(Protocol):
    """Per-video state of a clip method (returned by ``new_clip_associator(output_size, num_frames)``)."""

    def update_window(self, start: int, frame_outs: list[dict[str, Tensor]], final_before: int) -> None:
        """Consume the window of frames ``start .. start + len(frame_outs) - 1`` (windows arrive in order of
        ``start``); frames ``< final_before`` are covered by no later window, so their masks are final."""

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]:
        """The video's YouTube-VIS results entries."""


class VISMethod(nn.Module):
    """Base class of every registered method (module docstring: the contract)."""

    kind: ClassVar[str | None] = None
    segmenter_family: ClassVar[str | None] = None

    @property
    def num_classes(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not say its number of classes (num_classes)")

    def load_pretrained(self, path: str | Path) -> str:
        """Initialise from the matching entries (same name and shape) of the checkpoint ``path``."""
        from vis_core.io.weights import load_model_weights

        missing, unexpected = load_model_weights(self, path)
        return f"{len(missing)} missing, {len(unexpected)} unexpected keys"

    def param_groups_key(self, name: str) -> str:
        """``"backbone"`` for the parameters of a ``backbone`` submodule, else ``"default"``."""
        return "backbone" if name.startswith("backbone.") else "default"

    @torch.no_grad()
    def segment_frames(self, images: Tensor) -> list[dict[str, Tensor]]:
        """``segment_frame`` of ``N`` frames ``(N, 3, h, w)`` of one size (default: one at a time)."""
        return [self.segment_frame(image) for image in images]


def method_kind(method: Any) -> str | None:
    """The kind of a method instance or class (``None`` for one without video inference)."""
    return getattr(method, "kind", None)


def check_contract(cls: type, name: str) -> None:
    """Raise ``TypeError`` naming the method when class ``cls`` does not fulfil the contract of its kind."""
    if not (isinstance(cls, type) and issubclass(cls, VISMethod)):
        raise TypeError(f"method {name!r}: {cls!r} must be a subclass of vis_core.methods.base.VISMethod")
    if cls.kind not in REQUIRED_HOOKS:
        raise TypeError(f"method {name!r}: kind {cls.kind!r} is not one of {KINDS} (or None)")
    missing = [hook for hook in REQUIRED_HOOKS[cls.kind] if not hasattr(cls, hook)]
    if missing:
        raise TypeError(f"method {name!r} of kind {cls.kind!r} lacks the inference hooks {missing}")
