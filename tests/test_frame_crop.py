"""IDOL's per-frame crop of video training clips (vis_core.data.transforms.FrameCrop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vis_core.data.transforms import ClipAugmentation, FrameCrop
from vis_core.engine.config import ConfigError, TrainConfig, from_dict
from vis_core.engine.trainer import build_train_dataset


def _clip(num_frames: int = 2, height: int = 40, width: int = 60):
    """Frames whose pixel values encode their (row, col), and one mask covering a fixed square."""
    rows = torch.arange(height).view(height, 1).expand(height, width).float()
    cols = torch.arange(width).view(1, width).expand(height, width).float()
    images = torch.stack([torch.stack([rows, cols, torch.full_like(rows, t)]) for t in range(num_frames)])
    masks = torch.zeros(1, num_frames, height, width, dtype=torch.bool)
    masks[0, :, 10:20, 20:30] = True
    return images, masks


def test_every_frame_is_cropped_on_its_own_to_one_size_in_range():
    images, masks = _clip(num_frames=4)
    crop = FrameCrop(prob=1.0, size_range=(16, 30))
    shifted = 0
    for seed in range(20):
        out, out_masks = crop(images, masks, np.random.default_rng(seed))
        h, w = out.shape[-2:]
        assert 16 <= h <= 30 and 16 <= w <= 30 and out_masks.shape == (1, 4, h, w)
        corners = [(int(out[t, 0, 0, 0]), int(out[t, 1, 0, 0])) for t in range(4)]
        for t, (y, x) in enumerate(corners):
            assert torch.equal(out[t], images[t, :, y:y + h, x:x + w])  # a window of the frame itself
            assert torch.equal(out_masks[0, t], masks[0, t, y:y + h, x:x + w])  # masks cropped alike
        shifted += len(set(corners)) > 1
    assert shifted >= 18  # the frames of a clip are shifted against each other (positions drawn per frame)


def test_half_of_the_clips_are_cropped_and_the_size_is_capped_by_the_frame():
    images, masks = _clip(height=20, width=60)
    crop = FrameCrop(prob=0.5, size_range=(16, 30))
    sizes = [crop(images, masks, np.random.default_rng(s))[0].shape[-2:] for s in range(400)]
    cropped = [s for s in sizes if tuple(s) != (20, 60)]
    assert 0.4 < len(cropped) / len(sizes) < 0.6
    assert all(16 <= h <= 20 and 16 <= w <= 30 for h, w in cropped)


def test_no_crop_configured_leaves_the_augmentation_unchanged():
    images, masks = _clip()
    plain = ClipAugmentation((32,), 64, 0.5)
    with_off = ClipAugmentation((32,), 64, 0.5, crop=None)
    a = plain(images, masks, np.random.default_rng(3))
    b = with_off(images, masks, np.random.default_rng(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="size_range"):
        FrameCrop(0.5, (30, 16))


def test_data_config_turns_the_crop_on_for_video_clips_only():
    data = {"kind": "synthetic", "synthetic": {"preset": "ovis", "height": 48, "width": 80}, "sampling": "pair",
            "min_sizes": [48], "max_size": 80, "crop_prob": 0.5, "crop_size_range": [26, 40]}
    dataset, _ = build_train_dataset(from_dict(TrainConfig, {"method": "idol", "data": data}, "t"))
    assert dataset.augment.crop == FrameCrop(0.5, (26, 40))
    sizes = {tuple(dataset[i]["images"].shape[-2:]) for i in range(8)}
    assert (48, 80) in sizes and len(sizes) > 1  # uncropped clips keep the frame size, cropped ones do not
    assert all(min(s) <= 48 and max(s) <= 80 for s in sizes)  # then resized: shortest side 48, longest <= 80
    pseudo = {**data, "kind": "synthetic_pseudo"}
    dataset, _ = build_train_dataset(from_dict(TrainConfig, {"method": "idol", "data": pseudo}, "t"))
    assert dataset.augment.crop is None
    with pytest.raises(ConfigError, match="crop_size_range"):
        build_train_dataset(from_dict(TrainConfig, {"method": "idol", "data": {**data, "crop_size_range": [5]}},
                                      "t"))
