"""Pseudo training videos from COCO-format instance images, the two ways the reports use.

* ``mode="crop_pair"`` (reports 000/001, IDOL's COCO pre-training): the same image is randomly cropped twice,
  independently, giving a key and a reference frame whose instances are displaced and re-scaled. As in IDOL's
  ``COCO_CLIP_DatasetMapper`` each frame is cropped with probability ``crop_prob`` (0.5); the crop side is a
  fraction in ``crop_range`` of the image side (IDOL: an absolute 384..600 crop after resizing the short side
  to 400..600, i.e. about 0.64..1). Crops keep the image's aspect ratio, so all frames share one output size.
* ``mode="rotate3"`` (report 004, SeqFormer-style): a 3-frame sequence where every frame is the image rotated
  by an independent angle in [-max_angle, max_angle] (30 degrees) about its centre, corners zero-filled.

The clip-level multi-scale shortest-side resize of :class:`transforms.ClipAugmentation` is folded into the
crop / rotation (one resampling, so thin masks cannot drift against the image), then the whole clip is flipped
or not. Items have the :mod:`vis_core.data.clips` format, so pseudo and real clips can be mixed
(``torch.utils.data.ConcatDataset``): ``instance_ids`` are COCO annotation ids, ``video_id`` the image id and
``frame_indices`` ``0..T-1`` (pseudo time).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vis_core.data.clips import ClipDatasetBase, make_item, read_frame, to_tensor
from vis_core.data.transforms import ClipAugmentation, crop, resize, rotate
from vis_core.data.ytvis import VISFormatError, decode_segmentation, load_json

MODES = ("crop_pair", "rotate3")


def load_coco_instances(source, name: str | None = None) -> dict:
    """Load (path) or take (dict) a COCO instances file, check the fields this module reads, and index it.

    Returns ``{"name", "images": {id: image}, "anns_by_image": {id: [ann]}, "categories": [cat]}``; crowd
    annotations (``iscrowd=1``) are left out, as in the IDOL and SeqFormer COCO loaders.
    """
    data = load_json(source) if not isinstance(source, dict) else source
    name = name or (str(source) if not isinstance(source, dict) else "<coco>")
    if not isinstance(data, dict):
        raise VISFormatError(f"{name}: expected a json object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise VISFormatError(f"{name}: missing list field '{key}'")
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        for key in ("id", "file_name", "height", "width"):
            if not isinstance(im, dict) or key not in im:
                raise VISFormatError(f"{name}: images[{i}]: missing field '{key}'")
        if im["id"] in images:
            raise VISFormatError(f"{name}: images[{i}] (id {im['id']}): duplicate image id")
        images[im["id"]] = im
    cat_ids = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c:
            raise VISFormatError(f"{name}: categories[{i}]: missing field 'id'")
        cat_ids.add(c["id"])
    by_image: dict[int, list[dict]] = {k: [] for k in images}
    for i, a in enumerate(data["annotations"]):
        for key in ("id", "image_id", "category_id", "segmentation"):
            if not isinstance(a, dict) or key not in a:
                raise VISFormatError(f"{name}: annotations[{i}]: missing field '{key}'")
        where = f"{name}: annotations[{i}] (id {a['id']})"
        if a["image_id"] not in images:
            raise VISFormatError(f"{where}: field 'image_id': unknown image {a['image_id']!r}")
        if a["category_id"] not in cat_ids:
            raise VISFormatError(f"{where}: field 'category_id': unknown category {a['category_id']!r}")
        if a.get("iscrowd", 0):
            continue
        by_image[a["image_id"]].append(a)
    return {"name": name, "images": images, "anns_by_image": by_image, "categories": data["categories"]}


def random_crop_box(rng: np.random.Generator, height: int, width: int, crop_range: tuple[float, float]):
    """(y0, x0, h, w): a crop whose sides are the same random fraction of the image sides (aspect kept)."""
    f = rng.uniform(*crop_range)
    h, w = max(1, int(round(height * f))), max(1, int(round(width * f)))
    y0 = int(rng.integers(height - h + 1))
    x0 = int(rng.integers(width - w + 1))
    return y0, x0, h, w


def crop_pair_clip(
    image: torch.Tensor,
    masks: torch.Tensor,
    rng: np.random.Generator,
    num_frames: int = 2,
    crop_prob: float = 0.5,
    crop_range: tuple[float, float] = (0.64, 1.0),
    out_size: tuple[int, int] | None = None,
):
    """(3, H, W) image + (N, H, W) masks -> (T, 3, h, w) pseudo clip + (N, T, h, w) masks: each frame is an
    independent random crop (with probability ``crop_prob``, else the whole image) resized to ``out_size``
    (default: H x W) in one resampling."""
    H, W = image.shape[-2:]
    out_size = out_size or (H, W)
    frames, tracks = [], []
    for _ in range(num_frames):
        im, m = image[None], masks[:, None]
        if rng.random() < crop_prob:
            im, m = crop(im, m, random_crop_box(rng, H, W, crop_range))
        im, m = resize(im, m, out_size)
        frames.append(im)
        tracks.append(m)
    return torch.cat(frames), torch.cat(tracks, 1)


def rotation_clip(
    image: torch.Tensor,
    masks: torch.Tensor,
    rng: np.random.Generator,
    num_frames: int = 3,
    max_angle: float = 30.0,
    out_size: tuple[int, int] | None = None,
):
    """(3, H, W) + (N, H, W) -> (T, 3, h, w) + (N, T, h, w): frame t is the image rotated by an independent
    angle in [-max_angle, max_angle] degrees, resized to ``out_size`` (default: H x W) in one resampling."""
    frames, tracks = [], []
    for _ in range(num_frames):
        angle = float(rng.uniform(-max_angle, max_angle))
        im, m = rotate(image[None], masks[:, None], angle, out_size=out_size)
        frames.append(im)
        tracks.append(m)
    return torch.cat(frames), torch.cat(tracks, 1)


def pseudo_clip(
    image: torch.Tensor,
    masks: torch.Tensor,
    rng: np.random.Generator,
    augment: ClipAugmentation,
    mode: str = "crop_pair",
    num_frames: int = 2,
    *,
    crop_prob: float = 0.5,
    crop_range: tuple[float, float] = (0.64, 1.0),
    max_angle: float = 30.0,
):
    """(3, H, W) image + (N, H, W) masks -> (T, 3, h, w) pseudo clip + (N, T, h, w) tracks: the pseudo motion
    of ``mode``, then ``augment``'s clip-level flip. ``augment``'s multi-scale resize is drawn first and folded
    into the motion's resampling (one interpolation, so thin masks cannot drift against the image)."""
    if mode not in MODES:
        raise ValueError(f"pseudo_clip: mode must be one of {MODES}, got {mode!r}")
    params = augment.sample(rng, *image.shape[-2:])
    if mode == "crop_pair":
        images, tracks = crop_pair_clip(image, masks, rng, num_frames, crop_prob, crop_range, params["size"])
    else:
        images, tracks = rotation_clip(image, masks, rng, num_frames, max_angle, params["size"])
    return augment.apply(images, tracks, params)


