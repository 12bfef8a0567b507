"""Training data rendered on the fly from the synthetic generator: a seeded stream, never a small fixed set.

A tiny model trained on a few dozen stored videos memorises their instances (per-instance colours, exact
trajectories) instead of learning the categories. These datasets render every training item from the
generator instead, so a run of ``max_iter x batch`` samples sees that many distinct videos (or images):

* :class:`SyntheticClipDataset`: item ``i`` is a clip of video ``i`` of the ``(seed, split)`` stream (frames
  chosen by IDOL's pair sampler or the MinVIS/DVIS/VITA clip sampler, as :class:`~vis_core.data.clips.
  VISClipDataset` does for stored videos);
* :class:`SyntheticPseudoVideoDataset`: item ``i`` is still image ``i`` of the stream made into a pseudo video
  (each frame an independent random crop, or a rotation), the synthetic counterpart of COCO pseudo videos
  (:mod:`vis_core.data.pseudo_video`) used to pre-train the segmenters;
* :class:`SyntheticObjectDataset`: item ``i`` is a small image of one object (the synthetic counterpart of an
  ImageNet image) used to pre-train backbones by classification.

Only the frames an item needs are rendered (:func:`~vis_core.data.synthetic.render_frames`); they go through
an in-memory JPEG round trip at the quality of the stored validation frames, so training and validation pixels
have the same statistics. Validation stays a fixed split on disk (``vis data synth``): the streams use the split
names ``"train"`` and ``"images"``, whose generator seeds never meet ``"valid"``'s.

Items have the :mod:`vis_core.data.clips` format; labels are ``category_id - 1`` (the synthetic categories
are ids ``1..K``, so the label space equals that of the stored splits). Randomness: the video (or image) is
fixed by ``(data seed, split, i)``; frame choice and augmentation by ``[seed, epoch, i]``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from vis_core.data.clips import ClipDatasetBase, make_item, sample_clip, sample_pair, to_tensor
from vis_core.data.pseudo_video import MODES, pseudo_clip
from vis_core.data.synthetic import SynthConfig, categories, make_config, plan_video, render_frames
from vis_core.data.transforms import ClipAugmentation, FrameCrop

__all__ = ["SyntheticClipDataset", "SyntheticPseudoVideoDataset", "SyntheticObjectDataset", "synth_config_from_dict",
           "jpeg_roundtrip"]


def synth_config_from_dict(spec: Mapping) -> tuple[SynthConfig, int]:
    """``{preset: ovis, seed: 0, <SynthConfig field>: value, ...}`` -> (config, generator seed)."""
    spec = dict(spec)
    if "preset" not in spec:
        raise ValueError("synthetic data spec needs a 'preset'")
    preset, seed = spec.pop("preset"), int(spec.pop("seed", 0))
    for key in ("train_videos", "valid_videos"):  # sizes of the stored splits, not of a stream
        spec.pop(key, None)
    return make_config(preset, **spec), seed


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 through Pillow's JPEG encoder and decoder, with the settings of the stored frames."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


def _visible_tracks(visible: np.ndarray, min_area: int) -> torch.Tensor:
    """(n, k, H, W) visible masks with frames below ``min_area`` pixels emptied (not visible there)."""
    area = visible.reshape(*visible.shape[:2], -1).sum(-1)
    return torch.from_numpy(visible & (area >= min_area)[:, :, None, None])


class _SyntheticStream(ClipDatasetBase):
    """What both streams share: the generator config, its seed, the split name and the label space."""

    def __init__(self, spec: Mapping | SynthConfig, data_seed: int, split: str, length: int, seed: int,
                 min_sizes: Sequence[int], max_size: int | None, hflip_prob: float, jpeg: bool,
                 crop: FrameCrop | None = None):
        if isinstance(spec, SynthConfig):
            self.cfg, self.data_seed = spec, int(data_seed)
        else:
            self.cfg, self.data_seed = synth_config_from_dict({"seed": data_seed, **spec})
        if length < 1:
            raise ValueError(f"{type(self).__name__}: length must be >= 1, got {length}")
        self.split, self.length, self.seed, self.epoch = split, int(length), int(seed), 0
        self.augment = ClipAugmentation(tuple(min_sizes), max_size, hflip_prob, crop)
        self.jpeg = jpeg
        self.category_ids = [c["id"] for c in categories(self.cfg.shapes)]

    def _render(self, index: int, frame_indices: Sequence[int] | None, rng: np.random.Generator | None,
                sampler=None):
        """Plan stream item ``index``, pick its frames (``sampler(length, rng)`` when given) and render them:
        (k, 3, H, W) float images, (n, k, H, W) bool tracks, (n,) labels, the frame indices."""
        plan = plan_video(self.cfg, self.data_seed, index, self.split)
        idx = list(frame_indices) if sampler is None else sampler(plan.length, rng)
        frames, visible, _ = render_frames(plan, idx)
        if self.jpeg:
            frames = np.stack([jpeg_roundtrip(f, self.cfg.jpeg_quality) for f in frames])
        images = torch.stack([to_tensor(f) for f in frames])
        tracks = _visible_tracks(visible, self.cfg.min_visible_area)
        labels = torch.tensor([self.cfg.shapes.index(inst.shape) for inst in plan.instances], dtype=torch.int64)
        return images, tracks, labels, idx

    def _check(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for dataset of length {self.length}")
        return np.random.default_rng([self.seed, self.epoch, index])


class SyntheticClipDataset(_SyntheticStream):
    """Training clips of freshly generated synthetic videos (see the module docstring).

    Args:
        spec: generator preset and knobs (``{preset: ovis, height: 96, ...}``) or a ``SynthConfig``.
        data_seed: generator seed of the stream; split: stream name (``"train"``).
        sampling, num_frames, frame_range: as :class:`~vis_core.data.clips.VISClipDataset`.
        min_sizes, max_size, hflip_prob: clip-level augmentation; crop: IDOL's per-frame crop (or None).
        seed: augmentation / frame-choice seed; length: number of distinct videos in the stream (one epoch).
        jpeg: JPEG round trip of every frame (as stored frames have).
    """

    def __init__(self, spec: Mapping | SynthConfig, data_seed: int = 0, split: str = "train", *,
                 sampling: str = "pair", num_frames: int = 2, frame_range: int = 10,
                 min_sizes: Sequence[int] = (96,), max_size: int | None = None, hflip_prob: float = 0.5,
                 seed: int = 0, length: int = 100_000, jpeg: bool = True, crop: FrameCrop | None = None):
        if sampling not in ("pair", "clip"):
            raise ValueError(f"SyntheticClipDataset: sampling must be 'pair' or 'clip', got {sampling!r}")
        if sampling == "pair" and num_frames != 2:
            raise ValueError(f"SyntheticClipDataset: sampling='pair' uses 2 frames, got num_frames={num_frames}")
        super().__init__(spec, data_seed, split, length, seed, min_sizes, max_size, hflip_prob, jpeg, crop)
        self.sampling, self.num_frames, self.frame_range = sampling, int(num_frames), int(frame_range)

    def sample_frames(self, length: int, rng: np.random.Generator) -> list[int]:
        if self.sampling == "pair":
            return sample_pair(length, rng, self.frame_range)
        return sample_clip(length, rng, self.num_frames, self.frame_range)

    def __getitem__(self, index: int) -> dict:
        rng = self._check(index)
        images, tracks, labels, idx = self._render(index, None, rng, sampler=self.sample_frames)
        images, tracks = self.augment(images, tracks, rng)
        ids = torch.arange(1, len(labels) + 1, dtype=torch.int64)
        return make_item(images, tracks, labels, ids, index, idx)


class SyntheticPseudoVideoDataset(_SyntheticStream):
    """Pseudo-video clips of freshly generated synthetic still images (see the module docstring).

    Args:
        spec: generator preset and knobs of the images (single frames: ``frames`` is forced to 1, and there are
            no scripted twin / hider pairs, which a still image cannot show).
        mode, num_frames, crop_prob, crop_range, max_angle: pseudo motion, as
            :class:`~vis_core.data.pseudo_video.PseudoVideoDataset`.
        Other arguments as :class:`SyntheticClipDataset`; ``split`` defaults to ``"images"``.
    """

    def __init__(self, spec: Mapping | SynthConfig, data_seed: int = 0, split: str = "images", *,
                 mode: str = "crop_pair", num_frames: int | None = None, crop_prob: float = 0.5,
                 crop_range: tuple[float, float] = (0.64, 1.0), max_angle: float = 30.0,
                 min_sizes: Sequence[int] = (96,), max_size: int | None = None, hflip_prob: float = 0.5,
                 seed: int = 0, length: int = 100_000, jpeg: bool = True):
        if mode not in MODES:
            raise ValueError(f"SyntheticPseudoVideoDataset: mode must be one of {MODES}, got {mode!r}")
        super().__init__(spec, data_seed, split, length, seed, min_sizes, max_size, hflip_prob, jpeg)
        self.cfg = make_config(self.cfg, frames=(1, 1), twin_prob=0.0, hider_prob=0.0)
        self.mode = mode
        self.num_frames = int(num_frames if num_frames is not None else (2 if mode == "crop_pair" else 3))
        self.crop_prob, self.crop_range, self.max_angle = crop_prob, tuple(crop_range), float(max_angle)

    def __getitem__(self, index: int) -> dict:
        rng = self._check(index)
        images, tracks, labels, _ = self._render(index, [0], None)
        images, tracks = pseudo_clip(images[0], tracks[:, 0], rng, self.augment, self.mode, self.num_frames,
                                     crop_prob=self.crop_prob, crop_range=self.crop_range,
                                     max_angle=self.max_angle)
        ids = torch.arange(1, len(labels) + 1, dtype=torch.int64)
        return make_item(images, tracks, labels, ids, index, range(self.num_frames))


class SyntheticObjectDataset(_SyntheticStream):
    """Object-centric still images (one instance of a random category near the centre, its look typical or
    not, on a textured background) for image classification; items have one frame and one target (the
    object). The generator knobs of ``spec`` are kept except those that make a scene: one object, one frame,
    no roaming, no scripted pairs, strong crowding (the object starts near the centre). ``size`` is the image
    side in pixels and ``radius`` the object radius range as a fraction of it."""

    def __init__(self, spec: Mapping | SynthConfig, data_seed: int = 0, split: str = "objects", *,
                 size: int = 64, radius: tuple[float, float] = (0.22, 0.42), min_sizes: Sequence[int] = (64,),
                 max_size: int | None = None, hflip_prob: float = 0.5, seed: int = 0, length: int = 100_000,
                 jpeg: bool = True):
        super().__init__(spec, data_seed, split, length, seed, min_sizes, max_size, hflip_prob, jpeg)
        self.cfg = make_config(self.cfg, height=size, width=size, frames=(1, 1), objects=(1, 1), radius=radius,
                               roam_prob=0.0, twin_prob=0.0, hider_prob=0.0, crowding=0.8)

    def __getitem__(self, index: int) -> dict:
        rng = self._check(index)
        images, tracks, labels, _ = self._render(index, [0], None)
        images, tracks = self.augment(images, tracks, rng)
        ids = torch.arange(1, len(labels) + 1, dtype=torch.int64)
        return make_item(images, tracks, labels, ids, index, [0])
