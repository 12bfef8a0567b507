"""Clip samplers, the training clip dataset, collation and the streaming frame reader."""

import numpy as np
import pytest
import torch
from PIL import Image

from vis_core.data.clips import (
    VISClipDataset,
    collate_clips,
    iter_video_frames,
    sample_clip,
    sample_pair,
)
from vis_core.data.synthetic import make_config, write_split
from vis_core.data.transforms import masks_to_boxes, shortest_edge_size
from vis_core.data.ytvis import VISFormatError, decode_segmentation, load_annotations


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    path = write_split(
        out, make_config("ovis", height=48, width=80, frames=(6, 9), objects=(3, 5)), "train", 3, seed=0
    )
    return path, path.parent / "JPEGImages"


def _dataset(data, **kw):
    path, root = data
    return VISClipDataset(path, root, **kw)


# ------------------------------------------------------------------------------------------------ samplers
def test_pair_sampler_stays_in_range_and_covers_it():
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(2000):
        key, ref = sample_pair(30, rng, frame_range=4)
        assert 0 <= key < 30 and 0 <= ref < 30 and key != ref and abs(key - ref) <= 4
        offsets.add(ref - key)
    assert offsets == {-4, -3, -2, -1, 1, 2, 3, 4}
    assert sample_pair(1, rng, 10) == [0, 0]


def test_clip_sampler_is_sorted_local_and_handles_short_videos():
    rng = np.random.default_rng(0)
    for _ in range(500):
        idx = sample_clip(40, rng, num_frames=5, frame_range=5)
        assert idx == sorted(idx) and len(set(idx)) == 5  # >= 5 other frames in every window: no repeats
        assert idx[-1] - idx[0] <= 10
    short = sample_clip(2, rng, num_frames=4, frame_range=5)
    assert len(short) == 4 and set(short) <= {0, 1}
    assert sample_clip(1, rng, num_frames=3) == [0, 0, 0]


# ------------------------------------------------------------------------------------------------- dataset
def test_targets_match_the_annotations_without_augmentation(data):
    ds = _dataset(data, sampling="clip", num_frames=3, frame_range=3, min_sizes=(48,), hflip_prob=0.0)
    ann = load_annotations(data[0])
    assert ds.category_ids == sorted(c["id"] for c in ann.categories)
    for i in range(len(ds)):
        item = ds[i]
        vid = item["video_id"]
        video = ann.videos[vid]
        assert item["image_size"] == (48, 80) and item["images"].shape == (3, 3, 48, 80)
        for j, t in enumerate(item["frame_indices"]):
            frame = np.array(Image.open(data[1] / video["file_names"][t]).convert("RGB"))
            assert torch.equal(item["images"][j], torch.from_numpy(frame).permute(2, 0, 1).float())
            target = item["targets"][j]
            visible = [a for a in ann.anns_by_video[vid] if a["segmentations"][t] is not None]
            assert target["instance_ids"].tolist() == [a["id"] for a in visible]
            for k, a in enumerate(visible):
                assert ds.category_ids[target["labels"][k]] == a["category_id"]
                truth = decode_segmentation(a["segmentations"][t], 48, 80).astype(bool)
                assert np.array_equal(target["masks"][k].numpy(), truth)
                x, y, w, h = a["bboxes"][t]
                expected = [(x + w / 2) / 80, (y + h / 2) / 48, w / 80, h / 48]
                assert np.allclose(target["boxes"][k].numpy(), expected, atol=1e-6)


def test_augmentation_is_deterministic_per_seed_index_and_epoch(data):
    ds = _dataset(data, sampling="clip", num_frames=2, min_sizes=(40, 56, 64), max_size=120, length=12)
    a, b = ds[5], ds[5]
    assert a["frame_indices"] == b["frame_indices"] and torch.equal(a["images"], b["images"])
    seen = set()
    for e in range(6):
        ds.set_epoch(e)
        seen.add((tuple(ds[5]["frame_indices"]), ds[5]["image_size"]))
    assert len(seen) > 1
    other = _dataset(
        data, sampling="clip", num_frames=2, min_sizes=(40, 56, 64), max_size=120, length=12, seed=1
    )
    assert any(other[i]["frame_indices"] != ds[i]["frame_indices"] for i in range(12))