class PseudoVideoDataset(ClipDatasetBase):
    """Pseudo-video training clips from a COCO-format instance set (same item format as VISClipDataset).

    Args:
        coco_json: COCO instances file (or parsed dict); image_root: folder of the ``file_name`` images.
        mode: ``"crop_pair"`` (2 frames) or ``"rotate3"`` (3 frames); num_frames overrides the frame count.
        category_ids: contiguous label -> category_id to use (e.g. a video dataset's ``category_ids`` for
            joint training; annotations of other categories are dropped). Default: all categories, sorted.
        min_sizes, max_size, hflip_prob: clip-level resize / flip after the pseudo motion.
        crop_prob, crop_range: crop_pair parameters; max_angle: rotate3 parameter.
        seed, length, set_epoch: as in VISClipDataset (randomness from ``[seed, epoch, index]``).
        skip_empty: drop images without (kept) annotations.
    """

    def __init__(
        self,
        coco_json,
        image_root: str | os.PathLike,
        mode: str = "crop_pair",
        *,
        num_frames: int | None = None,
        category_ids: Sequence[int] | None = None,
        min_sizes: Sequence[int] = (96,),
        max_size: int | None = None,
        hflip_prob: float = 0.5,
        crop_prob: float = 0.5,
        crop_range: tuple[float, float] = (0.64, 1.0),
        max_angle: float = 30.0,
        seed: int = 0,
        length: int | None = None,
        skip_empty: bool = True,
    ):
        if mode not in MODES:
            raise ValueError(f"PseudoVideoDataset: mode must be one of {MODES}, got {mode!r}")
        self.coco = load_coco_instances(coco_json)
        self.image_root = Path(image_root)
        self.mode = mode
        self.num_frames = int(num_frames if num_frames is not None else (2 if mode == "crop_pair" else 3))
        self.category_ids = (
            sorted(c["id"] for c in self.coco["categories"]) if category_ids is None else list(category_ids)
        )
        self._label = {cid: k for k, cid in enumerate(self.category_ids)}
        self.augment = ClipAugmentation(tuple(min_sizes), max_size, hflip_prob)
        self.crop_prob, self.crop_range, self.max_angle = crop_prob, tuple(crop_range), float(max_angle)
        self.seed, self.epoch = int(seed), 0
        self.anns = {
            i: [a for a in anns if a["category_id"] in self._label]
            for i, anns in self.coco["anns_by_image"].items()
        }
        self.image_ids = [i for i in sorted(self.coco["images"]) if self.anns[i] or not skip_empty]
        if not self.image_ids:
            raise VISFormatError(
                f"{self.coco['name']}: no images with annotations of the requested categories"
            )
        self.length = len(self.image_ids) if length is None else int(length)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for dataset of length {self.length}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image_id = self.image_ids[index % len(self.image_ids)]
        info = self.coco["images"][image_id]
        H, W = info["height"], info["width"]
        frame = read_frame(
            self.image_root / info["file_name"], H, W, f"{self.coco['name']}: image {image_id}: "
        )
        anns = self.anns[image_id]
        masks = torch.zeros((len(anns), H, W), dtype=torch.bool)
        for i, a in enumerate(anns):
            masks[i] = torch.from_numpy(decode_segmentation(a["segmentation"], H, W).astype(bool))
        images, tracks = pseudo_clip(
            to_tensor(frame), masks, rng, self.augment, self.mode, self.num_frames,
            crop_prob=self.crop_prob, crop_range=self.crop_range, max_angle=self.max_angle,
        )
        labels = torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64)
        ids = torch.tensor([a["id"] for a in anns], dtype=torch.int64)
        return make_item(images, tracks, labels, ids, image_id, range(self.num_frames))
