"""Training clips from YouTube-VIS/OVIS annotation files: frame samplers, a map-style dataset and collation.

Item format (shared by :class:`VISClipDataset` and ``pseudo_video.PseudoVideoDataset``)::

    {"images": (T, 3, H, W) float32 RGB 0..255,
     "targets": [ {"labels": (N_t,) int64 contiguous 0..K-1 (sorted category_id order),
                   "masks": (N_t, H, W) bool,
                   "boxes": (N_t, 4) float32 cx, cy, w, h normalised to [0, 1],
                   "instance_ids": (N_t,) int64 annotation id} for each of the T frames ],
     "video_id": int, "frame_indices": list[int], "image_size": (H, W)}

Only instances visible in a frame are in that frame's target; ``instance_ids`` link them across frames.
Augmentation is drawn from ``numpy.random.default_rng([seed, epoch, index])`` (``set_epoch`` changes it), so a
sample is reproducible and independent of worker count or order; the dataset is map-style with ``__len__`` and
works with ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vis_core.data.transforms import (
    ClipAugmentation,
    FrameCrop,
    boxes_xyxy_to_cxcywh_norm,
    masks_to_boxes,
)
from vis_core.data.ytvis import VISFormatError, decode_segmentation, load_annotations

SAMPLINGS = ("pair", "clip")


# ------------------------------------------------------------------------------------------------ samplers
def _window(length: int, key: int, frame_range: int) -> list[int]:
    """Frames within ``frame_range`` of ``key`` (excluding it), clipped to the video."""
    lo, hi = max(0, key - frame_range), min(length, key + frame_range + 1)
    return [t for t in range(lo, hi) if t != key]


def sample_pair(length: int, rng: np.random.Generator, frame_range: int = 10) -> list[int]:
    """IDOL: a random key frame and a reference frame at most ``frame_range`` away (different from the key
    when the video has more than one frame). Returns ``[key, ref]`` (key first, not sorted)."""
    if length < 1:
        raise ValueError("sample_pair: empty video")
    key = int(rng.integers(length))
    window = _window(length, key, frame_range)
    ref = int(window[int(rng.integers(len(window)))]) if window else key
    return [key, ref]


def sample_clip(length: int, rng: np.random.Generator, num_frames: int, frame_range: int = 20) -> list[int]:
    """MinVIS / DVIS / VITA (Mask2Former video mapper): a random key frame plus ``num_frames - 1`` frames from
    the window of ``frame_range`` around it, sorted in time. Frames are drawn without replacement while the
    window is large enough, with replacement (repeated frames) near the ends of short videos."""
    if length < 1:
        raise ValueError("sample_clip: empty video")
    if num_frames < 1:
        raise ValueError(f"sample_clip: num_frames must be >= 1, got {num_frames}")
    key = int(rng.integers(length))
    window = _window(length, key, frame_range)
    k = num_frames - 1
    if not window:
        others = [key] * k
    else:
        others = rng.choice(window, size=k, replace=len(window) < k).tolist()
    return sorted([key] + [int(t) for t in others])


# --------------------------------------------------------------------------------------------- frame I/O
def read_frame(
    path: Path, height: int | None = None, width: int | None = None, where: str = ""
) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing file or a size other than the annotation's raises VISFormatError."""
    if not path.is_file():
        raise VISFormatError(f"{where}{path}: frame image not found")
    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))  # a writable copy (torch.from_numpy needs one)
    if height is not None and arr.shape[:2] != (height, width):
        raise VISFormatError(
            f"{where}{path}: image is {arr.shape[0]}x{arr.shape[1]}, annotation says {height}x{width} "
            "(height x width)"
        )
    return arr


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 0..255."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float()