def test_flip_and_resize_move_images_and_masks_together(data):
    plain = _dataset(data, sampling="pair", min_sizes=(48,), hflip_prob=0.0)
    flipped = _dataset(data, sampling="pair", min_sizes=(48,), hflip_prob=1.0)
    a, b = plain[1], flipped[1]  # same rng stream: same frames
    assert a["frame_indices"] == b["frame_indices"]
    assert torch.equal(b["images"], a["images"].flip(-1))
    for ta, tb in zip(a["targets"], b["targets"], strict=True):
        assert torch.equal(tb["masks"], ta["masks"].flip(-1))
        assert torch.allclose(tb["boxes"][:, 0], 1 - ta["boxes"][:, 0]) and torch.equal(
            tb["labels"], ta["labels"]
        )
    big = _dataset(data, sampling="pair", min_sizes=(96,), max_size=150, hflip_prob=0.0)[1]
    assert big["image_size"] == shortest_edge_size(48, 80, 96, 150) == (90, 150)
    for ta, tb in zip(a["targets"], big["targets"], strict=True):
        assert tb["masks"].shape[-2:] == (90, 150)
        # areas scale with the image (up to boundary pixels) and boxes stay where they were
        area = ta["masks"].sum((1, 2)).float()
        ratio = tb["masks"].sum((1, 2)).float() / area
        big_enough = area >= 30  # tiny masks are mostly boundary
        assert big_enough.any() and ((ratio - (90 * 150) / (48 * 80)).abs()[big_enough] < 0.5).all()
        assert torch.allclose(tb["boxes"], ta["boxes"], atol=0.04)


def test_pair_sampling_returns_key_then_reference(data):
    ds = _dataset(data, sampling="pair", frame_range=2, length=30)
    for i in range(30):
        key, ref = ds[i]["frame_indices"]
        assert key != ref and abs(key - ref) <= 2
    with pytest.raises(ValueError, match="2 frames"):
        _dataset(data, sampling="pair", num_frames=3)
    with pytest.raises(ValueError, match="sampling"):
        _dataset(data, sampling="window")


def test_collate_pads_with_zeros_and_works_with_distributed_sampler(data):
    ds = _dataset(data, sampling="clip", num_frames=2, min_sizes=(40, 64), max_size=200, length=8)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_clips)
    batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    sizes = batch["image_sizes"]
    hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
    assert batch["images"].shape == (4, 2, 3, hmax, wmax)
    for b, (h, w) in enumerate(sizes):
        assert (
            batch["images"][b, :, :, h:, :].abs().sum() == 0
            and batch["images"][b, :, :, :, w:].abs().sum() == 0
        )
        assert batch["targets"][b][0]["masks"].shape[-2:] == (h, w)
    assert len(batch["video_ids"]) == len(batch["frame_indices"]) == 4
    with pytest.raises(ValueError, match="frame counts"):
        collate_clips([ds[0], _dataset(data, sampling="clip", num_frames=3)[0]])


def test_masks_to_boxes_hand_case():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    assert masks_to_boxes(m).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]


# ------------------------------------------------------------------------------------------- frame reader
def test_iter_video_frames_streams_every_frame(data):
    path, root = data
    ann = load_annotations(path)
    vid = ann.video_ids[0]
    frames = list(iter_video_frames(path, root, vid))
    assert [t for t, _ in frames] == list(range(ann.video_length(vid)))
    first = np.array(Image.open(root / ann.videos[vid]["file_names"][0]).convert("RGB"))
    assert torch.equal(frames[0][1], torch.from_numpy(first).permute(2, 0, 1).float())
    t, small = next(iter_video_frames(ann, root, vid, min_size=24, max_size=100))
    assert small.shape == (3, 24, 40) and small.dtype == torch.float32
    with pytest.raises(VISFormatError, match="no video with id 99"):
        next(iter_video_frames(ann, root, 99))


def test_missing_or_wrong_size_frames_are_clear_errors(data, tmp_path):
    path, root = data
    ann = load_annotations(path)
    vid = ann.video_ids[0]
    with pytest.raises(VISFormatError, match=r"video 1: frame 0: .*frame image not found"):
        next(iter_video_frames(ann, tmp_path, vid))
    name = ann.videos[vid]["file_names"][0]
    (tmp_path / name).parent.mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(tmp_path / name)
    with pytest.raises(VISFormatError, match=r"image is 10x10, annotation says 48x80"):
        next(iter_video_frames(ann, tmp_path, vid))
