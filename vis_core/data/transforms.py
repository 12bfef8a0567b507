"""Geometric transforms for training clips, applied identically to images and instance masks.

A clip is ``images`` (T, 3, H, W) float32 RGB in 0..255 and ``masks`` (N, T, H, W) bool, one row per instance
track (a track may be empty in some frames). Every function returns a new ``(images, masks)`` pair; images and
masks always go through the same sampling grid, so they stay aligned (``tests/test_pseudo_video.py`` checks
it).

Randomness is explicit: ``ClipAugmentation.sample(rng, h, w)`` draws the parameters once per clip from a
``numpy.random.Generator`` and ``apply`` uses them for every frame (the same transform for all frames of a
clip, as in the MinVIS / IDOL / DVIS video mappers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def shortest_edge_size(height: int, width: int, short: int, max_size: int | None = None) -> tuple[int, int]:
    """(h, w) after detectron2's ResizeShortestEdge: short side -> ``short``, long side <= ``max_size``."""
    scale = short / min(height, width)
    h, w = height * scale, width * scale
    if max_size is not None and max(h, w) > max_size:
        s = max_size / max(h, w)
        h, w = h * s, w * s
    return max(1, int(h + 0.5)), max(1, int(w + 0.5))


def resize(images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]):
    """Bilinear resize to ``size`` = (h, w). Masks are resized as coverage (bilinear, antialiased) and
    thresholded at 0.5, which keeps them on the same pixels as the image content."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images, masks
    antialias = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    if masks.numel():
        n, t = masks.shape[:2]
        m = F.interpolate(
            masks.reshape(n * t, 1, *masks.shape[-2:]).float(),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=antialias,
        )
        masks = (m >= 0.5).reshape(n, t, *size)
    else:
        masks = masks.new_zeros((*masks.shape[:2], *size))
    return images, masks


def hflip(images: torch.Tensor, masks: torch.Tensor):
    return images.flip(-1), masks.flip(-1)


def crop(images: torch.Tensor, masks: torch.Tensor, box: tuple[int, int, int, int]):
    """Crop ``box`` = (y0, x0, h, w) in pixels."""
    y0, x0, h, w = box
    return images[..., y0 : y0 + h, x0 : x0 + w].contiguous(), masks[
        ..., y0 : y0 + h, x0 : x0 + w
    ].contiguous()


def rotate(
    images: torch.Tensor,
    masks: torch.Tensor,
    angle: float,
    fill: float = 0.0,
    out_size: tuple[int, int] | None = None,
):
    """Rotate by ``angle`` degrees (counter-clockwise on screen) about the image centre; the uncovered corners
    get ``fill``. With ``out_size`` = (h, w) the result is also resized, in the same single resampling (no
    second interpolation that could shift thin masks against the image). Images are sampled bilinearly, masks
    bilinearly then thresholded at 0.5, both on the same grid."""
    H, W = images.shape[-2:]
    h, w = out_size if out_size is not None else (H, W)
    if angle == 0:
        return resize(images, masks, (h, w))
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    # output pixel p samples the input at R(-angle) p (y points down, so a visual CCW turn by `a` maps an
    # output offset (x, y) to input (c x - s y, s x + c y)); in normalised coordinates the off-diagonal terms
    # carry the aspect ratio because x and y are scaled by W/2 and H/2.
    theta = torch.tensor([[c, -s * H / W, 0.0], [s * W / H, c, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    ones = torch.ones_like(images[:, :1])
    out = F.grid_sample(
        torch.cat([images, ones], 1),
        grid.expand(images.shape[0], h, w, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    valid = out[:, 3:]
    images = out[:, :3] + fill * (1 - valid)
    n, t = masks.shape[:2]
    if masks.numel():
        m = F.grid_sample(
            masks.reshape(n * t, 1, H, W).float(),
            grid.expand(n * t, h, w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        masks = (m >= 0.5).reshape(n, t, h, w)
    else:
        masks = masks.new_zeros((n, t, h, w))
    return images, masks


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float32 [x0, y0, x1, y1] pixel boxes (x1, y1 exclusive); zeros if empty."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h + 1, 0).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w + 1, 0).max(1).values
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def boxes_xyxy_to_cxcywh_norm(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 4) pixel xyxy -> (N, 4) cx, cy, w, h normalised by the image size (DETR's box format)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    out = torch.stack(
        [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], -1
    )
    return out.clamp(0.0, 1.0)


@dataclass
class FrameCrop:
    """IDOL's video-training crop (VNext ``YTVISDatasetMapper``): for half of the clips (``prob``), every frame
    is cropped on its own, before the clip's resize; the other clips are not cropped.

    The crop height and width are drawn from the absolute range ``size_range`` (detectron2 ``RandomCrop(
    "absolute_range", (384, 600))`` in the official config, capped by the frame size) and the position is
    drawn for every frame independently, so the frames of a clip see the scene shifted against each other.
    Deviation: the official mapper draws the crop size per frame too (detectron2 pads each frame of a batch
    on its own); frames of a clip share one size here (batches are ``(B, T, 3, H, W)``), so the size is drawn
    once per clip. Used for video clips only (the pseudo videos of still images have their own crops).
    """

    prob: float = 0.5
    size_range: tuple[int, int] = (384, 600)

    def __post_init__(self) -> None:
        lo, hi = self.size_range
        if not 0.0 <= self.prob <= 1.0 or lo < 1 or hi < lo:
            raise ValueError(f"FrameCrop: prob in [0, 1] and 1 <= size_range[0] <= size_range[1], got "
                             f"prob={self.prob}, size_range={self.size_range}")

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator):
        """``images (T, 3, H, W)``, ``masks (N, T, H, W)`` -> both cropped to ``(h, w)`` (or unchanged)."""
        if rng.random() >= self.prob:
            return images, masks
        height, width = images.shape[-2:]
        lo, hi = self.size_range
        h = int(rng.integers(min(height, lo), min(height, hi) + 1))
        w = int(rng.integers(min(width, lo), min(width, hi) + 1))
        tops = rng.integers(0, height - h + 1, size=images.shape[0])
        lefts = rng.integers(0, width - w + 1, size=images.shape[0])
        corners = list(enumerate(zip(tops.tolist(), lefts.tolist(), strict=True)))
        images = torch.stack([images[t, :, y:y + h, x:x + w] for t, (y, x) in corners])
        masks = torch.stack([masks[:, t, y:y + h, x:x + w] for t, (y, x) in corners], 1)  # (N, T, h, w)
        return images, masks


@dataclass
class ClipAugmentation:
    """Optional per-frame crop (:class:`FrameCrop`), then multi-scale shortest-side resize (one size per clip)
    with a max size, plus horizontal flip.

    ``min_sizes`` are the candidate shorter sides (the reports use e.g. 320..640 for Swin-L; the smoke profile
    uses the native 96), ``max_size`` caps the longer side.
    """

    min_sizes: Sequence[int] = (96,)
    max_size: int | None = None
    hflip_prob: float = 0.5
    crop: FrameCrop | None = None

    def sample(self, rng: np.random.Generator, height: int, width: int) -> dict:
        short = int(self.min_sizes[int(rng.integers(len(self.min_sizes)))])
        return {
            "size": shortest_edge_size(height, width, short, self.max_size),
            "flip": bool(rng.random() < self.hflip_prob),
        }

    def apply(self, images: torch.Tensor, masks: torch.Tensor, params: dict):
        images, masks = resize(images, masks, params["size"])
        if params["flip"]:
            images, masks = hflip(images, masks)
        return images, masks

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator):
        if self.crop is not None:  # no crop configured: no random draw, the stream of the others is unchanged
            images, masks = self.crop(images, masks, rng)
        return self.apply(images, masks, self.sample(rng, *images.shape[-2:]))


def resize_for_inference(image: torch.Tensor, min_size: int | None, max_size: int | None) -> torch.Tensor:
    """(3, H, W) -> resized (3, h, w) with the shortest-edge rule (no-op when ``min_size`` is None)."""
    if min_size is None:
        return image
    size = shortest_edge_size(*image.shape[-2:], min_size, max_size)
    if tuple(size) == tuple(image.shape[-2:]):
        return image
    antialias = size[0] < image.shape[-2]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]