def frame_targets(masks: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> list[dict]:
    """Split clip tracks (N, T, H, W) into T per-frame targets holding only the instances visible there."""
    n, T, H, W = masks.shape
    present = masks.flatten(2).any(2)  # (N, T)
    boxes = boxes_xyxy_to_cxcywh_norm(masks_to_boxes(masks.reshape(n * T, H, W)), H, W).reshape(n, T, 4)
    out = []
    for t in range(T):
        keep = present[:, t]
        out.append(
            {
                "labels": labels[keep],
                "masks": masks[keep, t],
                "boxes": boxes[keep, t],
                "instance_ids": ids[keep],
            }
        )
    return out


def make_item(
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    video_id: int,
    frame_indices: Sequence[int],
) -> dict:
    return {
        "images": images.contiguous(),
        "targets": frame_targets(masks, labels, ids),
        "video_id": int(video_id),
        "frame_indices": [int(t) for t in frame_indices],
        "image_size": (int(images.shape[-2]), int(images.shape[-1])),
    }


# ----------------------------------------------------------------------------------------------- dataset
class ClipDatasetBase(torch.utils.data.Dataset):
    """What every training-clip dataset shares: ``category_ids`` (label -> category id), a ``length`` and an
    ``epoch`` that, with the seed and the index, fixes each item's randomness (``set_epoch``)."""

    category_ids: list[int]
    length: int
    epoch: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length


class VISClipDataset(ClipDatasetBase):
    """Map-style dataset of training clips from a YouTube-VIS/OVIS annotation file.

    Args:
        json_path: annotation file (or a parsed dict / YTVISAnnotations); image_root: folder of
            ``<video>/<frame>.jpg``.
        sampling: ``"pair"`` (IDOL key + reference frame, ``num_frames`` must be 2) or ``"clip"`` (MinVIS,
            DVIS, VITA: ``num_frames`` frames around a key frame, sorted).
        frame_range: max distance of the other frames from the key frame.
        min_sizes, max_size, hflip_prob: see :class:`transforms.ClipAugmentation` (same for all clip frames);
            crop: IDOL's per-frame crop (:class:`transforms.FrameCrop`), or None.
        seed: augmentation seed; length: dataset length (default: number of videos); index i reads video
            ``i % num_videos``, so a long virtual epoch revisits videos with fresh randomness.
        skip_empty: drop videos without annotations.
    Attributes:
        category_ids: contiguous label -> category_id (sorted category ids).
    """

    def __init__(
        self,
        json_path,
        image_root: str | os.PathLike,
        *,
        sampling: str = "pair",
        num_frames: int = 2,
        frame_range: int = 10,
        min_sizes: Sequence[int] = (96,),
        max_size: int | None = None,
        hflip_prob: float = 0.5,
        seed: int = 0,
        length: int | None = None,
        skip_empty: bool = True,
        crop: FrameCrop | None = None,
    ):
        if sampling not in SAMPLINGS:
            raise ValueError(f"VISClipDataset: sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if sampling == "pair" and num_frames != 2:
            raise ValueError(f"VISClipDataset: sampling='pair' uses 2 frames, got num_frames={num_frames}")
        self.ann = load_annotations(json_path)
        self.image_root = Path(image_root)
        self.sampling, self.num_frames, self.frame_range = sampling, int(num_frames), int(frame_range)
        self.augment = ClipAugmentation(tuple(min_sizes), max_size, hflip_prob, crop)
        self.seed, self.epoch = int(seed), 0
        self.category_ids = self.ann.category_ids
        self._label = {cid: k for k, cid in enumerate(self.category_ids)}
        self.video_ids = [v for v in self.ann.video_ids if self.ann.anns_by_video[v] or not skip_empty]
        if not self.video_ids:
            raise VISFormatError(f"{self.ann.name}: no videos{' with annotations' if skip_empty else ''}")
        for v in self.video_ids:
            if "file_names" not in self.ann.videos[v]:
                raise VISFormatError(
                    f"{self.ann.name}: video {v}: field 'file_names' is needed to read frames"
                )
        self.length = len(self.video_ids) if length is None else int(length)

    def sample_frames(self, length: int, rng: np.random.Generator) -> list[int]:
        if self.sampling == "pair":
            return sample_pair(length, rng, self.frame_range)
        return sample_clip(length, rng, self.num_frames, self.frame_range)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for dataset of length {self.length}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        vid = self.video_ids[index % len(self.video_ids)]
        video = self.ann.videos[vid]
        H, W = video["height"], video["width"]
        idx = self.sample_frames(self.ann.video_length(vid), rng)
        where = f"{self.ann.name}: video {vid}: "
        frames = [read_frame(self.image_root / video["file_names"][t], H, W, where) for t in idx]
        images = torch.stack([to_tensor(f) for f in frames])
        anns = self.ann.anns_by_video[vid]
        masks = torch.zeros((len(anns), len(idx), H, W), dtype=torch.bool)
        for i, a in enumerate(anns):
            for j, t in enumerate(idx):
                if a["segmentations"][t] is not None:
                    masks[i, j] = torch.from_numpy(
                        decode_segmentation(a["segmentations"][t], H, W).astype(bool)
                    )
        labels = torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64)
        ids = torch.tensor([a["id"] for a in anns], dtype=torch.int64)
        images, masks = self.augment(images, masks, rng)
        return make_item(images, masks, labels, ids, vid, idx)


def collate_clips(samples: Sequence[dict]) -> dict:
    """Batch items: images zero-padded to the largest (H, W) -> (B, T, 3, Hmax, Wmax).

    Targets are kept per sample and frame; their masks stay at the unpadded image size given by
    ``image_sizes`` (boxes are normalised to it).
    """
    if not samples:
        raise ValueError("collate_clips: empty batch")
    T = samples[0]["images"].shape[0]
    if any(s["images"].shape[0] != T for s in samples):
        raise ValueError(
            f"collate_clips: clips have different frame counts {[s['images'].shape[0] for s in samples]}"
        )
    hmax = max(s["images"].shape[-2] for s in samples)
    wmax = max(s["images"].shape[-1] for s in samples)
    images = samples[0]["images"].new_zeros((len(samples), T, 3, hmax, wmax))
    for b, s in enumerate(samples):
        h, w = s["images"].shape[-2:]
        images[b, :, :, :h, :w] = s["images"]
    return {
        "images": images,
        "image_sizes": [tuple(s["image_size"]) for s in samples],
        "targets": [s["targets"] for s in samples],
        "video_ids": [s["video_id"] for s in samples],
        "frame_indices": [s["frame_indices"] for s in samples],
    }


def iter_video_frames(
    json_path_or_ann,
    image_root: str | os.PathLike,
    video_id: int,
    min_size: int | None = None,
    max_size: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Stream one video for inference: yields ``(frame_index, (3, H, W) float32 RGB 0..255)`` one frame at a
    time, resized with the shortest-edge rule when ``min_size`` is given. Only one frame is held in memory
    (iteration over :func:`vis_core.data.video_source.folder_video_source`)."""
    from vis_core.data.video_source import folder_video_source

    yield from folder_video_source(json_path_or_ann, image_root, video_id, min_size, max_size)
