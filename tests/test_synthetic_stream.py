"""Training data rendered on the fly: reproducible, never repeated, and pixel-identical to the stored frames."""

import numpy as np
import pytest
import torch

from vis_core.data.clips import read_frame
from vis_core.data.synthetic import make_config, plan_video, write_split
from vis_core.data.synthetic_stream import (
    SyntheticClipDataset,
    SyntheticObjectDataset,
    SyntheticPseudoVideoDataset,
)
from vis_core.data.ytvis import load_annotations
from vis_core.engine.config import TrainConfig, from_dict
from vis_core.engine.trainer import build_train_dataset

SPEC = {"preset": "ovis", "height": 48, "width": 80, "frames": [6, 9], "objects": [3, 5]}


def test_items_are_reproducible_and_every_index_is_a_new_video():
    ds = SyntheticClipDataset(SPEC, sampling="clip", num_frames=3, frame_range=4, min_sizes=(48,))
    a, b = ds[7], ds[7]
    assert torch.equal(a["images"], b["images"]) and a["frame_indices"] == b["frame_indices"]
    assert not torch.equal(ds[8]["images"], a["images"])
    ds.set_epoch(1)  # new frame choice / augmentation, same video
    c = ds[7]
    assert c["video_id"] == a["video_id"] and (c["frame_indices"] != a["frame_indices"]
                                               or not torch.equal(c["images"], a["images"]))
    assert SyntheticClipDataset(SPEC, data_seed=1, min_sizes=(48,))[7]["images"].shape == a["images"][:2].shape


def test_stream_frames_equal_the_stored_jpeg_frames(tmp_path):
    # the stream of split "valid" renders exactly what `vis data synth` stores: train and valid pixels share
    # the generator, the noise and the JPEG round trip
    cfg = make_config(SPEC["preset"], height=48, width=80, frames=(6, 9), objects=(3, 5))
    path = write_split(tmp_path, cfg, "valid", 2, seed=3)
    gt = load_annotations(path)
    ds = SyntheticClipDataset(SPEC, data_seed=3, split="valid", sampling="clip", num_frames=2, frame_range=10,
                              min_sizes=(48,), hflip_prob=0.0)
    item = ds[1]
    video = gt.videos[2]  # video ids are index + 1
    for frame, t in zip(item["images"], item["frame_indices"], strict=True):
        stored = read_frame(tmp_path / "valid" / "JPEGImages" / video["file_names"][t])
        assert np.array_equal(frame.permute(1, 2, 0).numpy().astype(np.uint8), stored)
    # and the targets are the stored annotations of those frames (masks and categories)
    stored_anns = gt.anns_by_video[2]
    for tgt, t in zip(item["targets"], item["frame_indices"], strict=True):
        present = [a for a in stored_anns if a["segmentations"][t] is not None]
        assert sorted(int(c) + 1 for c in tgt["labels"]) == sorted(a["category_id"] for a in present)
        assert sorted(int(m.sum()) for m in tgt["masks"]) == sorted(a["areas"][t] for a in present)


def test_labels_are_the_planned_categories():
    ds = SyntheticClipDataset(SPEC, sampling="pair", min_sizes=(48,), jpeg=False)
    item = ds[3]
    plan = plan_video(ds.cfg, 0, 3, "train")
    planned = {k + 1: ds.cfg.shapes.index(inst.shape) for k, inst in enumerate(plan.instances)}
    for tgt in item["targets"]:
        for label, inst_id in zip(tgt["labels"].tolist(), tgt["instance_ids"].tolist(), strict=True):
            assert planned[inst_id] == label
    assert ds.num_classes == 5 and ds.cfg.shapes == ("circle", "square", "triangle", "pill", "heart")


def test_pseudo_videos_are_two_views_of_one_still_image():
    ds = SyntheticPseudoVideoDataset(SPEC, min_sizes=(48,), crop_prob=1.0)
    item = ds[2]
    assert item["images"].shape[0] == 2 and ds.cfg.frames == (1, 1) and ds.cfg.twin_prob == 0.0
    ids0, ids1 = (set(t["instance_ids"].tolist()) for t in item["targets"])
    assert ids0 & ids1  # the same instances, seen in two crops
    assert not torch.equal(item["images"][0], item["images"][1])


def test_object_images_hold_one_object_each():
    ds = SyntheticObjectDataset({"preset": "images"}, size=64, min_sizes=(64,))
    for i in range(10):
        item = ds[i]
        assert item["images"].shape == (1, 3, 64, 64)
        assert len(item["targets"][0]["labels"]) == 1 and item["targets"][0]["masks"].sum() > 50


def test_train_config_builds_the_stream_datasets():
    base = {"method": "idol", "output_dir": "x",
            "data": {"synthetic": SPEC, "min_sizes": [48], "max_size": 80, "stream_length": 50}}
    for kind, cls in (("synthetic", SyntheticClipDataset), ("synthetic_pseudo", SyntheticPseudoVideoDataset),
                      ("synthetic_objects", SyntheticObjectDataset)):
        cfg = from_dict(TrainConfig, {**base, "data": {**base["data"], "kind": kind}}, "test")
        ds, _ = build_train_dataset(cfg)
        assert isinstance(ds, cls) and len(ds) == 50
    bad = from_dict(TrainConfig, {**base, "data": {**base["data"], "kind": "synthetic", "synthetic": {}}}, "test")
    with pytest.raises(Exception, match="data.synthetic: synthetic data spec needs a 'preset'"):
        build_train_dataset(bad)
